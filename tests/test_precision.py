"""bf16 autocast (an opt-in compute mode): what must stay float32 stays float32.

These tests pin the numerics each op must keep; they do not show bf16 is free. On the
default digits pipeline a bf16 training differs from the fp32 one of the same seed by
several points (docs/BENCHMARKS.md section 14), so fp32 is the mode of record and bf16
must be named.

Under `torch.autocast("cpu", bfloat16)` (the bf16 compute modes, bowflow.compute) convs
and linear layers run in bf16; CPU autocast leaves softmax / log_softmax in their input's
dtype, so a loss or a soft target computed from bf16 logits without a float32 guard ran in
bf16 (BoWNet's soft cross-entropy did: docs/precision.md). These tests fail if:
- any method's training step runs a softmax, log-softmax, logsumexp or a loss kernel
  (forward or backward) on a bf16 tensor, or returns a loss that is not float32;
- the trainer calls a method's hooks (EMA teachers, queues, centres) inside the autocast
  region, or training in bf16 leaves any parameter or buffer in bf16 (or any dtype below float32);
- BoW codes or the BoW loss change under autocast;
- the evaluate stage's features are not float32, or its metrics change, under autocast.
"""

import json

import pytest
import torch
from test_method_contract import CONTRACT_CASES, build, data
from torch.utils._python_dispatch import TorchDispatchMode

from bowflow import bow, evaluation
from bowflow.models import Normalizer, pooled_features, save_model
from bowflow.networks import build_backbone
from bowflow.roles.base import get_method
from bowflow.train import autocast_context, train

# aten ops that must never see a bf16 tensor inside a training step (overload packet names)
SENSITIVE = {
    "_softmax",
    "_log_softmax",
    "_softmax_backward_data",
    "_log_softmax_backward_data",
    "logsumexp",
    "nll_loss_forward",
    "nll_loss_backward",
    "nll_loss2d_forward",
    "xlogy",
    "kl_div",
    "mse_loss",
    "mse_loss_backward",
    "smooth_l1_loss",
    "binary_cross_entropy_with_logits",
    "cosine_embedding_loss",
    "huber_loss",
}
# random_init does not train: its loss is 0 * features (no gradient), in the features' dtype.
LOSS_DTYPE_EXEMPT = {"random_init"}
CPU = torch.device("cpu")


