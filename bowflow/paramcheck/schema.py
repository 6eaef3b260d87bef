"""Per-key checks of params.yaml: one value against its type, one section against its
dataclass (unknown keys with a did-you-mean, types, the section's own `validate()`), a run
name, the seeds, and the scalar top-level keys (seed, seeds, compute, device). Every error is
a ParamsError whose message starts with the key at fault."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from typing import Any

from bowflow.compute import parse_mode
from bowflow.sections import ParamsError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # names data/models/<name>/ and stages


def check_type(where: str, value: Any, kind: Any) -> None:
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        (item,) = typing.get_args(kind)[:1]
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list of {item.__name__}, got {value!r}")
        for i, v in enumerate(value):
            check_type(f"{where}[{i}]", v, item)
        return
    if dict in (kind, origin):  # a mapping (arch_params): its keys are the section's validate()'s
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping (key: value, {{}} for none), got {value!r}")
        return
    ok = (
        isinstance(value, bool)
        if kind is bool
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is float
        else isinstance(value, int) and not isinstance(value, bool)
        if kind is int
        else isinstance(value, kind)
    )
    if not ok:
        hint = (
            f" (quote it: '{value}')"
            if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool)
            else ""
        )
        raise ParamsError(f"{where}: expected {kind.__name__}, got {value!r}{hint}")
    if kind is float and not math.isfinite(value):
        raise ParamsError(f"{where}: expected a finite number, got {value!r}")


def check_section(cls: type, values: Any, where: str) -> Any:
    """Check keys and types of one section against dataclass `cls`; return an instance."""
    if not isinstance(values, dict):
        raise ParamsError(f"{where}: expected a mapping of {cls.__name__} keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names), key=str)
    if unknown:
        raise ParamsError(
            f"{where}.{unknown[0]}: unknown key{did_you_mean(unknown[0], names)} (expected one of {names})"
        )
    for key, value in values.items():
        check_type(f"{where}.{key}", value, hints[key])
    try:
        section = cls(**values)
        section.validate()
    except ValueError as error:
        first, _, rest = str(error).partition(" ")
        if first.endswith(":") and first.partition(".")[0] in names:  # a key inside a mapping field
            raise ParamsError(f"{where}.{first} {rest}") from None  # ('arch_params.drop_path: ...')
        key = f"{where}.{first}" if first in names else where  # name the key when the message does
        raise ParamsError(f"{key}: {error}") from None
    return section


def did_you_mean(key: Any, names: list[str]) -> str:
    close = difflib.get_close_matches(str(key), names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def keyed(where: str, message: str, cls: type) -> str:
    """'hint_stage: the student has ...' from section `where` -> 'where.hint_stage: the
    student has ...': a message that starts with one of `cls`'s keys names it in full."""
    first, _, rest = message.partition(" ")
    name = first.rstrip(":=")
    if name in {f.name for f in dataclasses.fields(cls)}:
        return f"{where}.{name}: {rest if first.endswith(':') else message}"
    return f"{where}: {message}"


def check_run_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not RUN_NAME.match(name):
        raise ParamsError(
            f"{where}: expected a name of letters, digits, '_' and '-' (it names folders and stages), got {name!r}"
        )


def check_seeds(seeds: Any) -> None:
    """`seeds:` a non-empty list of distinct integers in numpy's seed range."""
    check_type("seeds", seeds, list)
    if not seeds:
        raise ParamsError("seeds: expected at least one seed, got []")
    for i, seed in enumerate(seeds):
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise ParamsError(f"seeds[{i}]: expected an integer in [0, 2**32 - 1], got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise ParamsError(f"seeds: expected distinct seeds, got {seeds}")


def check_scalars(params: dict) -> None:
    """The top-level keys that are single values, in this order: seed, seeds, compute, device."""
    check_type("seed", params["seed"], int)
    if not 0 <= params["seed"] < 2**32:
        raise ParamsError(f"seed: expected an integer in [0, 2**32 - 1] (numpy's seed range), got {params['seed']}")
    check_seeds(params["seeds"])
    check_type("compute", params["compute"], str)
    try:
        parse_mode(params["compute"])
    except ValueError as error:
        raise ParamsError(f"compute: {error}") from None
    check_type("device", params["device"], str)
    if not (params["device"] in ("auto", "cpu") or params["device"].startswith("cuda")):
        raise ParamsError(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got '{params['device']}'")
