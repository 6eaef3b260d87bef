"""The stages of dvc.yaml as DVC itself resolves them, for the Snakemake front-end.

dvc.yaml is the single definition of the pipeline. This module does no templating of its
own: it opens the project with DVC's Python API (`dvc.repo.Repo`, read only: it takes no
lock and writes nothing but what any `dvc` command writes under .dvc/tmp) and reads every
concrete stage from `repo.index.stages`, with `foreach`/`matrix` expanded, `${...}`
interpolated and mappings rendered as flags under .dvc/config's `[parsing]` settings:
exactly the commands `dvc repro` runs. The Snakefile makes one rule per stage
(`Pipeline.jobs`); tests/test_frontends.py checks that both front-ends agree.

Directories are declared, never guessed from a path:

* An output that is a directory says so with DVC's output annotation `type: directory`
  (DVC validates the field; neither dvc.lock nor `dvc status` depends on it):

      outs:
        - data/prepared:
            type: directory

  Snakemake gets `directory(path)` for it. The declaration is checked against what DVC
  knows whenever it knows it, the output's hash in dvc.lock (a directory's md5 ends in
  `.dir`) and the path on disk; a mismatch, or any other `type`, raises DeclarationError.
* A dependency is a directory when it is a declared directory output, when stage outputs
  lie inside it (DVC's graph links a dependency to the outputs under it, e.g. data/metrics:
  Snakemake gets those outputs as inputs), or when it is a folder of the repository
  (bowflow/methods), which Snakemake takes as it is. A dependency inside a directory
  output raises DeclarationError: Snakemake cannot schedule part of a `directory()` output.

Params dependencies are not inputs: their values are in the command, whose change
Snakemake detects itself.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bowflow.sections import load_yaml  # noqa: E402

DIRECTORY = "directory"  # the output `type` that declares a directory


class DeclarationError(Exception):
    """dvc.yaml declares an output's kind (file or directory) wrongly, or not at all."""


@dataclass(frozen=True)
class Output:
    path: str  # relative to the project root
    directory: bool


@dataclass(frozen=True)
class Job:
    """One concrete DVC stage, e.g. `pretrain@byol`, as a Snakemake rule needs it."""

    name: str  # DVC's address of the stage
    cmd: str  # the command DVC runs, resolved by DVC
    deps: tuple[str, ...]  # DVC's path dependencies (params excluded)
    outputs: tuple[Output, ...]  # outs, metrics and plots
    inputs: tuple[str, ...] = ()  # deps as Snakemake schedules them (see module doc)

    @property
    def rule(self) -> str:
        """DVC's `student@g1` -> the Snakemake rule name `student__g1` (identifiers only)."""
        return re.sub(r"\W", "_", self.name.replace("@", "__"))


class Pipeline:
    """Every stage of the DVC project at `root` (default: this repository)."""

    def __init__(self, root: str | Path = ROOT):
        from dvc.dependency.param import ParamsDependency
        from dvc.repo import Repo

        self.root = Path(root).resolve()
        with Repo(str(self.root)) as repo:
            repo.index.check_graph()  # DVC's own checks: cycles, overlapping outputs
            jobs = []
            for stage in repo.index.stages:
                if not stage.cmd:  # a `dvc add`ed file: data, not a step to run
                    continue
                if Path(stage.wdir).resolve() != self.root:
                    raise DeclarationError(
                        f"{stage.name}: Snakemake runs every command from the project root; wdir {stage.wdir} is not it"
                    )
                cmd = stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd)
                deps = tuple(self.relative(d.fs_path) for d in stage.deps if not isinstance(d, ParamsDependency))
                outputs = tuple(self.output(stage.name, out) for out in stage.outs)
                jobs.append(Job(stage.name, cmd, deps, outputs))
        produced = {out.path: out for job in jobs for out in job.outputs}
        self.jobs = [Job(j.name, j.cmd, j.deps, j.outputs, self.inputs(j, produced)) for j in jobs]

    @property
    def params(self) -> dict:
        return load_yaml(self.root / "params.yaml")

    def job(self, name: str) -> Job:
        return next(job for job in self.jobs if job.name == name)

    def relative(self, fs_path: str) -> str:
        return Path(os.path.relpath(fs_path, self.root)).as_posix()

    def output(self, stage: str, out) -> Output:
        """The output `out` of DVC stage `stage`, its declared kind checked (module doc)."""
        path, kind = self.relative(out.fs_path), out.annot.type
        if kind not in (None, DIRECTORY):
            raise DeclarationError(
                f"dvc.yaml: {stage} output {path} has type '{kind}'; the only "
                f"output type this pipeline uses is '{DIRECTORY}'"
            )
        declared = kind == DIRECTORY
        known = []  # (is a directory, according to what, the remedy if stale)
        if out.hash_info and out.hash_info.value:
            known.append((out.hash_info.isdir, "dvc.lock", f"rerun `dvc repro {stage}`"))
        if os.path.lexists(out.fs_path):
            known.append((os.path.isdir(out.fs_path), "the path on disk", f"delete {path}"))
        for isdir, source, remedy in known:
            if isdir != declared:
                raise DeclarationError(
                    f"dvc.yaml: {stage} output {path} is a {'directory' if isdir else 'file'} "
                    f"according to {source}, but is declared as a "
                    f"{'directory (type: directory)' if declared else 'file (no type: directory)'}; "
                    f"fix the declaration in dvc.yaml, or {remedy} if {source} is out of date"
                )
        return Output(path, declared)

    @staticmethod
    def inputs(job: Job, produced: dict[str, Output]) -> tuple[str, ...]:
        """The job's deps as files Snakemake can schedule: a directory dependency that no
        stage writes itself stands for every stage output inside it (DVC's meaning)."""
        inputs = []
        for dep in job.deps:
            inside = sorted(path for path in produced if path.startswith(dep + "/"))
            around = [path for path, out in produced.items() if out.directory and dep.startswith(path + "/")]
            if around:
                raise DeclarationError(
                    f"dvc.yaml: {job.name} depends on {dep}, inside the "
                    f"directory output {around[0]}; depend on {around[0]}"
                )
            inputs += inside if dep not in produced and inside else [dep]
        return tuple(inputs)