class Bf16Ops(TorchDispatchMode):
    """Records the name of every aten op that reads or writes a bf16 tensor."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = torch.utils._pytree.tree_leaves((args, kwargs, out))
        if any(torch.is_tensor(t) and t.dtype == torch.bfloat16 for t in tensors):
            self.names.add(func.overloadpacket.__name__)
        return out


# every method in the full tier, the contract's one method in the fast tier
@pytest.mark.parametrize("name", CONTRACT_CASES)
def test_training_step_keeps_losses_and_softmax_targets_in_float32(name):
    images, labels = data()
    method, _ = build(name, images, labels)
    method.train()
    index = torch.arange(16)
    recorder = Bf16Ops()
    with recorder:
        with autocast_context(CPU, bf16=True):
            loss, _ = method.training_step(images[index], index, torch.Generator().manual_seed(0))
        if loss.requires_grad:
            loss.backward()
    assert "convolution" in recorder.names  # the step did run under bf16 autocast
    assert not recorder.names & SENSITIVE, f"{name}: in bf16: {sorted(recorder.names & SENSITIVE)}"
    if name not in LOSS_DTYPE_EXEMPT:
        assert loss.dtype == torch.float32, f"{name}: loss is {loss.dtype}"


def test_bow_loss_under_autocast_equals_the_float32_loss():
    """Same bf16 logits (a bf16 head's output): the loss and its gradient under autocast are
    those of float32 log-softmax (before the guard they were bf16's, ~1e-2 away)."""
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(32, 64, generator=gen) * 3).to(torch.bfloat16)  # [B, K]
    targets = bow.bow_targets(torch.randint(0, 64, (32, 16), generator=gen), 64)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    with autocast_context(CPU, bf16=True):
        under = bow.soft_cross_entropy(a, targets)
    plain = -(targets * torch.log_softmax(b.float(), dim=1)).sum(1).mean()
    under.backward()
    plain.backward()
    assert under.dtype == torch.float32
    assert torch.equal(under, plain)
    assert torch.equal(a.grad, b.grad)


def test_bow_codes_under_autocast_equal_the_float32_codes():
    """Words 1e-3 apart: a bf16 product (8-bit mantissa) cannot tell them apart."""
    gen = torch.Generator().manual_seed(0)
    words = torch.randn(1, 32, generator=gen) + 1e-3 * torch.randn(64, 32, generator=gen)  # [K, C]
    maps = words[torch.randint(0, 64, (4 * 36,), generator=gen)].T.reshape(32, 4, 6, 6)
    maps = maps.permute(1, 0, 2, 3) + 1e-4 * torch.randn(4, 32, 6, 6, generator=gen)  # [B, C, h, w]
    expected = bow.nearest_words(maps, words)
    with autocast_context(CPU, bf16=True):
        got = bow.nearest_words(maps, words)
        unguarded = bow.nearest_words.__wrapped__(maps, words)
    assert torch.equal(got, expected)
    assert not torch.equal(unguarded, expected)  # what the guard prevents


@pytest.mark.parametrize("name", ["byol", "moco", "dino", "obow", "bownet"])
def test_hooks_run_outside_autocast_and_state_stays_float32(name, tmp_path):
    """EMA teachers, queues, centres, running distances: updated in float32 by hooks the
    trainer calls outside the autocast region; nothing of the state ends up bf16."""
    images, labels = data()
    method, params = build(name, images, labels, epochs=1)
    seen = []
    for hook in ("before_optimizer_step", "after_step"):
        original = getattr(method, hook)

        def wrapped(*args, _original=original, _hook=hook):
            seen.append((_hook, torch.is_autocast_enabled("cpu")))
            return _original(*args)

        setattr(method, hook, wrapped)
    train(
        method,
        images,
        params,
        seed=0,
        checkpoint_path=tmp_path / "ck.pt",
        run_id="bf16",
        bf16=True,
        channels_last=True,
        show_progress=False,
    )
    assert seen and not any(on for _, on in seen), seen
    state = method.state_dict()
    dtypes = {k: v.dtype for k, v in state.items() if v.is_floating_point()}
    # float32, or float64 where a method keeps a scalar that way (BYOL's momentum tau)
    low = {k: d for k, d in dtypes.items() if d not in (torch.float32, torch.float64)}
    assert not low, low
    assert torch.float32 in dtypes.values()


def test_full_precision_features_ignore_an_ambient_autocast():
    torch.manual_seed(0)
    backbone = build_backbone("convnet", 8).eval()
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    normalizer = Normalizer.fit(images)
    expected = pooled_features(backbone, normalizer, images, "last", 16, CPU)
    with autocast_context(CPU, bf16=True):
        with evaluation.full_precision():
            got = pooled_features(backbone, normalizer, images, "last", 16, CPU)
        unguarded = pooled_features(backbone, normalizer, images, "last", 16, CPU)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert not torch.equal(unguarded, expected)  # what the guard prevents


def test_evaluate_stage_scores_float32_features_under_autocast(tmp_path, monkeypatch):
    """The evaluate stage inside a bf16 autocast region (and with a bf16 compute mode set)
    writes the same metrics as without, and records float32 features."""
    from stages import evaluate, prepare

    prepared = tmp_path / "prepared"
    prepare.main(["--out", str(prepared), "--seed", "0", "--source", "digits", "--image_size", "8"])
    torch.manual_seed(0)
    backbone = build_backbone("convnet", 8)
    params = get_method("random_init").Params(method="random_init", arch="convnet", width=8)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    model = tmp_path / "m" / "model.pt"
    save_model(model, backbone, Normalizer.fit(images), params, 8, extra={"name": "m"})
    argv = [
        "--prepared",
        str(prepared),
        "--model",
        str(model),
        "--seed",
        "0",
        "--device",
        "cpu",
        "--linear_epochs",
        "2",
        "--few_shot_shots",
        "1",
        "5",
        "--few_shot_episodes",
        "20",
    ]
    evaluate.main(argv + ["--out", str(tmp_path / "fp32.json")])
    monkeypatch.setenv("BOWFLOW_COMPUTE", "bf16-channels-last")
    with autocast_context(CPU, bf16=True):
        evaluate.main(argv + ["--out", str(tmp_path / "bf16.json")])
    drop = ("feature_images_per_second", "wall_seconds", "peak_rss_mb")  # timings
    fp32, bf16 = (json.loads((tmp_path / f).read_text()) for f in ("fp32.json", "bf16.json"))
    assert bf16["feature_dtype"] == "float32"
    assert {k: v for k, v in bf16.items() if k not in drop} == {k: v for k, v in fp32.items() if k not in drop}


@pytest.mark.slow
def test_bench_precision_smoke():
    """The benchmark trains the same BoWNet in each mode per seed and reports the paired
    differences; the bf16 mode really ran under bf16 and was scored on float32 features."""
    from benchmark_cli import benchmark_result

    result = benchmark_result("bench_precision", "--smoke", "--modes", "default", "bf16-channels-last+bf16-softmax")
    rows = {r["mode"]: r for r in result["rows"]}
    assert rows["default"]["compute"]["bf16"] is False
    assert rows["bf16-channels-last+bf16-softmax"]["compute"]["bf16"] is True
    assert {r["feature_dtype"] for r in rows.values()} == {"float32"}
    knn = result["summary"]["bf16-channels-last+bf16-softmax"]["knn"]
    assert knn["diff_mean"] == pytest.approx(
        rows["bf16-channels-last+bf16-softmax"]["knn"] - rows["default"]["knn"], abs=1e-3
    )
