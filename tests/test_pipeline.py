"""The real pipeline, end to end, on the tiny configuration with every method
(`dvc_project`, trained once for this file): DVC caching and partial reruns, every code edit
rerunning what runs it, adding a method, results through a DVC remote. Its neighbours:
test_pipeline_small.py (the one-run-of-each-kind project: metrics, Snakemake, the README's
commands) and test_pipeline_own_projects.py (seeds, bad params, a killed training, unlabelled
images); they import this file's helpers.

Every training and evaluation stage exists once per run and seed (`pretrain_seed0@g0`,
dvc.yaml written by workflow/pipeline.py); the tiny params train seed 0 alone, so most
tests name seed-0 stages (`seeded`)."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from dvc.repo import Repo
from test_code_deps import code_run_by

from bowflow.config import load_yaml
from bowflow.roles.base import available_methods
from bowflow.scaffold import ROOT, make_project, tiny_params, write_params

BIN = Path(sys.executable).parent
# A user's fresh shell: the project's environment is NOT on PATH (commands are typed as
# the README shows them, `.venv/bin/dvc repro`), and an empty BOWFLOW_CACHE, so no
# per-machine compute choice leaks in.
USER_PATH = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p).resolve() != BIN.resolve())
ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")},
    "PATH": USER_PATH,
    "BOWFLOW_CACHE": tempfile.mkdtemp(prefix="bowflow-test-cache-"),
}
TIMING_KEYS = {"wall_seconds", "peak_rss_mb", "peak_gpu_mb", "feature_images_per_second"}

# Tiers: the fast tier (`make test`) runs the tiny pipeline once, with one run of each kind
# (`tiny_params(every_method=False)`: the first image-only method and the first distiller
# in the registry's order; every method takes ~3x as long), and checks it end to end. The
# full tier (`make test-all`) also checks the run with every method (dvc_project), and
# every test that edits, kills or reruns it, or runs Snakemake: those are marked slow.


def run(project: Path, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(list(command), cwd=project, capture_output=True, text=True, env=ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def repro(project: Path, *options: str) -> set[str]:
    """Run `dvc repro` (with `options`); return the names of the stages that ran."""
    result = run(project, ".venv/bin/dvc", "repro", *options)
    return set(re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr))


def seeded(*stages: str, seeds=(0,)) -> set[str]:
    """The stage names of `kind@run` for each seed: "vocab@g1" -> {"vocab_seed0@g1"}."""
    return {f"{kind}_seed{seed}@{run}" for stage in stages for kind, run in [stage.split("@")] for seed in seeds}


def untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def eval_metrics(project: Path) -> dict:
    """Every evaluation record, and the test top-1 of every teacher/distill run, untimed,
    by seed and run ("seed0/g1", "top1/seed0/kd")."""
    out = {}
    for path in sorted(project.glob("data/metrics/seed*/eval/*.json")):
        out[f"{path.parts[-3]}/{path.stem}"] = untimed(json.loads(path.read_text()))
    for path in sorted(project.glob("data/metrics/seed*/train/*.json")):
        record = json.loads(path.read_text())
        if "top1" in record:
            out[f"top1/{path.parts[-3]}/{path.stem}"] = record["top1"]
    return out


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory):
    """The tiny pipeline with every method, run once (the slow tests share it)."""
    project = make_project(tmp_path_factory.mktemp("dvc") / "project", tiny_params())
    ran = repro(project)
    return project, ran, eval_metrics(project)  # metrics before any test edits the project


@pytest.mark.parametrize("which", ["one_of_each_project", pytest.param("dvc_project", marks=pytest.mark.slow)])
def test_dvc_runs_every_stage_and_writes_the_report(which, request):
    project, ran, _ = request.getfixturevalue(which)
    params = tiny_params(every_method=which == "dvc_project")
    assert len(params["distill"]) >= 1 and len(params["pretrain"]) >= 2
    runs = params["pretrain"]
    assert params["seeds"] == [0]
    assert ran == {
        "check_params",
        "prepare",
        "report",
        *seeded("vocab@g1", "vocab@g2", "student@g1", "student@g2", "evaluate_student@g1", "evaluate_student@g2"),
        *seeded(*{f"pretrain@{r}" for r in runs}, *{f"evaluate_pretrain@{r}" for r in runs}),
        *seeded(*{f"teacher@{r}" for r in params["teachers"]}, *{f"distill@{r}" for r in params["distill"]}),
    }
    report = (project / "data/report/report.md").read_text()
    for row in ("RotNet (g0)", "BoWNet (g1)", "BoWNet x2 (g2)"):
        assert row in report
    for figure in ("training_curves.png", "accuracy_by_generation.png", "visual_words_g1.png"):
        assert (project / "data/report" / figure).stat().st_size > 1000
    assert sorted(p.name for p in (project / "data/metrics").iterdir() if p.is_dir()) == ["seed0"]
    for group in ("train", "eval", "vocab"):
        paths = list((project / "data/metrics/seed0" / group).glob("*.json"))
        assert paths, f"no data/metrics/seed0/{group}/*.json"
        for path in paths:
            metrics = json.loads(path.read_text())
            assert metrics["wall_seconds"] > 0 and metrics["peak_rss_mb"] > 0 and metrics["parameters"] > 0
    for path in (project / "data/metrics/seed0/train").glob("*.json"):
        assert json.loads(path.read_text())["seed"] == 0, path
    vocab = json.loads((project / "data/metrics/seed0/vocab/g1.json").read_text())
    assert vocab["inertia"] > 0 and 0 < vocab["words_used"] <= 16
    history = (project / "data/plots/seed0/train/g1.csv").read_text()
    assert "captured" in history and "target_perplexity" in history
    assert not list((project / "data").rglob("*.tmp")), "a temporary file was left behind"
    # The distillation tables: one row per method plus the two vanilla runs, every cell filled.
    tables = report.split("## Distillation")[1]
    for title in ("Top-1 accuracy (%)", "Peak memory (GB)", "Parameters (M)", "Training time (min)"):
        assert f"### {title}" in tables
    accuracy = tables.split("### Peak memory")[0]
    rows = [line for line in accuracy.splitlines() if line.startswith("| ") and "Method" not in line]
    assert len(rows) == 2 + len(params["distill"]) and all(" - " not in row for row in rows)
    for name in params["distill"]:
        metrics = json.loads((project / f"data/metrics/seed0/train/{name}.json").read_text())
        assert 0 <= metrics["top1"] <= 100 and metrics["trained_parameters"] >= metrics["parameters"]
        assert metrics["parent"] == "teacher"


@pytest.mark.slow
def test_results_round_trip_through_a_dvc_remote(dvc_project, tmp_path):
    """Sharing results as a DVC user does: `dvc push` to a remote (a local folder here), a
    fresh `git clone` that `dvc pull`s, then `dvc status` is clean and `dvc repro` runs
    nothing, with the same metrics. Works on a copy, with the repository's own .gitignore
    (metrics and curves in git, models and data in DVC)."""
    project, _, before = dvc_project
    work, clone, remote = tmp_path / "work", tmp_path / "clone", tmp_path / "remote"
    shutil.copytree(project, work, symlinks=True)
    # the repository's rules, plus the venv link make_project puts where `make` would make a folder
    (work / ".gitignore").write_text((ROOT / ".gitignore").read_text() + "/.venv\n")
    run(work, ".venv/bin/dvc", "remote", "add", "--default", "shared", str(remote))
    run(work, "git", "add", "-A")
    run(work, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results")
    run(work, ".venv/bin/dvc", "push")
    run(tmp_path, "git", "clone", "-q", str(work), str(clone))
    assert not (clone / "data/models").exists()  # models come from the remote, not git
    (clone / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    run(clone, ".venv/bin/dvc", "pull")
    assert json.loads(run(clone, ".venv/bin/dvc", "status", "--json").stdout) == {}
    assert repro(clone) == set()
    assert eval_metrics(clone) == before


@pytest.mark.slow
def test_dvc_reruns_only_what_a_change_touches(dvc_project):
    project, _, _ = dvc_project
    params = tiny_params()
    assert repro(project) == set(), "a second dvc repro must do nothing"

    params["generations"]["g1"]["vocab"]["size"] = 12
    write_params(project, params)
    assert repro(project) == {
        "check_params",
        "report",
        *seeded("vocab@g1", "student@g1", "evaluate_student@g1", "vocab@g2", "student@g2", "evaluate_student@g2"),
    }

    params["evaluate"]["knn_k"] = 10
    write_params(project, params)
    assert repro(project) == {
        "check_params",
        "report",
        *seeded("evaluate_student@g1", "evaluate_student@g2"),
        *seeded(*{f"evaluate_pretrain@{r}" for r in params["pretrain"]}),
    }

    params["generations"]["g3"] = copy.deepcopy(params["generations"]["g2"]) | {"parent": "g2"}
    write_params(project, params)
    assert repro(project) == {"check_params", "report", *seeded("vocab@g3", "student@g3", "evaluate_student@g3")}
    assert "BoWNet x3 (g3)" in (project / "data/report/report.md").read_text()

    params["generations"]["g2"]["student"]["epochs"] = 1
    write_params(project, params)
    assert repro(project) == {
        "check_params",
        "report",
        *seeded("student@g2", "evaluate_student@g2", "vocab@g3", "student@g3", "evaluate_student@g3"),
    }

    # A new pretrain run reruns nothing that exists; changing it reruns only its branch.
    params["pretrain"]["rot2"] = params["pretrain"]["g0"] | {"epochs": 1}
    write_params(project, params)
    assert repro(project) == {"check_params", "report", *seeded("pretrain@rot2", "evaluate_pretrain@rot2")}
    params["pretrain"]["rot2"]["lr"] = 0.05
    write_params(project, params)
    assert repro(project) == {"check_params", "report", *seeded("pretrain@rot2", "evaluate_pretrain@rot2")}

    # A BoWNet generation may start from any trained run: here the first family method.
    parent = next((r for r in params["pretrain"] if r not in ("g0", "rot2")), "rot2")
    params["generations"]["gx"] = copy.deepcopy(params["generations"]["g1"]) | {"parent": parent}
    write_params(project, params)
    assert repro(project) == {"check_params", "report", *seeded("vocab@gx", "student@gx", "evaluate_student@gx")}
    assert f"data/models/seed0/{parent}/model.pt" in (project / "dvc.lock").read_text()

    # ... a ViT among them: a vocabulary over the tiny MAE's last-block patch tokens (vit_p2
    # at 8 px: a 4 x 4 token grid, so 16 codes per image), then BoWNet on a convnet.
    assert params["pretrain"]["mae"]["arch"] == "vit_p2" and params["pretrain"]["mae"]["depth"] == 2
    params["generations"]["gv"] = copy.deepcopy(params["generations"]["g1"]) | {"parent": "mae"}
    params["generations"]["gv"]["vocab"]["layer"] = "stage2"
    write_params(project, params)
    assert repro(project) == {"check_params", "report", *seeded("vocab@gv", "student@gv", "evaluate_student@gv")}
    vocab = json.loads((project / "data/metrics/seed0/vocab/gv.json").read_text())
    assert vocab["teacher"] == "mae" and vocab["codes_per_image"] == 16 and vocab["words_used"] > 1
    assert "BoWNet (gv)" in (project / "data/report/report.md").read_text()

    # Distillation: one run's gamma reruns that run and the report; a new run only itself.
    params["distill"]["at"]["gamma"] = 500.0
    write_params(project, params)
    assert repro(project) == {"check_params", "report", *seeded("distill@at")}
    params["distill"]["kd_t8"] = params["distill"]["kd"] | {"temperature": 8.0}
    write_params(project, params)
    assert repro(project) == {"check_params", "report", *seeded("distill@kd_t8")}
    params["teachers"]["vanilla"]["epochs"] = 1  # a vanilla student: no distill run uses it
    write_params(project, params)
    assert repro(project) == {"check_params", "report", *seeded("teacher@vanilla")}


def stale_stages(project: Path) -> set[str]:
    """Stages `dvc status` reports as changed (they would rerun)."""
    return set(dvc_status(project))


def dvc_status(project: Path) -> dict:
    """`dvc status --json`: per changed stage, what changed (its "changed deps" by path)."""
    result = run(project, ".venv/bin/dvc", "status", "--json")
    return json.loads(result.stdout or "{}")


def changed_deps(entries: list) -> set[str]:
    """The dependency paths one stage's `dvc status` entries name as changed."""
    return {path for entry in entries if isinstance(entry, dict) for path in entry.get("changed deps", {})}


