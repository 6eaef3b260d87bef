"""Render parameter sections as command-line flags, and parse them back.

DVC renders `${section}` in a stage command as `--key value` flags (dict unpacking, with
`parsing.bool: boolean_optional` and `parsing.list: nargs` set in `.dvc/config`). The
Snakemake workflow renders the same sections with `render_args`, which follows DVC's rules
exactly, so both front-ends run byte-identical commands. Stage modules parse the flags back
with `parse_section`, which builds an argparse parser from a dataclass of the section.

A mapping field (`dict`, such as a run's `arch_params`) is rendered as dotted flags, one per
key (`--arch_params.drop_path 0.1`); an empty one renders no flag at all. `parse_section`
collects `--FIELD.KEY VALUE` back into the mapping: a value reads as an int, else a float,
else the text (what params.yaml gives for the numbers DVC writes); `--FIELD.KEY` alone and
`--no-FIELD.KEY` as true and false; several values as a list. The section's `validate()`
then checks the keys and types against what they configure.
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
        if required:
            default = None
        elif field.default is not dataclasses.MISSING:
            default = field.default
        else:  # not MISSING here (not required): mypy cannot narrow the factory's type
            default = field.default_factory()  # type: ignore[operator]
        origin = typing.get_origin(kind)
        if dict in (kind, origin):  # dotted flags, collected by `parse_section`
            continue
        if kind is bool:
            parser.add_argument(
                f"--{field.name}",
                action=argparse.BooleanOptionalAction,
                default=default,
                required=required,
                help=help_text,
            )
        elif origin in (list, tuple):
            (item_type, *_) = typing.get_args(kind)
            parser.add_argument(
                f"--{field.name}", nargs="+", type=item_type, default=default, required=required, help=help_text
            )
        else:
            parser.add_argument(f"--{field.name}", type=kind, default=default, required=required, help=help_text)


def parse_section(
    cls: type,
    argv: list[str] | None = None,
    description: str = "",
    extra: typing.Callable[[argparse.ArgumentParser], None] | None = None,
):
    """Parse `argv` into an instance of dataclass `cls` plus the extra (path) arguments.

    Returns `(section, namespace)`; `section.validate()` is called when defined, and a
    ValueError from it becomes a clean command-line error naming the parameter.
    """
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    group = parser.add_argument_group(cls.__name__)
    add_dataclass_arguments(group, cls)
    namespace, rest = parser.parse_known_args(argv)
    mappings, unknown = mapping_flags(rest, mapping_fields(cls))
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    names = {f.name for f in dataclasses.fields(cls)}
    section = cls(**{k: v for k, v in vars(namespace).items() if k in names}, **mappings)
    validate = getattr(section, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as error:
            parser.error(str(error))
    return section, namespace


def mapping_fields(cls: type) -> list[str]:
    """The fields of dataclass `cls` typed as a mapping (`dict[...]`): dotted flags."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if dict in (hints[f.name], typing.get_origin(hints[f.name]))]


def mapping_flags(args: list[str], fields: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """`--arch_params.drop_path 0.1 --no-arch_params.flag` -> ({'arch_params': {'drop_path':
    0.1, 'flag': False}}, []): the dotted flags of the mapping `fields` (each given one, even
    if empty, once any dotted flag names it); what is not one of them is returned unparsed."""
    found: dict[str, dict[str, Any]] = {}
    unknown: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        negated = arg.startswith("--no-")
        name = arg[len("--no-") :] if negated else arg[2:] if arg.startswith("--") else ""
        field, dot, key = name.partition(".")
        if not (dot and key and field in fields) or "=" in key:
            unknown.append(arg)
            i += 1
            continue
        values = []
        i += 1
        while not negated and i < len(args) and not args[i].startswith("--"):
            values.append(flag_value(args[i]))
            i += 1
        found.setdefault(field, {})[key] = (
            False if negated else True if not values else values[0] if len(values) == 1 else values
        )
    return found, unknown


def flag_value(text: str) -> int | float | str:
    """One flag value as params.yaml would hold it: an int, else a float, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
