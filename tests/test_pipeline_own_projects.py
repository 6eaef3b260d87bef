"""The real pipeline on projects each test builds for itself: each seed its own branch,
params.yaml and dvc.yaml disagreeing on the seeds, bad params stopping before any work, a
killed training resuming from its checkpoint, and an unlabelled folder through the SSL stage.

A file of its own so that `make test-all`'s two workers (pytest-xdist, `--dist loadfile`) run
it beside test_pipeline.py's every-method project; helpers come from there."""

import json
import shlex
import signal
import subprocess
import sys

import pytest
import torch
from dvc.repo import Repo
from test_pipeline import ENV, repro, run, seeded, stale_stages, untimed

from bowflow.cli import render_args
from bowflow.scaffold import core_params, make_project, tiny_params, write_params, write_yaml

# The RotNet -> BoWNet chain's stages of one seed (core_params()).
CORE_STAGES = (
    "pretrain@g0",
    "evaluate_pretrain@g0",
    "vocab@g1",
    "student@g1",
    "evaluate_student@g1",
    "vocab@g2",
    "student@g2",
    "evaluate_student@g2",
)


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
    run(project, *check)  # the seeds agree: valid
    write_yaml(params | {"seeds": [0, 1, 2]}, project / "params.yaml")  # dvc.yaml left as it was
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
    flags = shlex.split(render_args(params))  # as DVC renders them (lists: one flag, items)

    def args(name):
        return [
            "--prepared",
            "data/prepared",
            "--model",
            str(tmp_path / name / "model.pt"),
            "--metrics",
            str(tmp_path / name / "m.json"),
            "--history",
            str(tmp_path / name / "h.csv"),
            "--checkpoints",
            str(tmp_path / name / "ckpt"),
            "--seed",
            "0",
            "--device",
            "cpu",
            *flags,
        ]

    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_CHECKPOINT, "stages.pretrain", *args("killed")],
        cwd=project,
        env={**ENV, "KILL_AFTER_EPOCH": "2"},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoint = tmp_path / "killed" / "ckpt" / "killed-seed0-rotnet.ckpt"  # <run>-seed<S>-<method>
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 2
    assert not (tmp_path / "killed" / "model.pt").exists()
    assert not (tmp_path / "killed" / "h.csv").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "stages.pretrain", *args("killed")], cwd=project, env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "at epoch 2/4" in resumed.stderr and "resumed from checkpoint" in resumed.stderr
    assert "epoch=1 " not in resumed.stderr and "epoch=3 " in resumed.stderr, "epochs 1-2 are not redone"
    assert not checkpoint.exists(), "the checkpoint is removed once the model is written"
    subprocess.run(
        [sys.executable, "-m", "stages.pretrain", *args("straight")],
        cwd=project,
        env=ENV,
        capture_output=True,
        check=True,
    )

    def losses(name):
        rows = (tmp_path / name / "h.csv").read_text().splitlines()
        header = rows[0].split(",")
        return [[r.split(",")[header.index(k)] for k in ("epoch", "loss", "rotation_accuracy")] for r in rows[1:]]

    assert len(losses("straight")) == 4
    assert losses("killed") == losses("straight"), "a resumed run must continue exactly"


@pytest.mark.slow  # ~60 s on 2 busy cores; tests/test_data_unlabelled.py covers the stages in the fast tier
def test_an_unlabelled_folder_trains_the_ssl_stage_and_the_labelled_set_evaluates_it(tmp_path):
    """data.unlabelled through the real pipeline: check_params, prepare, one pretrain run
    and its evaluation. The run trains on the unlabelled images alone (unlabelled_use:
    replace); evaluation reads the labelled digits."""
    from PIL import Image

    photos = tmp_path / "photos"
    rng = __import__("numpy").random.default_rng(0)
    for i in range(40):  # three depths, PNG and JPEG, odd sizes
        folder = photos / ["", "a", "a/b"][i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (9 + i % 5, 11, 3), dtype="uint8")).save(
            folder / f"{i}.{'png' if i % 2 else 'jpg'}"
        )
    params = core_params()
    params["generations"] = {}
    params["data"].update(unlabelled=str(photos), unlabelled_use="replace")
    project = make_project(tmp_path / "project", params)
    assert repro(project, "evaluate_pretrain_seed0@g0") == {
        "check_params",
        "prepare",
        *seeded("pretrain@g0", "evaluate_pretrain@g0"),
    }
    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    assert manifest["totals"]["unlabelled"] == 40 and manifest["totals"]["train"] == 1346
    assert json.loads((project / "data/metrics/seed0/train/g0.json").read_text())["train_images"] == 40
    assert "few_shot" in json.loads((project / "data/metrics/seed0/eval/g0.json").read_text())
