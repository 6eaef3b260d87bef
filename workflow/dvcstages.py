"""Read dvc.yaml and resolve its stages the way DVC does, for the Snakemake front-end.

dvc.yaml is the single definition of the pipeline's stages: command templates, inputs,
outputs. The Snakefile generates one rule per concrete stage (`instances`) and takes each
rule's command, inputs and outputs from here, so the two front-ends cannot drift apart;
tests/test_frontends.py checks the resolved commands against DVC's own.

Template rules (DVC's): `${a.b}` looks up params.yaml, `${key}` / `${item.x}` the
current foreach entry; a mapping renders as `--flag value` pairs (bowflow.cli.render_args).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bowflow.cli import render_args  # noqa: E402
from bowflow.sections import load_yaml  # noqa: E402

TEMPLATE = re.compile(r"\$\{\s*([^}]+?)\s*\}")


def lookup(context: dict, expression: str) -> Any:
    value: Any = context
    for part in expression.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"dvc.yaml: cannot resolve ${{{expression}}} ('{part}' not found)")
        value = value[part]
    return value


def render_value(value: Any) -> str:
    if isinstance(value, dict):
        return render_args(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(text: str, context: dict) -> str:
    return TEMPLATE.sub(lambda m: render_value(lookup(context, m.group(1))), text)


def entry_paths(entries: list) -> list[str]:
    """dvc.yaml lists items as 'path' or {'path': {options}} -> paths."""
    paths = []
    for entry in entries or []:
        paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


class Pipeline:
    """The stages of dvc.yaml resolved against params.yaml."""

    def __init__(self, dvc_file: str | Path = ROOT / "dvc.yaml",
                 params_file: str | Path = ROOT / "params.yaml"):
        self.spec = load_yaml(dvc_file)["stages"]
        self.params = load_yaml(params_file)

    def foreach(self, stage: str) -> dict:
        """The mapping a foreach stage iterates over (e.g. params generations)."""
        expression = self.spec[stage]["foreach"]
        return lookup(self.params, TEMPLATE.fullmatch(expression).group(1))

    def body(self, stage: str) -> dict:
        spec = self.spec[stage]
        return spec["do"] if "foreach" in spec else spec

    def context(self, stage: str, key: str | None) -> dict:
        if key is None:
            return self.params
        return {**self.params, "key": key, "item": self.foreach(stage)[key]}

    def cmd(self, stage: str, key: str | None = None) -> str:
        return " ".join(render(self.body(stage)["cmd"], self.context(stage, key)).split())

    def deps(self, stage: str, key: str | None = None) -> list[str]:
        context = self.context(stage, key)
        return [render(path, context) for path in entry_paths(self.body(stage).get("deps"))]

    def outs(self, stage: str, key: str | None = None) -> list[str]:
        """Outputs, metrics and plots of the stage (all are files the stage writes)."""
        body, context = self.body(stage), self.context(stage, key)
        paths = []
        for section in ("outs", "metrics", "plots"):
            paths += [render(path, context) for path in entry_paths(body.get(section))]
        return paths

    def instances(self) -> list[tuple[str, str | None]]:
        """Every concrete stage: (stage, None) or (stage, key) for foreach stages."""
        out = []
        for stage, spec in self.spec.items():
            if "foreach" in spec:
                out += [(stage, key) for key in self.foreach(stage)]
            else:
                out.append((stage, None))
        return out

    def all_outputs(self) -> dict[str, tuple[str, str | None]]:
        return {path: inst for inst in self.instances() for path in self.outs(*inst)}

    def expand_deps(self, stage: str, key: str | None = None) -> list[str]:
        """Dependencies as files Snakemake can schedule: a directory dependency that no
        stage writes itself stands for every stage output inside it (DVC's meaning)."""
        outputs = self.all_outputs()
        expanded = []
        for dep in self.deps(stage, key):
            inside = sorted(p for p in outputs if p.startswith(dep.rstrip("/") + "/"))
            expanded += inside if dep not in outputs and inside else [dep]
        return expanded


def rule_name(stage: str, key: str | None) -> str:
    """DVC's `student@g1` -> the Snakemake rule name `student__g1` (identifiers only)."""
    name = stage if key is None else f"{stage}__{key}"
    return re.sub(r"\W", "_", name)


def is_directory(path: str) -> bool:
    """DVC outputs without a file extension are directories (data/prepared, data/report)."""
    return Path(path).suffix == ""
