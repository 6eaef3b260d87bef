"""VICReg: its loss against a step-by-step restatement of the authors' formula, the loss at
known points, its views, its params, and one step of training."""

import math

import pytest
import torch

from bowflow.methods.vicreg import off_diagonal, vicreg_loss
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.roles.base import get_method

Method = get_method("vicreg")


def reference(z1, z2, sim=25.0, std=25.0, cov=1.0, eps=1e-4) -> float:
    """The authors' main_vicreg.py loss, restated with explicit loops in float64."""
    z1, z2 = z1.double(), z2.double()
    b, d = z1.shape
    invariance = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(b) for j in range(d)) / (b * d)
    variance, covariance = 0.0, 0.0
    for z in (z1, z2):
        mean = [sum(z[i, j] for i in range(b)) / b for j in range(d)]
        centred = [[z[i, j] - mean[j] for j in range(d)] for i in range(b)]
        for j in range(d):
            var = sum(centred[i][j] ** 2 for i in range(b)) / (b - 1)
            variance += max(0.0, 1 - math.sqrt(var + eps)) / d / 2
        for j in range(d):
            for k in range(d):
                if j != k:
                    c = sum(centred[i][j] * centred[i][k] for i in range(b)) / (b - 1)
                    covariance += c**2 / d
    return float(sim * invariance + std * variance + cov * covariance)


@pytest.mark.parametrize("seed,scale", [(0, 1.0), (1, 0.1), (2, 3.0)])
def test_loss_matches_the_reference(seed, scale):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(6, 5, generator=g) * scale
    z2 = z1 + 0.3 * torch.randn(6, 5, generator=g)
    loss, terms = vicreg_loss(z1, z2)
    assert loss.item() == pytest.approx(reference(z1, z2), rel=1e-5)
    weighted = 25 * terms["invariance"] + 25 * terms["variance"] + terms["covariance"]
    assert weighted.item() == pytest.approx(loss.item(), rel=1e-6)


def test_off_diagonal_takes_every_entry_but_the_diagonal():
    m = torch.arange(16.0).view(4, 4)
    assert sorted(off_diagonal(m).tolist()) == sorted(
        v for i, row in enumerate(m.tolist()) for j, v in enumerate(row) if i != j
    )


def test_known_points():
    # identical views, decorrelated dimensions of std >= 1: every term is 0
    z = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    loss, terms = vicreg_loss(z, z.clone())
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # a collapsed embedding: variance term ~1 (std sqrt(eps)), no covariance, no invariance
    constant = torch.ones(4, 3)
    _, terms = vicreg_loss(constant, constant.clone())
    assert terms["variance"].item() == pytest.approx(1 - math.sqrt(1e-4), abs=1e-6)
    assert terms["covariance"].item() == 0 and terms["invariance"].item() == 0


def test_variance_term_pushes_a_collapsing_embedding_apart():
    z = (0.01 * torch.randn(8, 4, generator=torch.Generator().manual_seed(0))).requires_grad_()
    loss, _ = vicreg_loss(z, z.detach().clone(), sim_coeff=0.0, cov_coeff=0.0)
    loss.backward()
    with torch.no_grad():
        spread = z - 0.1 * z.grad
    assert spread.std(0).mean() > z.std(0).mean()


def build(image_size=16, **overrides):
    images = torch.randint(
        0, 256, (8, 3, image_size, image_size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    params = Method.Params(method="vicreg", width=4, proj_dim=32, **overrides)
    params.validate()
    torch.manual_seed(0)
    method = Method(
        params, build_backbone("convnet", 4), Method.inputs(normalizer=Normalizer.fit(images), image_size=image_size)
    )
    return method, images


def test_views_are_byols_recipe():
    """VICReg takes BYOL's views (the paper does): with the same random numbers, the same views."""
    method, images = build()
    byol_cls = get_method("byol")
    byol = byol_cls(
        byol_cls.Params(method="byol", width=4),
        build_backbone("convnet", 4),
        byol_cls.inputs(normalizer=Normalizer.fit(images), image_size=16),
    )
    from bowflow import views

    for which in (0, 1):
        ours = views.two_view(images, method.params, which, method.size, torch.Generator().manual_seed(5))
        assert torch.equal(ours, byol.view(images, which, torch.Generator().manual_seed(5)))


def test_step_logs_the_three_terms_and_scales_the_loss():
    method, images = build()
    loss, stats = method.training_step(images, torch.arange(8), torch.Generator().manual_seed(1))
    assert {"invariance", "variance", "covariance", "embedding_std"} <= set(stats)
    unscaled = 25 * stats["invariance"] + 25 * stats["variance"] + stats["covariance"]
    assert loss.item() == pytest.approx(0.04 * unscaled.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in method.backbone.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "field,value",
    [
        ("proj_dim", 0),
        ("proj_layers", 1),
        ("sim_coeff", -1.0),
        ("loss_scale", 0.0),
        ("view_size", 1.5),
        ("blur_p", [1.0]),
    ],
)
def test_validate_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        Method.Params(**{field: value}).validate()
