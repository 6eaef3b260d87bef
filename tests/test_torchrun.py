"""A training stage under torchrun (bin/launch N): two gloo processes on the CPU follow the
one-process run, rank 0 alone writes, a killed two-process run resumes from its checkpoint,
`sync_bn: false` leaves BatchNorm per process, and params.yaml's resources.<stage>.processes
reaches the command DVC runs.

Every method's two-process equivalence is the contract test's
(tests/test_method_contract.py::test_two_processes_follow_one_process); this file runs the
real stage command as DVC does.
"""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from bowflow.scaffold import ROOT, make_project, tiny_params, write_params
from tests.test_pipeline_own_projects import KILL_AFTER_CHECKPOINT

sys.path.insert(0, str(ROOT / "workflow"))
from dvcstages import Pipeline  # noqa: E402

ENV = {**os.environ, "BOWFLOW_COMPUTE": "fp32-t2", "PYTHONPATH": str(ROOT)}
LAUNCH = str(ROOT / "bin" / "launch")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun") / "prepared"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.prepare",
            "--out",
            str(out),
            "--seed",
            "0",
            "--source",
            "digits",
            "--image_size",
            "8",
        ],
        cwd=ROOT,
        env=ENV,
        check=True,
        capture_output=True,
    )
    return out


def stage(prepared, out, *launch, epochs=2):
    """The pretrain stage's command for a tiny RotNet run writing under `out`."""
    return [
        *launch,
        "stages.pretrain",
        "--prepared",
        str(prepared),
        "--model",
        str(out / "model.pt"),
        "--metrics",
        str(out / "metrics.json"),
        "--history",
        str(out / "history.csv"),
        "--checkpoints",
        str(out / "checkpoints"),
        "--seed",
        "0",
        "--device",
        "cpu",
        "--method",
        "rotnet",
        "--arch",
        "convnet",
        "--width",
        "8",
        "--epochs",
        str(epochs),
        "--batch_size",
        "32",
        "--padding",
        "1",
    ]


def losses(out):
    rows = [line.split(",") for line in (out / "history.csv").read_text().splitlines()]
    header = rows[0]
    return [(int(r[header.index("epoch")]), float(r[header.index("loss")])) for r in rows[1:]]


# Float sums in another order (BatchNorm statistics, the gradient all-reduce) start at ~1e-7
# (the contract test's 3 steps) and grow over the 42 steps of these runs at lr 0.1 to ~2e-3
# of a tensor's largest weight (measured); the loss curve stays equal to its 5 printed digits.
WEIGHT_TOLERANCE = 1e-2


def largest_difference(one, two) -> float:
    """The largest difference between two runs' model weights, relative to each tensor's
    largest entry in `one`."""
    a = torch.load(one / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(two / "model.pt", weights_only=False)["state_dict"]
    return max(
        (a[k] - b[k]).abs().max().item() / max(a[k].abs().max().item(), 1e-3) for k in a if a[k].is_floating_point()
    )


def assert_same_run(one, two):
    """Same loss curve (to rounding) and the same weights within WEIGHT_TOLERANCE."""
    for (e1, l1), (e2, l2) in zip(losses(one), losses(two), strict=True):
        assert e1 == e2 and abs(l1 - l2) <= 1e-4, (losses(one), losses(two))
    assert largest_difference(one, two) <= WEIGHT_TOLERANCE


@pytest.fixture(scope="module")
def straight(prepared, tmp_path_factory):
    """The one-process run both tests compare with."""
    out = tmp_path_factory.mktemp("straight")
    subprocess.run(stage(prepared, out, LAUNCH, "1", "-m"), cwd=ROOT, env=ENV, check=True, capture_output=True)
    return out


@pytest.mark.slow
def test_two_processes_follow_one_and_rank_0_writes(prepared, straight, tmp_path):
    two = tmp_path / "two"
    done = subprocess.run(stage(prepared, two, LAUNCH, "2", "-m"), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stderr.count("training rotnet on 2 process(es)") == 2  # both ranks trained
    assert done.stderr.count("epoch=2 ") == 1  # rank 0 alone logs
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["compute"]["threads"] == max(1, os.cpu_count() // 2)
    assert sorted(p.name for p in two.iterdir()) == ["checkpoints", "history.csv", "metrics.json", "model.pt"]
    assert not list((two / "checkpoints").iterdir()), "the checkpoint is removed once the model is written"
    assert_same_run(straight, two)


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_from_its_checkpoint(prepared, straight, tmp_path):
    script = tmp_path / "kill_after_checkpoint.py"
    script.write_text(KILL_AFTER_CHECKPOINT)
    killed = tmp_path / "killed"
    done = subprocess.run(
        stage(prepared, killed, LAUNCH, "2", str(script)),
        cwd=ROOT,
        env={**ENV, "KILL_AFTER_EPOCH": "1"},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0, "torchrun reports the killed worker"
    assert "SIGKILL" in done.stderr, done.stderr[-3000:]
    checkpoint = killed / "checkpoints" / "killed-seed0-rotnet.ckpt"  # <run>-seed<S>-<method>
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 1
    assert not (killed / "model.pt").exists()

    resumed = subprocess.run(
        stage(prepared, killed, LAUNCH, "2", "-m"), cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert resumed.stderr.count("resumed from checkpoint") == 2, "every rank resumes from the same file"
    assert "epoch=1 " not in resumed.stderr and "epoch=2 " in resumed.stderr
    assert_same_run(straight, killed)


@pytest.mark.slow
def test_without_sync_bn_each_process_normalises_its_own_rows(prepared, straight, tmp_path):
    """`sync_bn: false`: BatchNorm sees 16 rows per process, not the global 32, so the run
    leaves the one-process one: BN parameters and running statistics end up to ~0.5 of
    their scale apart (measured), against ~2e-3 with sync_bn."""
    own = tmp_path / "own"
    done = subprocess.run(
        [*stage(prepared, own, LAUNCH, "2", "-m"), "--no-sync_bn"], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert torch.load(own / "model.pt", weights_only=False)["params"]["sync_bn"] is False
    assert largest_difference(straight, own) > 10 * WEIGHT_TOLERANCE


def test_resources_processes_reach_the_training_commands(tmp_path):
    params = tiny_params(every_method=False)
    params["resources"]["pretrain"]["processes"] = 2
    params["resources"]["distill"]["processes"] = 4
    project = make_project(tmp_path / "p", params)
    write_params(project, params)
    commands = {job.rule: job.cmd for job in Pipeline(project).jobs}
    assert shlex.split(commands["pretrain_seed0__g0"])[:4] == ["bin/launch", "2", "-m", "stages.pretrain"]
    assert shlex.split(commands["student_seed0__g1"])[:4] == ["bin/launch", "1", "-m", "stages.student"]
    distill = [cmd for rule, cmd in commands.items() if rule.startswith("distill_seed0__")]
    assert distill and all(shlex.split(c)[:2] == ["bin/launch", "4"] for c in distill)
    kind = {rule: re.sub(r"_seed\d+$", "", rule.split("__")[0]) for rule in commands}
    others = [c for rule, c in commands.items() if kind[rule] in ("prepare", "vocab", "evaluate_pretrain", "report")]
    assert len(others) >= 4 and all(shlex.split(c)[:2] == ["bin/python", "-m"] for c in others)