def stale_by_edit(status: dict, module: str) -> set[str]:
    """The stages that editing `module` alone leaves stale: those whose changed deps name it
    or a folder holding it (a stage is stale when any of its deps changed)."""
    return {
        stage
        for stage, entries in status.items()
        if any(module == dep or module.startswith(dep.rstrip("/") + "/") for dep in changed_deps(entries))
    }


@pytest.mark.slow
def test_every_code_edit_reruns_what_runs_it(dvc_project):
    """Edit each library and stage module: `dvc status` must list every stage whose command
    runs that file (its import closure, workflow/imports.py), so no cached output ever
    describes code that no longer exists; a method's module, exactly its own runs.

    Every module is edited at once and read back from one `dvc status`, which names each
    stale stage's changed deps: the stages one module's edit leaves stale are those naming
    it (or a folder holding it). One status instead of one per module (~100, about 9
    minutes of the full tier). Two modules are also edited alone, to show a single edit
    leaves exactly the stages the combined status attributes to it."""
    project, _, _ = dvc_project
    assert repro(project) is not None and stale_stages(project) == set()
    with Repo(str(project)) as repo:
        commands = {s.name: s.cmd for s in repo.index.stages if s.cmd}
    runs = {name: code_run_by(cmd) for name, cmd in commands.items()}
    modules = sorted(
        str(p.relative_to(project)) for folder in ("bowflow", "stages") for p in (project / folder).rglob("*.py")
    )
    assert len(modules) > 15
    method_modules = [m for m in modules if m.startswith("bowflow/methods/") and not m.endswith("__init__.py")]
    assert len(method_modules) == len(available_methods())  # one module per method, each edited below

    def edited(paths: list[str]) -> dict:
        originals = {path: (project / path).read_bytes() for path in paths}
        try:
            for path, original in originals.items():
                (project / path).write_bytes(original + b"\n# an edit\n")
            return dvc_status(project)
        finally:
            for path, original in originals.items():
                (project / path).write_bytes(original)

    status = edited(modules)
    for module in modules:
        expected = {name for name, files in runs.items() if module in files}
        stale = stale_by_edit(status, module)
        assert expected <= stale, f"editing {module} leaves {sorted(expected - stale)} stale"
        if module in method_modules:  # a method's module: its own runs and check_params, no other
            assert stale == expected, f"editing {module} also marks {sorted(stale - expected)} stale"
    for module in ("bowflow/methods/vicreg.py", "bowflow/bow.py"):
        assert set(edited([module])) == stale_by_edit(status, module), module
    assert stale_stages(project) == set()


