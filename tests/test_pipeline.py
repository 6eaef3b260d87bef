"""The real pipeline, end to end, on a tiny configuration: DVC caching and partial reruns,
each training seed its own branch (adding a seed reruns nothing that exists), Snakemake
producing the same metrics, bad params stopping before any work, and a killed training
stage resuming from its checkpoint.

Every training and evaluation stage exists once per run and seed (`pretrain_seed0@g0`,
dvc.yaml written by workflow/pipeline.py); the tiny params train seed 0 alone, so most
tests name seed-0 stages (`seeded`)."""
import copy
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from dvc.repo import Repo
from test_code_deps import code_run_by

from bowflow.cli import render_args
from bowflow.config import load_yaml
from bowflow.roles.base import available_methods
from bowflow.scaffold import ROOT, core_params, make_project, tiny_params, write_params, write_yaml

BIN = Path(sys.executable).parent
# A user's fresh shell: the project's environment is NOT on PATH (commands are typed as
# the README shows them, `.venv/bin/dvc repro`), and an empty BOWFLOW_CACHE, so no
# per-machine compute choice leaks in.
USER_PATH = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                            if Path(p).resolve() != BIN.resolve())
ENV = {**{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")},
       "PATH": USER_PATH, "BOWFLOW_CACHE": tempfile.mkdtemp(prefix="bowflow-test-cache-")}
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
    return {f"{kind}_seed{seed}@{run}" for stage in stages for kind, run in [stage.split("@")]
            for seed in seeds}


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
    return project, ran, eval_metrics(project)   # metrics before any test edits the project


@pytest.fixture(scope="module")
def one_of_each_project(tmp_path_factory):
    """The tiny pipeline with one run of each kind, run once (the fast tier's pipeline run)."""
    project = make_project(tmp_path_factory.mktemp("dvc-fast") / "project", tiny_params(every_method=False))
    return project, repro(project), None


@pytest.mark.parametrize("which", ["one_of_each_project", pytest.param("dvc_project", marks=pytest.mark.slow)])
def test_dvc_runs_every_stage_and_writes_the_report(which, request):
    project, ran, _ = request.getfixturevalue(which)
    params = tiny_params(every_method=which == "dvc_project")
    assert len(params["distill"]) >= 1 and len(params["pretrain"]) >= 2
    runs = params["pretrain"]
    assert params["seeds"] == [0]
    assert ran == {"check_params", "prepare", "report",
                   *seeded("vocab@g1", "vocab@g2", "student@g1", "student@g2", "evaluate_student@g1",
                           "evaluate_student@g2"),
                   *seeded(*{f"pretrain@{r}" for r in runs}, *{f"evaluate_pretrain@{r}" for r in runs}),
                   *seeded(*{f"teacher@{r}" for r in params["teachers"]}, *{f"distill@{r}" for r in params["distill"]})}
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
    assert not (clone / "data/models").exists()            # models come from the remote, not git
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
    assert repro(project) == {"check_params", "report", *seeded("vocab@g1", "student@g1", "evaluate_student@g1",
                                                                "vocab@g2", "student@g2", "evaluate_student@g2")}

    params["evaluate"]["knn_k"] = 10
    write_params(project, params)
    assert repro(project) == {"check_params", "report", *seeded("evaluate_student@g1", "evaluate_student@g2"),
                              *seeded(*{f"evaluate_pretrain@{r}" for r in params["pretrain"]})}

    params["generations"]["g3"] = copy.deepcopy(params["generations"]["g2"]) | {"parent": "g2"}
    write_params(project, params)
    assert repro(project) == {"check_params", "report", *seeded("vocab@g3", "student@g3", "evaluate_student@g3")}
    assert "BoWNet x3 (g3)" in (project / "data/report/report.md").read_text()

    params["generations"]["g2"]["student"]["epochs"] = 1
    write_params(project, params)
    assert repro(project) == {"check_params", "report", *seeded("student@g2", "evaluate_student@g2", "vocab@g3",
                                                                "student@g3", "evaluate_student@g3")}

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
    params["teachers"]["vanilla"]["epochs"] = 1        # a vanilla student: no distill run uses it
    write_params(project, params)
    assert repro(project) == {"check_params", "report", *seeded("teacher@vanilla")}


def stale_stages(project: Path) -> set[str]:
    """Stages `dvc status` reports as changed (they would rerun)."""
    result = run(project, ".venv/bin/dvc", "status", "--json")
    return set(json.loads(result.stdout or "{}"))


@pytest.mark.slow
def test_every_code_edit_reruns_what_runs_it(dvc_project):
    """Edit each library and stage module in turn: `dvc status` must list every stage whose
    command runs that file (its import closure, workflow/imports.py), so no cached output
    ever describes code that no longer exists."""
    project, _, _ = dvc_project
    assert repro(project) is not None and stale_stages(project) == set()
    with Repo(str(project)) as repo:
        commands = {s.name: s.cmd for s in repo.index.stages if s.cmd}
    runs = {name: code_run_by(cmd) for name, cmd in commands.items()}
    modules = sorted(str(p.relative_to(project)) for folder in ("bowflow", "stages")
                     for p in (project / folder).rglob("*.py"))
    assert len(modules) > 15
    method_modules = [m for m in modules if m.startswith("bowflow/methods/") and not m.endswith("__init__.py")]
    assert len(method_modules) == len(available_methods())   # one module per method, each edited below
    for module in modules:
        path = project / module
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit\n")
        try:
            expected = {name for name, files in runs.items() if module in files}
            stale = stale_stages(project)
        finally:
            path.write_bytes(original)
        assert expected <= stale, f"editing {module} leaves {sorted(expected - stale)} stale"
        if module in method_modules:     # a method's module: its own runs and check_params, no other
            assert stale == expected, f"editing {module} also marks {sorted(stale - expected)} stale"
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
    for output in ("data/models/seed0/vicreg", "data/metrics/seed0/train/vicreg.json",
                   "data/metrics/seed0/eval/vicreg.json",
                   "data/plots/seed0/train/vicreg.csv"):   # as if it had never run
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
    assert "check_params" in ran and ran <= {"check_params", "report",
                                             *seeded("pretrain@vicreg", "evaluate_pretrain@vicreg")}, ran
    assert (project / "data/metrics/seed0/eval/vicreg.json").is_file() and stale_stages(project) == set()


# The RotNet -> BoWNet chain's stages of one seed (core_params()).
CORE_STAGES = ("pretrain@g0", "evaluate_pretrain@g0", "vocab@g1", "student@g1", "evaluate_student@g1",
               "vocab@g2", "student@g2", "evaluate_student@g2")


@pytest.mark.slow
def test_each_seed_is_its_own_branch_and_a_new_seed_reruns_nothing_that_exists(tmp_path):
    """seeds: [0, 1] trains and evaluates every run once per seed, each seed in its own
    folders and with its own draws; adding seed 2 (dvc.yaml rewritten by write_params, as
    `python -m workflow.pipeline` does) runs only seed 2's stages, the params check and
    the report: nothing of seeds 0 and 1 reruns."""
    params = core_params() | {"seeds": [0, 1]}
    project = make_project(tmp_path / "project", params)
    with Repo(str(project)) as repo:
        stages = {s.name for s in repo.index.stages if s.cmd}
    assert stages == {"check_params", "prepare", "report", *seeded(*CORE_STAGES, seeds=(0, 1))}
    assert repro(project) == stages
    for seed in (0, 1):
        for name in ("g0", "g1", "g2"):
            assert (project / f"data/models/seed{seed}/{name}/model.pt").is_file()
            assert json.loads((project / f"data/metrics/seed{seed}/train/{name}.json").read_text())["seed"] == seed
            assert (project / f"data/metrics/seed{seed}/eval/{name}.json").is_file()
            assert (project / f"data/plots/seed{seed}/train/{name}.csv").is_file()
        for name in ("g1", "g2"):
            assert (project / f"data/models/seed{seed}/{name}/vocab.pt").is_file()
            assert (project / f"data/metrics/seed{seed}/vocab/{name}.json").is_file()
    g1 = [untimed(json.loads((project / f"data/metrics/seed{seed}/eval/g1.json").read_text())) for seed in (0, 1)]
    assert g1[0]["name"] == g1[1]["name"] == "g1"
    assert g1[0] != g1[1], "seeds 0 and 1 trained and evaluated g1 identically"
    assert json.loads((project / "data/runs.json").read_text())["seeds"] == [0, 1]

    before = {path: path.read_bytes() for path in (project / "data").rglob("seed[01]/**/*") if path.is_file()}
    write_params(project, params | {"seeds": [0, 1, 2]})
    assert "--pipeline-seeds 0 1 2" in (project / "dvc.yaml").read_text()
    assert repro(project) == {"check_params", "report", *seeded(*CORE_STAGES, seeds=(2,))}
    assert json.loads((project / "data/runs.json").read_text())["seeds"] == [0, 1, 2]
    assert (project / "data/metrics/seed2/eval/g2.json").is_file()
    assert {path: path.read_bytes() for path in before} == before, "seed 0 or 1's outputs changed"
    assert stale_stages(project) == set()


@pytest.mark.slow
def test_check_params_stops_when_dvc_yaml_has_other_seeds(tmp_path):
    """params.yaml's seeds edited by hand, dvc.yaml not regenerated: check_params (told
    dvc.yaml's seeds by its command) stops and names the command that rewrites dvc.yaml,
    so `dvc repro` never trains a seed set other than the one params.yaml lists."""
    params = core_params() | {"seeds": [0, 1]}
    project = make_project(tmp_path / "project", params)
    check = [".venv/bin/python", "-m", "bowflow.config", "params.yaml", "--pipeline-seeds", "0", "1"]
    run(project, *check)                                    # the seeds agree: valid
    write_yaml(params | {"seeds": [0, 1, 2]}, project / "params.yaml")     # dvc.yaml left as it was
    assert "--pipeline-seeds 0 1\n" in (project / "dvc.yaml").read_text()
    result = run(project, *check, check=False)
    assert result.returncode != 0 and "workflow.pipeline" in result.stderr, result.stderr
    result = run(project, ".venv/bin/dvc", "repro", check=False)
    assert result.returncode != 0 and "workflow.pipeline" in result.stdout + result.stderr
    assert not (project / "data/prepared").exists()
    # the command the message names makes them agree again
    run(project, ".venv/bin/python", "-m", "workflow.pipeline")
    run(project, *check[:-2], "0", "1", "2")


@pytest.mark.slow
def test_snakemake_agrees_with_dvc(dvc_project, tmp_path):
    _, _, dvc_metrics = dvc_project
    project = make_project(tmp_path / "project", tiny_params())
    run(project, ".venv/bin/snakemake", "--cores", "2", "--quiet")
    assert eval_metrics(project) == dvc_metrics, "same params and seed: identical metrics"
    run(project, ".venv/bin/snakemake", "--cores", "1", "--report", "report.html")
    assert (project / "report.html").stat().st_size > 10000


@pytest.mark.slow
def test_bad_params_stop_before_any_work(tmp_path):
    params = tiny_params()
    params["generations"]["g1"]["vocab"]["size"] = 5000
    project = make_project(tmp_path / "project", params)
    result = run(project, ".venv/bin/dvc", "repro", check=False)
    assert result.returncode != 0
    assert "generations.g1.vocab" in result.stderr + result.stdout
    assert not (project / "data/prepared").exists()
    result = run(project, ".venv/bin/snakemake", "--cores", "1", "-n", check=False)
    assert result.returncode != 0 and "generations.g1.vocab" in result.stderr + result.stdout


# Runs a stage module with the trainer's checkpoint writer wrapped so that the process
# SIGKILLs itself right after the checkpoint of epoch KILL_AFTER_EPOCH is on disk: a kill at a
# known point of training, independent of how fast this machine runs. Run as a script (also
# under torchrun, tests/test_torchrun.py), from the project folder.
KILL_AFTER_CHECKPOINT = """
import os, runpy, signal, sys
sys.path.insert(0, os.getcwd())
import bowflow.train
stop = int(os.environ["KILL_AFTER_EPOCH"])
write = bowflow.train.save_torch
def save_then_die(state, path):
    write(state, path)
    if state["epoch"] == stop:
        os.kill(os.getpid(), signal.SIGKILL)
bowflow.train.save_torch = save_then_die
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint(tmp_path):
    project = make_project(tmp_path / "project", tiny_params())
    run(project, ".venv/bin/dvc", "repro", "prepare")
    params = tiny_params()["pretrain"]["g0"] | {"epochs": 4}
    flags = shlex.split(render_args(params))         # as DVC renders them (lists: one flag, items)

    def args(name):
        return ["--prepared", "data/prepared",
                "--model", str(tmp_path / name / "model.pt"), "--metrics", str(tmp_path / name / "m.json"),
                "--history", str(tmp_path / name / "h.csv"), "--checkpoints", str(tmp_path / name / "ckpt"),
                "--seed", "0", "--device", "cpu", *flags]

    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKPOINT, "stages.pretrain", *args("killed")],
                            cwd=project, env={**ENV, "KILL_AFTER_EPOCH": "2"}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoint = tmp_path / "killed" / "ckpt" / "killed-seed0-rotnet.ckpt"    # <run>-seed<S>-<method>
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 2
    assert not (tmp_path / "killed" / "model.pt").exists()
    assert not (tmp_path / "killed" / "h.csv").exists()

    resumed = subprocess.run([sys.executable, "-m", "stages.pretrain", *args("killed")], cwd=project,
                             env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "at epoch 2/4" in resumed.stderr and "resumed from checkpoint" in resumed.stderr
    assert "epoch=1 " not in resumed.stderr and "epoch=3 " in resumed.stderr, "epochs 1-2 are not redone"
    assert not checkpoint.exists(), "the checkpoint is removed once the model is written"
    subprocess.run([sys.executable, "-m", "stages.pretrain", *args("straight")], cwd=project, env=ENV,
                   capture_output=True, check=True)

    def losses(name):
        rows = (tmp_path / name / "h.csv").read_text().splitlines()
        header = rows[0].split(",")
        return [[r.split(",")[header.index(k)] for k in ("epoch", "loss", "rotation_accuracy")] for r in rows[1:]]

    assert len(losses("straight")) == 4
    assert losses("killed") == losses("straight"), "a resumed run must continue exactly"


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
    shutil.copytree(ROOT / "benchmarks", project / "benchmarks", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    own = project / "data/metrics/seed0/train/kd.json"
    model = project / "data/models/seed0/kd/model.pt"
    before = own.read_text(), model.read_bytes()
    out = tmp_path / "seeds"
    vanilla, kd = "teacher_seed0@vanilla", "distill_seed0@kd"
    result = run(project, ".venv/bin/python", "-m", "benchmarks.distill_seeds", "--vanilla",
                 vanilla, "--stages", kd, "--seeds", "1", "--out", str(out))
    rows = {r["row"]: r for r in json.loads(result.stdout.splitlines()[-1].removeprefix("RESULT "))["rows"]}
    assert rows[kd]["top1"][0] == json.loads(before[0])["top1"]
    assert rows[kd]["top1"][1] == json.loads((out / "s1/kd.json").read_text())["top1"]
    assert "margin" in rows[kd] and "margin" not in rows[vanilla]
    assert (own.read_text(), model.read_bytes()) == before
    reseeded = torch.load(out / "s1/models/kd/model.pt", weights_only=False)["state_dict"]
    original = torch.load(model, weights_only=False)["state_dict"]
    assert any(not torch.equal(reseeded[k], original[k]) for k in original), "seed 1 = seed 0"
    assert json.loads((out / "seeds.json").read_text())["seeds"] == [0, 1]


@pytest.mark.slow
def test_readme_commands_work_as_typed(dvc_project):
    """The README's commands, typed in a fresh shell (no venv on PATH) in a project whose
    pipeline has run. Runs last: `dvc exp run` leaves its experiment in the workspace.

    Each command starts from the project's own params.yaml: `dvc exp run -S` leaves its
    values in the workspace, and the README's examples are each meant for a project as
    `make run` left it (carried over, the torchrun example's `processes=2` would retrain
    every pretrain run of this every-method project under torchrun in the next example)."""
    project, _, _ = dvc_project
    commands = readme_commands()
    assert any(c.startswith(".venv/bin/dvc") for c in commands)
    own_params = (project / "params.yaml").read_text()
    typed = 0
    for command in commands:
        if any(marker in command for marker in NOT_TYPED_HERE):
            continue
        (project / "params.yaml").write_text(own_params)
        result = subprocess.run(["bash", "-c", command], cwd=project, capture_output=True,
                                text=True, env=ENV)
        assert result.returncode == 0, f"README command failed: {command}\n{result.stderr[-2000:]}"
        typed += 1
    assert typed >= 8


@pytest.mark.slow       # ~60 s on 2 busy cores; tests/test_data_unlabelled.py covers the stages in the fast tier
def test_an_unlabelled_folder_trains_the_ssl_stage_and_the_labelled_set_evaluates_it(tmp_path):
    """data.unlabelled through the real pipeline: check_params, prepare, one pretrain run
    and its evaluation. The run trains on the unlabelled images alone (unlabelled_use:
    replace); evaluation reads the labelled digits."""
    from PIL import Image

    photos = tmp_path / "photos"
    rng = __import__("numpy").random.default_rng(0)
    for i in range(40):                                 # three depths, PNG and JPEG, odd sizes
        folder = photos / ["", "a", "a/b"][i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (9 + i % 5, 11, 3), dtype="uint8")).save(
            folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    params = core_params()
    params["generations"] = {}
    params["data"].update(unlabelled=str(photos), unlabelled_use="replace")
    project = make_project(tmp_path / "project", params)
    assert repro(project, "evaluate_pretrain_seed0@g0") == {
        "check_params", "prepare", *seeded("pretrain@g0", "evaluate_pretrain@g0")}
    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    assert manifest["totals"]["unlabelled"] == 40 and manifest["totals"]["train"] == 1346
    assert json.loads((project / "data/metrics/seed0/train/g0.json").read_text())["train_images"] == 40
    assert "few_shot" in json.loads((project / "data/metrics/seed0/eval/g0.json").read_text())


# What DVC compares: data/metrics/summary.json alone (the report writes it; every stage's
# full record is an output that is not a metric), and the README's `dvc exp show` fits a
# terminal of this width.
SUMMARY = "data/metrics/summary.json"
TERMINAL_COLUMNS = 200


def flat(tree: dict, prefix: str = "") -> list[str]:
    """Dotted names of a nested dict's leaves, as `dvc exp show` names its columns."""
    return [name for key, value in tree.items()
            for name in (flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"])]


def test_dvc_metrics_are_the_summary_alone(one_of_each_project):
    """`dvc metrics show` and `dvc exp show` read the summary alone: per run its linear,
    k-NN, few-shot means, training minutes (and test top-1 for teachers and distillation),
    each the mean of the records' values over the seeds (one seed here)."""
    project, _, _ = one_of_each_project
    params = tiny_params(every_method=False)
    summary = json.loads((project / SUMMARY).read_text())
    evaluated, supervised = {*params["pretrain"], *params["generations"]}, {*params["teachers"], *params["distill"]}
    assert set(summary) == evaluated | supervised
    shots = [f"shot_{n}" for n in params["evaluate"]["few_shot_shots"]]
    for name, values in summary.items():
        expected = ["linear", "knn", *shots] if name in evaluated else ["top1"]
        assert list(values) == [*expected, "train_min", "n_seeds"] and values["n_seeds"] == 1, (name, values)
        train = json.loads((project / f"data/metrics/seed0/train/{name}.json").read_text())
        assert values["train_min"] == round(train["wall_seconds"] / 60, 2)
        if name in evaluated:
            record = json.loads((project / f"data/metrics/seed0/eval/{name}.json").read_text())
            assert (values["linear"], values["knn"]) == (round(record["linear_base"], 2), round(record["knn_all"], 2))
            assert values["shot_1"] == round(record["few_shot"]["1"]["mean"], 2)
        else:
            assert values["top1"] == round(train["top1"], 2)
    shown = json.loads(run(project, ".venv/bin/dvc", "metrics", "show", "--json").stdout)[""]["data"]
    assert shown == {SUMMARY: {"data": summary}}
    # `dvc exp show`'s columns: the fixed ones, params, dependencies (--json names them),
    # and as metrics exactly the summary's
    table = json.loads(run(project, ".venv/bin/dvc", "exp", "show", "--json").stdout)[0]["data"]
    assert list(table["metrics"]) == [SUMMARY]
    header = run(project, ".venv/bin/dvc", "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    others = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor", *table["deps"],
              *flat(table["params"]["params.yaml"]["data"])}
    assert [column for column in header if column not in others] == flat(summary)
    plain = subprocess.run([".venv/bin/dvc", "exp", "show", "--no-pager"], cwd=project, capture_output=True,
                           text=True, env={**ENV, "COLUMNS": str(TERMINAL_COLUMNS)}).stdout
    print(f"\n`dvc exp show --csv`: {len(header)} columns, {len(flat(summary))} of them metrics; "
          f"`dvc exp show --no-pager` at {TERMINAL_COLUMNS} columns: {max(map(len, plain.splitlines()))} wide")


@pytest.mark.slow
def test_the_readme_exp_show_fits_a_terminal(one_of_each_project):
    """The README's `dvc exp show` command after an experiment, as a user compares it with
    the committed run: in a 200-column terminal every column it prints is whole (no '…'):
    the experiment, its date, the summary values the change moved and the changed param."""
    project, _, _ = one_of_each_project
    shows = {c.split("&&")[-1].strip() for c in readme_commands() if "dvc exp show" in c}
    assert len(shows) == 1, f"the README shows several `dvc exp show` commands: {shows}"
    command = shows.pop()
    (project / ".gitignore").write_text((ROOT / ".gitignore").read_text() + "/.venv\n")
    for git in ("config user.name bowflow-test", "config user.email test@bowflow.invalid",
                "add .gitignore params.yaml dvc.lock data/metrics data/plots", "commit -qm results"):
        run(project, "git", *shlex.split(git))
    lr = tiny_params(every_method=False)["generations"]["g2"]["student"]["lr"]
    ran = run(project, ".venv/bin/dvc", "exp", "run", "-n", "lr-double", "-S", f"generations.g2.student.lr={2 * lr}")
    assert set(re.findall(r"Running stage '([^']+)'", ran.stdout)) >= {"student_seed0@g2", "report"}
    before = json.loads(run(project, "git", "show", f"HEAD:{SUMMARY}").stdout)["g2"]
    after = json.loads((project / SUMMARY).read_text())["g2"]
    moved = [f"g2.{key}" for key in after if after[key] != before[key]]
    assert "g2.knn" in moved or "g2.linear" in moved, (before, after)
    shown = subprocess.run(["bash", "-c", command], cwd=project, capture_output=True, text=True,
                           env={**ENV, "COLUMNS": str(TERMINAL_COLUMNS)})
    assert shown.returncode == 0, shown.stderr
    lines = [line.rstrip() for line in shown.stdout.splitlines()]
    assert "…" not in shown.stdout and max(map(len, lines)) <= TERMINAL_COLUMNS, shown.stdout
    assert lines[1].split() == ["Experiment", "Created", *moved, "generations.g2.student.lr"], shown.stdout
    assert any("[lr-double]" in line for line in lines)
    print(f"\n{command} at {TERMINAL_COLUMNS} columns: {len(lines[1].split())} columns, "
          f"{max(map(len, lines))} characters wide\n{shown.stdout}")
