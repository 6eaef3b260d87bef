"""Render parameter sections as command-line flags, and parse them back.

DVC renders `${section}` in a stage command as `--key value` flags (dict unpacking, with
`parsing.bool: boolean_optional` and `parsing.list: nargs` set in `.dvc/config`). The
Snakemake workflow renders the same sections with `render_args`, which follows DVC's rules
exactly, so both front-ends run byte-identical commands. Stage modules parse the flags back
with `parse_section`, which builds an argparse parser from a dataclass of the section.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import typing
from collections.abc import Iterable
from typing import Any


def render_args(section: dict[str, Any]) -> str:
    """`{"epochs": 3, "fast": False, "shots": [1, 5]}` -> `--epochs 3 --no-fast --shots 1 5`.

    Mirrors DVC's dict unpacking: nested dicts become dotted keys, strings are shell-quoted,
    booleans become `--key` / `--no-key`, lists become one flag followed by its items.
    """
    parts: list[str] = []
    for key, value in _flatten(section).items():
        if isinstance(value, bool):
            parts.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, str):
            parts.append(f"--{key} {shlex.quote(value)}")
        elif isinstance(value, Iterable):
            items = [shlex.quote(v) if isinstance(v, str) else str(v) for v in value]
            if items:
                parts.append(f"--{key} " + " ".join(items))
        else:
            parts.append(f"--{key} {value}")
    return " ".join(parts)


def _flatten(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in section.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def add_dataclass_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """Add one `--field` flag per dataclass field, typed from its annotation."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        help_text = field.metadata.get("help", "")
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        default = None if required else (
            field.default if field.default is not dataclasses.MISSING
            else field.default_factory())  # type: ignore[operator]  # not MISSING here: mypy cannot narrow it
        origin = typing.get_origin(kind)
        if kind is bool:
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction,
                                default=default, required=required, help=help_text)
        elif origin in (list, tuple):
            (item_type, *_) = typing.get_args(kind)
            parser.add_argument(f"--{field.name}", nargs="+", type=item_type,
                                default=default, required=required, help=help_text)
        else:
            parser.add_argument(f"--{field.name}", type=kind, default=default,
                                required=required, help=help_text)


def parse_section(cls: type, argv: list[str] | None = None, description: str = "",
                  extra: typing.Callable[[argparse.ArgumentParser], None] | None = None):
    """Parse `argv` into an instance of dataclass `cls` plus the extra (path) arguments.

    Returns `(section, namespace)`; `section.validate()` is called when defined, and a
    ValueError from it becomes a clean command-line error naming the parameter.
    """
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    group = parser.add_argument_group(cls.__name__)
    add_dataclass_arguments(group, cls)
    namespace = parser.parse_args(argv)
    names = {f.name for f in dataclasses.fields(cls)}
    section = cls(**{k: v for k, v in vars(namespace).items() if k in names})
    validate = getattr(section, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as error:
            parser.error(str(error))
    return section, namespace