@pytest.mark.slow
def test_adding_a_method_reruns_nothing_that_exists(dvc_project):
    """VICReg, the method added last, is one module and one params entry. Take both out of
    the finished tiny project, then put them back: each time only its own branch, the
    params check and the report run."""
    project, _, _ = dvc_project
    assert repro(project) is not None and stale_stages(project) == set()
    # the project's params as earlier tests left them (not tiny_params(): going back to those
    # would rerun whatever an earlier test changed, unless DVC's run cache happens to hold it)
    params = load_yaml(project / "params.yaml")
    module = project / "bowflow/methods/vicreg.py"
    source = module.read_bytes()
    without = copy.deepcopy(params)
    del without["pretrain"]["vicreg"]
    module.unlink()
    for output in (
        "data/models/seed0/vicreg",
        "data/metrics/seed0/train/vicreg.json",
        "data/metrics/seed0/eval/vicreg.json",
        "data/plots/seed0/train/vicreg.csv",
    ):  # as if it had never run
        shutil.rmtree(project / output) if (project / output).is_dir() else (project / output).unlink()
    write_params(project, without)
    assert repro(project) == {"check_params", "report"}
    module.write_bytes(source)
    write_params(project, params)
    # dvc status lists the stages whose own inputs changed; the report follows once the new
    # run's metrics exist
    assert stale_stages(project) == {"check_params", *seeded("pretrain@vicreg", "evaluate_pretrain@vicreg")}
    # Nothing outside its branch, the params check and the report reruns. (This project ran
    # VICReg before, so DVC may restore its outputs from its caches instead of rerunning it.)
    ran = repro(project, "--no-run-cache")
    assert "check_params" in ran and ran <= {
        "check_params",
        "report",
        *seeded("pretrain@vicreg", "evaluate_pretrain@vicreg"),
    }, ran
    assert (project / "data/metrics/seed0/eval/vicreg.json").is_file() and stale_stages(project) == set()


