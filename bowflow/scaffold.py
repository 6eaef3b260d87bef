"""Lay out a runnable project folder with given params: the tiny configuration of the real
pipeline and a scratch copy of the project to run DVC or Snakemake in.

Used by the tests (end-to-end pipeline runs, stage dependency checks) and by the
benchmarks that time or break the real pipeline (`benchmarks/bench_pipeline.py`,
`benchmarks/bench_faults.py`), so that neither imports the other. Nothing in the pipeline's
stages imports this module.

- `tiny_params()`: params.yaml shrunk so that every kind of entry (a pretrain run of each
  method, two BoWNet generations, teachers, one distillation run per method) trains in
  seconds: the digits at 8 px, widths 6 to 12, 2 epochs. `tiny_params(every_method=False)`:
  one run of each kind instead (a third of the stages). `core_params()`: the RotNet ->
  BoWNet chain alone.
- `make_project(where, params)`: copy the project's code and pipeline files into a fresh git
  repository at `where`, with `params` as its params.yaml, dvc.yaml written for its seeds, and `.venv` pointing at the
  running environment, so that `.venv/bin/dvc repro` works there as typed in the README.
- `write_params(where, params)`: (re)write a project's params.yaml, as DVC reads it (and its
  dvc.yaml when the seeds change).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bowflow.roles.base import available_methods, get_method
from bowflow.sections import load_yaml

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ["bin", "bowflow", "stages", "workflow", ".dvc/config", ".dvcignore"]  # + dvc.yaml, written


def tiny_params(every_method: bool = True) -> dict:
    """The project's params.yaml made tiny (CPU, digits at 8 px, 2 epochs everywhere), with
    a pretrain run of every image-only method and a distillation run of every distiller;
    with every_method False, only of the first of each in the registry's order (the same
    kinds of stages and report sections, far fewer runs)."""
    params = copy.deepcopy(load_yaml(ROOT / "params.yaml"))
    params["device"] = "cpu"
    params["seeds"] = [0]  # one seed: the tests that need more set them
    params["compute"] = "auto"  # so that BOWFLOW_COMPUTE (tests/conftest.py) chooses
    params["data"].update(image_size=8, ssl_max_images=300)
    params["pretrain"]["g0"].update(width=8, epochs=2, batch_size=32, padding=1)
    vocab = {"layer": "stage2", "size": 16, "samples": 2000, "iters": 5, "drop_border": 0, "batch_size": 256}
    student = dict(params["generations"]["g1"]["student"], width=8, epochs=2, batch_size=32, lr=0.03, warmup_epochs=0.5)
    params["generations"] = {
        "g1": {"parent": "g0", "vocab": dict(vocab), "student": dict(student)},
        "g2": {"parent": "g1", "vocab": dict(vocab), "student": dict(student)},
    }
    family, (teachers, distill) = family_runs(), distill_runs()
    if not every_method:
        family, distill = dict(list(family.items())[:1]), dict(list(distill.items())[:1])
    params["pretrain"].update(family)
    params["teachers"], params["distill"] = teachers, distill
    params["evaluate"].update(linear_epochs=5, few_shot_shots=[1, 5], few_shot_episodes=50, batch_size=256)
    params["report"].update(words_shown=3, patches_per_word=4)
    return params


def core_params() -> dict:
    """The tiny configuration with only the RotNet -> BoWNet chain (check_params, prepare,
    g0, two generations' vocabularies and students, their evaluations, the report)."""
    params = tiny_params(every_method=False)
    params["pretrain"] = {"g0": params["pretrain"]["g0"]}
    params["teachers"], params["distill"] = {}, {}
    return params


def entry(params: Any) -> dict:
    """A params.yaml entry with every field of `params` written out, but an empty
    `arch_params` (params.yaml's runs leave it out: the arch's defaults)."""
    return {k: v for k, v in asdict(params).items() if k != "arch_params" or v}


def family_runs(methods: list[str] | None = None) -> dict:
    """One tiny pretrain run per registered method that trains on images alone (every
    method but RotNet, which is g0, those needing a stage's inputs, like BoWNet, and the
    supervised one, whose runs are teachers),
    each with all of its method's defaults written out, as a params.yaml entry would be; a
    method that needs patch tokens (MAE) on a 2-block ViT, the others on a width-8 convnet."""
    runs = {}
    for name in methods if methods is not None else available_methods():
        cls = get_method(name)
        if cls.section != "pretrain" or name == "rotnet":
            continue
        network = (
            dict(arch="vit_p2", width=16, depth=2) if cls.token_backbone else dict(arch="convnet", width=8, depth=0)
        )
        runs[name] = entry(cls.Params(method=name)) | network | dict(epochs=2, batch_size=32, warmup_epochs=0.5)
    return runs


def distill_runs(methods: list[str] | None = None) -> tuple[dict, dict]:
    """A tiny teacher (convnet width 12) and vanilla student (width 6) in `teachers:`, and
    one `distill:` run per registered distillation method from that teacher to a width-6
    student, each with its method's defaults written out. -> (teachers, distill)."""
    tiny = dict(arch="convnet", depth=0, epochs=2, batch_size=32, padding=1, lr_decay_at=[0.5])
    supervised = entry(get_method("supervised").Params()) | tiny
    teachers = {"teacher": supervised | {"width": 12}, "vanilla": supervised | {"width": 6}}
    distill = {}
    for name in methods if methods is not None else available_methods():
        cls = get_method(name)
        if cls.section == "distill":
            # collapse_std 0: at 8 px the benchmark's gammas (tuned for 32 px maps) can swamp
            # CE for two epochs; the tiny runs check the plumbing, not the recipe
            distill[name] = (
                entry(cls.Params(method=name)) | tiny | {"width": 6, "teacher": "teacher", "collapse_std": 0.0}
            )
    return teachers, distill


def make_project(where: Path, params: dict) -> Path:
    """Copy the project's code and pipeline files into a fresh git repository at `where`
    (created), with `params` as its params.yaml; -> where."""
    where.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, where / name, ignore=shutil.ignore_patterns("__pycache__", ".snakemake"))
        elif source.exists():
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, where / name)
    (where / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    (where / ".gitignore").write_text("/data/\n.snakemake/\n__pycache__/\n/.venv\n")
    # The running environment stands where `make` puts it in a fresh clone, so the README's
    # commands (`.venv/bin/dvc repro`) work in the copy exactly as a user types them.
    (where / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    write_params(where, params)
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"],
    ):
        subprocess.run(command, cwd=where, check=True)
    return where


def write_params(where: Path, params: dict) -> None:
    """Write `params` as the project's params.yaml at `where`, and its dvc.yaml for the
    params' seeds (workflow/pipeline.py; unchanged unless the seeds changed)."""
    from workflow.pipeline import params_seeds, render

    write_yaml(params, where / "params.yaml")
    text = render(params_seeds(params), params)
    dvc_yaml = where / "dvc.yaml"
    if not dvc_yaml.exists() or dvc_yaml.read_text() != text:
        dvc_yaml.write_text(text)


def write_yaml(data, path: Path) -> None:
    """Write `data` as YAML with the library DVC reads params with (ruamel, YAML 1.2)."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    with open(path, "w") as handle:
        yaml.dump(data, handle)
