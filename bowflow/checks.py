"""Declarative constraints on params fields, checked in one place.

A params dataclass states each field's constraint in its metadata, next to its default and
help text, instead of in a hand-written `validate()` body:

    lr: float = param(0.1, "peak learning rate", above=0)
    momentum: float = param(0.9, "SGD momentum", low=0, high=1)
    lr_schedule: str = param("cosine", "cosine | step", choices=("cosine", "step"))

`check_fields(params)` checks every field that has a constraint and raises ValueError
starting with the field's name (`lr must be > 0, got -1`), which `bowflow.config` turns
into a message naming the full key (`pretrain.byol.lr: ...`). `TrainParams.validate`
calls it, so every method's params get it; a method's own `validate()` keeps only the
checks that relate two fields. `positive` and `fraction` remain for those.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any


def param(
    default: Any,
    help: str = "",
    *,
    above: float | None = None,
    low: float | None = None,
    high: float | None = None,
    below: float | None = None,
    choices: tuple | None = None,
) -> Any:
    """A dataclass field with its help text and constraint: `above`/`below` exclusive
    bounds, `low`/`high` inclusive, `choices` the allowed values. A list default is
    copied per instance; each list item is checked against the bounds."""
    metadata = {
        "help": help,
        **{
            k: v
            for k, v in dict(above=above, low=low, high=high, below=below, choices=choices).items()
            if v is not None
        },
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def bounds_text(meta: dict) -> str:
    """'> 0', '>= 0', 'in [0, 1]', 'in (0, 1)' ... for the bounds in `meta`."""
    low = ("(", meta["above"]) if "above" in meta else ("[", meta["low"]) if "low" in meta else None
    high = (")", meta["below"]) if "below" in meta else ("]", meta["high"]) if "high" in meta else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{'>' if low[0] == '(' else '>='} {low[1]}"
    assert high is not None  # called for a value out of bounds: `meta` has one
    return f"{'<' if high[0] == ')' else '<='} {high[1]}"


def check_value(name: str, value: Any, meta: dict) -> None:
    """Raise ValueError naming `name` if `value` breaks the constraint in `meta`."""
    if "choices" in meta and value not in meta["choices"]:
        raise ValueError(f"{name} must be one of {list(meta['choices'])}, got {value!r}")
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        if (
            ("above" in meta and not item > meta["above"])
            or ("low" in meta and not item >= meta["low"])
            or ("high" in meta and not item <= meta["high"])
            or ("below" in meta and not item < meta["below"])
        ):
            raise ValueError(f"{name} must be {bounds_text(meta)}, got {value}")


CONSTRAINTS = ("above", "low", "high", "below", "choices")


def constraints(cls: type) -> dict[str, dict]:
    """{field name: its constraint} of dataclass `cls`, inherited: a subclass that only
    changes a field's default or help text keeps the base class's bounds."""
    found: dict[str, dict] = {}
    for klass in reversed(cls.__mro__):
        for f in getattr(klass, "__dataclass_fields__", {}).values():
            own = {k: v for k, v in f.metadata.items() if k in CONSTRAINTS}
            if own:
                found[f.name] = {**found.get(f.name, {}), **own}
    return found


def check_fields(params: Any) -> None:
    """Every constrained field of dataclass instance `params` (see `param`)."""
    for name, meta in constraints(type(params)).items():
        check_value(name, getattr(params, name), meta)


def positive(name: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def fraction(name: str, value: float, low_open: bool = False) -> None:
    if not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")
