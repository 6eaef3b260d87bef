"""The four kinds of run a params.yaml names, one per role, and the one walk over them.

One job: the single source of what the checks know about the roles. Each role class
(bowflow/roles/) already says which params section lists its runs (`section`) and which
stage kind trains them (`stage`, also its `resources:` key); `RUN_KINDS` adds, in params
order, how an error names the role, where a run sits in its entry (a generation's
`student`) and which images it trains on. `walk_runs` turns checked params into
`Run`s (section, key, run) in that order; every cross-run check, the data needs and the
runs list use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bowflow.roles.base import Method, available_methods, get_method
from bowflow.roles.bow_student import BoWStudent
from bowflow.roles.distiller import Distiller
from bowflow.roles.self_supervised import SelfSupervised
from bowflow.roles.supervised import Supervised


@dataclass(frozen=True)
class RunKind:
    """What the checks know of one role's runs."""

    role: type[Method]  # the role class: its `section` lists the runs, its `stage` trains them
    describes: str  # how an error message names the role
    part: str | None  # the key of the run inside its section's entry (None: the entry itself)
    pool: str  # the images it trains on: "ssl" (SSL images) or "labelled" (train split)

    @property
    def section(self) -> str:
        return self.role.section

    @property
    def stage(self) -> str:
        """The stage kind that trains it: its entry of `resources:`."""
        return self.role.stage


RUN_KINDS = (
    RunKind(SelfSupervised, "a self-supervised method (learns from images alone)", None, "ssl"),
    RunKind(BoWStudent, "a BoW student (learns from a vocabulary's BoW codes, e.g. bownet)", "student", "ssl"),
    RunKind(Supervised, "a supervised method (learns from labels alone, method: supervised)", None, "labelled"),
    RunKind(Distiller, "a distillation method (learns from a teacher)", None, "labelled"),
)
RUN_SECTIONS = tuple(kind.section for kind in RUN_KINDS)  # pretrain, generations, teachers, distill
ROLE_OF_SECTION = {kind.section: kind.describes for kind in RUN_KINDS}


@dataclass(frozen=True)
class Run:
    """One checked run: its kind, its name (the key of its section's entry) and its params."""

    kind: RunKind
    name: str
    params: Any

    @property
    def section(self) -> str:
        return self.kind.section

    @property
    def key(self) -> str:
        """Where its params sit in params.yaml: 'pretrain.NAME', 'generations.NAME.student'."""
        return f"{self.section}.{self.name}" + (f".{self.kind.part}" if self.kind.part else "")


def walk_runs(checked: dict, pool: str | None = None) -> list[Run]:
    """Every run of checked params (of one image `pool`, if given), in params order:
    pretrain:, generations: (their students), teachers:, distill:, each in file order."""
    return [
        Run(kind, name, entry[kind.part] if kind.part else entry)
        for kind in RUN_KINDS
        if pool is None or kind.pool == pool
        for name, entry in checked[kind.section].items()
    ]


def run_names(checked: dict) -> list[str]:
    """Every run the params name (pretrain:, generations:, teachers:, distill: entries)."""
    return [run.name for run in walk_runs(checked)]


def methods_of(section: str) -> list[str]:
    """Registered methods whose role runs them from `section` ('pretrain', 'generations',
    'teachers', 'distill')."""
    return [m for m in available_methods() if get_method(m).section == section]


def distillation_methods() -> list[str]:
    """Registered methods that distil a teacher (role Distiller)."""
    return methods_of(Distiller.section)
