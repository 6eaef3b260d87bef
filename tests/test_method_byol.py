"""BYOL (the method the peer benchmark uses): its target network, heads, loss, and learning.

The reference (Grill et al. 2020, https://arxiv.org/abs/2006.07733): online = backbone -> projector ->
predictor; target = EMA of backbone + projector, updated after each optimizer step with
tau(k) = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2; loss = sum over the two view orders of
||p/|p| - z'/|z'|||^2 = 2 - 2 cos(p, z'), with no gradient through the target.
"""

import math

import pytest
import test_method_learning as learning
import torch
import torch.nn as nn
from test_method_learning import control, task  # noqa: F401  (fixtures of the learning test)

from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.roles.base import get_method

WIDTH, HIDDEN, OUT, BATCH = 4, 24, 12, 8


def build(**overrides):
    cls = get_method("byol")
    params = cls.Params(width=WIDTH, hidden_dim=HIDDEN, out_dim=OUT, batch_size=BATCH, **overrides)
    params.validate()
    torch.manual_seed(0)
    images = torch.randint(0, 256, (BATCH, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    method = cls(
        params, build_backbone("convnet", WIDTH), cls.inputs(**{"normalizer": Normalizer.fit(images), "image_size": 16})
    )
    return method.train(), images


def linears(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_projector_and_predictor_shapes():
    method, images = build()
    features = 4 * WIDTH  # the convnet's last stage
    assert linears(method.projector) == [(features, HIDDEN), (HIDDEN, OUT)]
    assert linears(method.predictor) == [(OUT, HIDDEN), (HIDDEN, OUT)]
    z = method.projector(method.backbone(method.normalizer.normalize(images.float() / 255)))
    assert z.shape == (BATCH, OUT) and method.predictor(z).shape == (BATCH, OUT)
    # The target network is backbone + projector only (no predictor): BYOL's asymmetry.
    assert linears(method.target_projector) == linears(method.projector)
    assert not any(name.startswith("target_predictor") for name, _ in method.named_modules())
    assert method.export_backbone() is method.backbone  # the online network is evaluated


def test_target_starts_as_a_copy_and_gets_no_gradient():
    method, images = build()
    pairs = ((method.backbone, method.target_backbone), (method.projector, method.target_projector))
    for online, target in pairs:
        for (name, p), t in zip(online.named_parameters(), target.parameters()):
            assert torch.equal(p, t) and t is not p and not t.requires_grad, name
    loss, _ = method.training_step(images, torch.arange(BATCH), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(t.grad is None for t in method.target_backbone.parameters())
    assert all(t.grad is None for t in method.target_projector.parameters())
    assert all(p.grad is not None for p in method.predictor.parameters())
    assert any(p.grad.abs().sum() > 0 for p in method.backbone.parameters())


def test_loss_is_the_symmetrised_normalised_mse():
    """The step's loss against the paper's formula, from the same two views."""
    method, images = build()
    loss, stats = method.training_step(images, torch.arange(BATCH), torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws: the same two views
    v1, v2 = method.view(images, 0, g), method.view(images, 1, g)
    x = method.normalizer.normalize(torch.cat([v1, v2]))
    p = method.predictor(method.projector(method.backbone(x)))
    with torch.no_grad():
        z = method.target_projector(method.target_backbone(x))

    def mse(a, b):  # || a/|a| - b/|b| ||^2, batch mean
        return ((a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)) ** 2).sum(1).mean()

    expected = mse(p[:BATCH], z[BATCH:]) + mse(p[BATCH:], z[:BATCH])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    value = loss.item()
    assert 0 <= value <= 8
    assert float(stats["target_agreement"]) == pytest.approx(1 - value / 4, abs=1e-6)


def test_loss_is_per_sample_so_processes_need_no_gather():
    """Under torchrun each process runs `step` on its rows and DDP averages: exact only if
    the loss is a mean of per-sample terms. With BN on running statistics (eval), the mean of
    the two halves' losses is the whole batch's."""
    method, images = build()
    index = torch.arange(BATCH)
    views = method.views(images, index, torch.Generator().manual_seed(0))
    assert {k: tuple(v.shape[:1]) for k, v in views.items()} == {"view1": (BATCH,), "view2": (BATCH,)}
    method.eval()
    with torch.no_grad():
        whole = method.step(views, index)[0]
        halves = [
            method.step({k: v[rows] for k, v in views.items()}, index[rows])[0]
            for rows in (slice(0, BATCH // 2), slice(BATCH // 2, BATCH))
        ]
    assert torch.allclose((halves[0] + halves[1]) / 2, whole, rtol=1e-5, atol=1e-6)


def test_views_follow_the_asymmetric_recipe():
    """View 1 is always blurred and never solarized; view 2 solarizes with p 0.2."""
    method, images = build(jitter_p=0.0, gray_p=0.0, crop_scale_min=1.0, blur_sigma=[50.0, 50.0])
    bright = torch.full_like(images, 255)  # solarize turns white black
    g = torch.Generator().manual_seed(0)
    many = bright.repeat(16, 1, 1, 1)  # 128 images
    v1, v2 = method.view(many, 0, g), method.view(many, 1, g)
    assert float(v1.min()) > 0.99  # never solarized
    solarized = (v2.mean((1, 2, 3)) < 0.01).float().mean()
    assert 0.1 < float(solarized) < 0.3  # p 0.2 over 128 draws


def test_target_is_the_ema_of_the_online_network_with_the_scheduled_tau():
    method, images = build(momentum_base=0.9)
    with torch.no_grad():  # move the online network away
        for p in list(method.backbone.parameters()) + list(method.projector.parameters()):
            p.add_(torch.randn_like(p))
        method.backbone.stages[0][0][1].running_mean.add_(1.0)
    before = [t.clone() for t in list(method.target_backbone.parameters()) + list(method.target_projector.parameters())]
    online = list(method.backbone.parameters()) + list(method.projector.parameters())
    step, total = 3, 10
    method.after_step(step, total)
    tau = 1 - (1 - 0.9) * (math.cos(math.pi * step / total) + 1) / 2
    assert float(method.tau) == pytest.approx(tau)
    after = list(method.target_backbone.parameters()) + list(method.target_projector.parameters())
    for old, new, o in zip(before, after, online):
        torch.testing.assert_close(new, tau * old + (1 - tau) * o)
    # BN running statistics are copied from the online network, not averaged.
    torch.testing.assert_close(
        method.target_backbone.stages[0][0][1].running_mean, method.backbone.stages[0][0][1].running_mean
    )
    method.after_step(0, total)
    assert float(method.tau) == pytest.approx(0.9)  # tau_base at step 0
    method.after_step(total, total)
    assert float(method.tau) == 1.0  # 1 at the end


def test_tau_is_saved_with_the_method():
    method, _ = build()
    method.after_step(5, 10)
    assert "tau" in method.state_dict() and float(method.state_dict()["tau"]) == float(method.tau)


@pytest.mark.slow
def test_learns_on_the_shapes_task(task, control, tmp_path):  # noqa: F811  (the imported fixtures)
    """Trained with the shared trainer, BYOL's k-NN beats the untrained network's by the
    learning tests' margin (tests/test_method_learning.py: task, recipe and margin)."""
    method, params = learning.build("byol", task)
    learning.fit(method, params, task, tmp_path)
    trained, untrained = learning.knn(method.export_backbone(), task), learning.knn(control, task)
    assert trained >= untrained + learning.KNN_MARGIN, f"k-NN {trained:.1f} vs control {untrained:.1f}"
    assert float(method.tau) == pytest.approx(1.0, abs=1e-3)  # tau reached ~1 by the end