def readme_commands() -> list[str]:
    """Every command line in the README's bash blocks (comments stripped)."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


# Commands the README shows that this test does not type, and why.
NOT_TYPED_HERE = {
    "make run": "the full default run; typed by hand in a fresh clone before every release",
    "make test": "the test suites themselves (`make test`, `make test-all`; CI runs `make test-all`)",
    "cp presets/": "hours of CIFAR-10 training",
    "/path/to/": "a placeholder for the user's own data",
    # the experiment queue: `dvc queue start` leaves background workers running whole
    # pipelines; tests/test_dvc_queue.py types these on a tiny project and waits for them
    "--queue": "queues a run of the whole pipeline (tests/test_dvc_queue.py)",
    "dvc queue": "starts, polls or reads the queue's background workers (tests/test_dvc_queue.py)",
    "exp apply": "names a queued experiment (tests/test_dvc_queue.py)",
    # SLURM: tests/test_slurm.py brings up a local one-node cluster as root and types these
    "workflow/profiles/slurm": "needs a SLURM cluster (tests/test_slurm.py brings one up and runs the profile)",
    "dvc push": "needs a remote (test_results_round_trip_through_a_dvc_remote pushes to a local one)",
    "dvc pull": "needs a remote (test_results_round_trip_through_a_dvc_remote pulls from a local one)",
}


@pytest.mark.slow
def test_distill_seeds_reruns_locked_stages(dvc_project, tmp_path):
    """benchmarks.distill_seeds reruns dvc.lock's commands with another seed into its own
    folder: new models, the pipeline's outputs untouched, seed 0 read from the pipeline."""
    project, _, _ = dvc_project
    shutil.copytree(
        ROOT / "benchmarks", project / "benchmarks", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    own = project / "data/metrics/seed0/train/kd.json"
    model = project / "data/models/seed0/kd/model.pt"
    before = own.read_text(), model.read_bytes()
    out = tmp_path / "seeds"
    vanilla, kd = "teacher_seed0@vanilla", "distill_seed0@kd"
    result = run(
        project,
        ".venv/bin/python",
        "-m",
        "benchmarks.distill_seeds",
        "--vanilla",
        vanilla,
        "--stages",
        kd,
        "--seeds",
        "1",
        "--out",
        str(out),
    )
    rows = {r["row"]: r for r in json.loads(result.stdout.splitlines()[-1].removeprefix("RESULT "))["rows"]}
    assert rows[kd]["top1"][0] == json.loads(before[0])["top1"]
    assert rows[kd]["top1"][1] == json.loads((out / "s1/kd.json").read_text())["top1"]
    assert "margin" in rows[kd] and "margin" not in rows[vanilla]
    assert (own.read_text(), model.read_bytes()) == before
    reseeded = torch.load(out / "s1/models/kd/model.pt", weights_only=False)["state_dict"]
    original = torch.load(model, weights_only=False)["state_dict"]
    assert any(not torch.equal(reseeded[k], original[k]) for k in original), "seed 1 = seed 0"
    assert json.loads((out / "seeds.json").read_text())["seeds"] == [0, 1]
