"""The method contract: every registered method, the same three checks.

1. A few epochs train with finite losses and statistics.
2. Killed in the middle of an epoch, a run resumed from its last checkpoint ends with the
   same weights, buffers (EMA networks, queues, centres...) and history as a run that was
   never interrupted: bit for bit.
3. What the method exports is a model file that the evaluate stage loads and scores.
4. Two processes under torchrun (gloo, CPU) at global batch 16 end one epoch with the
   weights and buffers of one process at batch 16, within `DDP_TOLERANCE` (float64: float
   sums in another order, BatchNorm statistics and the gradient all-reduce), and the same
   history.

Tiers: the fast tier (`make test`) runs checks 1-3 on one method, the one the
pipeline trains first (params.yaml's `pretrain.g0`, RotNet), which every generation starts
from; the checks on every other method are marked slow and run in `make test-all`.

A method that needs inputs a stage would give it (BoWNet: cached BoW codes; distillation
methods: a frozen teacher) gets them from `STAGE_INPUTS`; every other method trains on
images (and labels) alone.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from bowflow.frozen_teacher import Teacher
from bowflow.models import Normalizer, load_classifier, load_model, save_model
from bowflow.networks import build_backbone
from bowflow.roles.base import available_methods, get_method
from bowflow.scaffold import ROOT
from bowflow.sections import load_yaml
from bowflow.train import train
from stages import distill, evaluate, prepare

IMAGE_SIZE = 16
NUM_CLASSES = 4


def random_teacher() -> Teacher:
    """A frozen convnet (width 6, wider than the width-4 students) with a 4-class head."""
    torch.manual_seed(2)
    images, _ = data()
    return Teacher(build_backbone("convnet", 6), Normalizer.fit(images), torch.nn.Linear(24, NUM_CLASSES))


def stage_inputs(name: str, n: int) -> dict:
    """What the stage that trains the method gives it besides the images, by its role's
    typed Inputs (bowflow/roles/): a BoW student's codes, a distiller's teacher."""
    stage = get_method(name).stage
    if stage == "student":  # parent is read only with init: parent; the contract trains from scratch
        return {
            "codes": torch.randint(0, 8, (n, 16), generator=torch.Generator().manual_seed(1)),
            "num_words": 8,
            "parent": {},
        }
    if stage == "distill":
        return {"teacher": random_teacher()}
    return {}


class Killed(Exception):
    """Stands for SIGKILL in the middle of an epoch: nothing after it is saved."""


def data(n: int = 48):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % NUM_CLASSES
    return images, labels


def build(name: str, images, labels, epochs: int = 2):
    cls = get_method(name)
    arch, width, depth = ("vit_p2", 16, 2) if cls.token_backbone else ("convnet", 4, 0)  # MAE: a ViT
    params = cls.Params(
        method=name,
        arch=arch,
        width=width,
        depth=depth,
        epochs=epochs,
        batch_size=16,
        lr=0.03,
        warmup_epochs=0.5,
        collapse_std=0.0,
    )
    params.validate()
    torch.manual_seed(0)
    context = {
        "normalizer": Normalizer.fit(images),
        "image_size": IMAGE_SIZE,
        "labels": labels,
        "num_classes": NUM_CLASSES,
        **stage_inputs(name, len(images)),
    }
    return cls(params, build_backbone(arch, width, depth), cls.inputs(**context)), params


def run(method, params, images, checkpoint):
    return train(
        method,
        images,
        params,
        seed=0,
        checkpoint_path=checkpoint,
        run_id="contract",
        show_progress=False,
        run_name="contract",
    )


def untimed(history):
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")} for row in history]


METHODS = available_methods()
# The fast tier's method: the one the pipeline's first training stage runs (see the docstring).
FAST_METHOD = load_yaml(ROOT / "params.yaml")["pretrain"]["g0"]["method"]
CONTRACT_CASES = [pytest.param(name, marks=() if name == FAST_METHOD else pytest.mark.slow) for name in METHODS]


def test_every_method_module_registers_a_method():
    assert {"rotnet", "bownet"} <= set(METHODS) and FAST_METHOD in METHODS
    for name in METHODS:  # every method takes a role whose stage's inputs the contract gives
        assert get_method(name).stage in ("pretrain", "student", "teacher", "distill"), name


@pytest.mark.parametrize("name", CONTRACT_CASES)
def test_trains_with_finite_loss(name, tmp_path):
    images, labels = data()
    method, params = build(name, images, labels)
    history = run(method, params, images, tmp_path / "ck.pt")
    assert len(history) == params.epochs
    for row in history:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    assert all(torch.isfinite(p).all() for p in method.state_dict().values() if p.is_floating_point())


@pytest.mark.parametrize("name", CONTRACT_CASES)
def test_resumes_bit_for_bit_after_a_kill(name, tmp_path):
    images, labels = data()
    straight, params = build(name, images, labels, epochs=3)
    straight_history = run(straight, params, images, tmp_path / "straight.pt")

    killed, _ = build(name, images, labels, epochs=3)
    steps_per_epoch = len(images) // params.batch_size
    original_after_step = killed.after_step

    def after_step(step, total_steps):
        original_after_step(step, total_steps)
        if step == steps_per_epoch + 1:  # one step into the second epoch
            raise Killed

    killed.after_step = after_step
    with pytest.raises(Killed):
        run(killed, params, images, tmp_path / "killed.pt")

    resumed, _ = build(name, images, labels, epochs=3)
    steps_taken = []
    original_views = resumed.views

    def views(*args):
        steps_taken.append(1)
        return original_views(*args)

    resumed.views = views
    resumed_history = run(resumed, params, images, tmp_path / "killed.pt")
    # The checkpoint of epoch 1 was loaded: only epochs 2 and 3 ran. (A resume that silently
    # retrained from scratch would end with the same weights, so the next check alone
    # cannot tell it from a real resume.)
    assert len(steps_taken) == 2 * steps_per_epoch, f"{name}: resumed run did not start at epoch 2"
    assert untimed(resumed_history) == untimed(straight_history)
    expected, got = straight.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{name}: {key} differs after resuming"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare.main(["--out", str(out), "--seed", "0", "--source", "digits", "--image_size", str(IMAGE_SIZE)])
    return out


@pytest.mark.parametrize("name", CONTRACT_CASES)
def test_export_loads_in_the_evaluate_stage(name, prepared, tmp_path):
    images, labels = data()
    method, params = build(name, images, labels, epochs=1)
    run(method, params, images, tmp_path / "ck.pt")
    model = tmp_path / name / "model.pt"
    save_model(
        model,
        method.export_backbone(),
        Normalizer.fit(images),
        params,
        IMAGE_SIZE,
        extra={"name": name, "parent": "", "generation": 0, "method_label": method.label, **method.export_extra()},
    )
    out = tmp_path / "eval.json"
    evaluate.main(
        [
            "--prepared",
            str(prepared),
            "--model",
            str(model),
            "--out",
            str(out),
            "--seed",
            "0",
            "--device",
            "cpu",
            "--linear_epochs",
            "2",
            "--few_shot_shots",
            "1",
            "--few_shot_episodes",
            "10",
        ]
    )
    metrics = json.loads(out.read_text())
    assert metrics["method"] == name and 0 <= metrics["linear_base"] <= 100
    assert 0 <= metrics["few_shot"]["1"]["mean"] <= 100
    record = load_model(model)[2]
    if "classifier" in record:  # supervised and distillation runs: the test top-1 too
        assert load_classifier(record).out_features == NUM_CLASSES
        assert 0 <= distill.test_top1(prepared, torch.device("cpu"))(model)["top1"] <= 100


# ------------------------------------------------------------------ two processes (torchrun)
# Two processes add the same numbers in another order (BatchNorm sums, the gradient
# all-reduce). In float32 that rounding is ~1e-7 after one epoch, but a method can amplify it
# (a ReLU gate flips in Barlow Twins' projector, AT's gamma = 1000 grows it 10-20x a step),
# so the check runs in float64 (`ddp_worker.py --float64`), where the same math agrees to
# ~1e-13 for most methods. SimCLR and CRD keep their loss in float32 (`losses.float32`,
# against bf16 autocast): ~1e-7 there. The bound is 10x that, relative to each tensor's
# largest entry; a method whose batch-spanning math were not gathered differs by 1e-3 or more.
# The float32 stage itself under torchrun is tests/test_torchrun.py's.
DDP_TOLERANCE = 1e-6
WORKER = ROOT / "tests" / "ddp_worker.py"


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Every method trained one epoch in one process and in two (one torchrun for all)."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    worker = [str(WORKER), "--float64", "--methods", ",".join(METHODS)]
    one = [sys.executable, *worker, "--out", str(out / "one")]
    two = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        *worker,
        "--out",
        str(out / "two"),
    ]
    for command in (one, two):
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return out


def compare_runs(one: dict, two: dict, tolerance: float = DDP_TOLERANCE) -> list[str]:
    """-> what differs between two runs' state_dicts beyond `tolerance` (relative)."""
    problems = []
    assert one["state"].keys() == two["state"].keys()
    for key, expected in one["state"].items():
        got = two["state"][key]
        if not expected.is_floating_point():
            if not torch.equal(expected, got):
                problems.append(f"{key} differs")
            continue
        scale = max(expected.abs().max().item(), 1e-3)
        error = (expected.double() - got.double()).abs().max().item() / scale
        if not error <= tolerance:
            problems.append(f"{key}: relative error {error:.2e}")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_two_processes_follow_one_process(name, ddp_runs):
    load = lambda run: torch.load(ddp_runs / run / f"{name}.pt", weights_only=False)  # noqa: E731
    one, two = load("one"), load("two")
    assert compare_runs(one, two) == []
    # The loss is the global batch's in both (per-process losses averaged); other statistics
    # may be per-process batch statistics, averaged.
    for a, b in zip(one["history"], two["history"]):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4, abs_tol=1e-4), (a, b)
