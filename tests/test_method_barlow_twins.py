"""Barlow Twins specifics: views, blur/solarize, lambda and loss scale, LARS groups, export."""

import pytest
import torch

from bowflow.methods.barlow_twins import barlow_twins_loss
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.optim import build_optimizer
from bowflow.roles.base import get_method

Method = get_method("barlow_twins")


def build(image_size=16, **overrides):
    images = torch.randint(
        0, 256, (8, 3, image_size, image_size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    params = Method.Params(method="barlow_twins", width=4, proj_dim=64, **overrides)
    params.validate()
    torch.manual_seed(0)
    method = Method(
        params,
        build_backbone("convnet", 4),
        Method.inputs(**{"normalizer": Normalizer.fit(images), "image_size": image_size}),
    )
    return method, images


def test_views_have_the_declared_size_with_a_floor():
    method, images = build(image_size=16, view_size=0.5)
    view = method.make_view(images, 0, torch.Generator().manual_seed(0))
    assert view.shape == (8, 3, 8, 8) and 0 <= view.min() and view.max() <= 1
    small, images = build(image_size=8, view_size=0.25)
    assert small.make_view(images, 1, torch.Generator().manual_seed(0)).shape[-1] == 4


def test_loss_scale_default_follows_the_projector_size():
    assert Method.Params(proj_dim=1024).effective_loss_scale == 1 / 1024
    assert Method.Params(proj_dim=1024, loss_scale=1.0).effective_loss_scale == 1.0


def test_step_is_the_scaled_barlow_loss_and_trains_backbone_and_projector():
    method, images = build()
    loss, stats = method.training_step(images, torch.arange(8), torch.Generator().manual_seed(3))
    p = method.params
    assert {"loss", "on_diag", "off_diag", "embedding_std"} <= set(stats)
    expected = (stats["on_diag"] + p.lambda_offdiag * stats["off_diag"]) * p.effective_loss_scale
    assert torch.allclose(loss, expected, rtol=1e-5)
    loss.backward()
    assert method.backbone.stages[0][0][0].weight.grad.abs().sum() > 0
    assert method.projector[0].weight.grad.abs().sum() > 0
    again, _ = build()
    same, _ = again.training_step(images, torch.arange(8), torch.Generator().manual_seed(3))
    assert torch.equal(same, loss.detach())  # randomness from the generator
    assert method.export_backbone() is method.backbone


def test_identical_views_leave_only_the_redundancy_term():
    z = torch.randn(32, 16)
    loss, terms = barlow_twins_loss(z, z, 0.1)
    assert terms["on_diag"] < 1e-3 and loss == pytest.approx(0.1 * terms["off_diag"].item(), rel=1e-2)


def test_lars_gives_biases_and_norms_the_small_lr_and_no_trust_ratio():
    method, _ = build(optimizer="lars", bias_lr_scale=0.024)
    groups = method.optimizer_groups()
    assert groups[1]["lars_exclude"] and groups[1]["lr_scale"] == 0.024
    assert all(p.ndim == 1 for p in groups[1]["params"])
    optimizer = build_optimizer("lars", groups, 0.2, 0.9)
    assert type(optimizer).__name__ == "LARS"
    sgd, _ = build()
    assert "lr_scale" not in sgd.optimizer_groups()[1]


def test_bf16_autocast_step_is_finite():
    method, images = build()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = method.training_step(images, torch.arange(8), torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(stats["embedding_std"])


@pytest.mark.parametrize(
    "field,value",
    [
        ("proj_dim", 0),
        ("proj_layers", 1),
        ("view_size", 1.5),
        ("crop_scale_min", 0.0),
        ("blur_p", [1.0, 1.2]),
        ("jitter", [0.4, 0.4, 0.2, 0.7]),
        ("lambda_offdiag", -1.0),
    ],
)
def test_validate_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        Method.Params(**{field: value}).validate()


@pytest.mark.parametrize("size", [32, 224])
def test_views_have_byols_strength_blur_included(size):
    """Barlow Twins uses BYOL's view recipe, and both scale the blur sigma (0.1-2.0 px at
    224) to the view: with the same random numbers the two methods' views are identical,
    so neither row gets a stronger blur than the other."""
    method, images = build(image_size=size)
    byol_params = get_method("byol").Params(method="byol", width=4)
    BYOL = get_method("byol")
    byol = BYOL(
        byol_params, build_backbone("convnet", 4), BYOL.inputs(normalizer=Normalizer.fit(images), image_size=size)
    )
    for which in (0, 1):
        ours = method.make_view(images, which, torch.Generator().manual_seed(5))
        theirs = byol.view(images, which, torch.Generator().manual_seed(5))
        assert torch.equal(ours, theirs)
    # and the blur itself is the scaled one: visible at 224 px, not at 32
    method, images = build(image_size=size, blur_p=[1.0, 0.0], solarize_p=[0.0, 0.0])
    blurred = method.make_view(images, 0, torch.Generator().manual_seed(5))
    sharp = method.make_view(images, 1, torch.Generator().manual_seed(5))
    change = (blurred - sharp).abs().mean().item()
    assert change > 1e-3 if size == 224 else change < 1e-2
