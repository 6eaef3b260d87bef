"""SimCLR specifics: views, the loss the step computes, its monitors, export."""

import pytest
import torch

from bowflow.methods import simclr
from bowflow.methods.simclr import nt_xent
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.roles.base import get_method

Method = get_method("simclr")


def build(image_size=16, **overrides):
    images = torch.randint(
        0, 256, (8, 3, image_size, image_size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    params = Method.Params(method="simclr", width=4, **overrides)
    params.validate()
    torch.manual_seed(0)
    method = Method(
        params,
        build_backbone("convnet", 4),
        Method.inputs(**{"normalizer": Normalizer.fit(images), "image_size": image_size}),
    )
    return method, images


def test_views_have_the_declared_size_with_a_floor():
    method, images = build(crop_size=0.5)
    view = method.make_view(images, torch.Generator().manual_seed(0))
    assert view.shape == (8, 3, 8, 8) and 0 <= view.min() and view.max() <= 1
    small, images = build(image_size=8, crop_size=0.25)
    assert small.make_view(images, torch.Generator().manual_seed(0)).shape[-1] == 4


def test_projector_shape_and_export():
    method, _ = build(proj_hidden=32, proj_dim=16)
    assert method.projector(torch.randn(4, method.backbone.out_channels)).shape == (4, 16)
    assert method.export_backbone() is method.backbone


def test_step_is_nt_xent_at_the_configured_temperature(monkeypatch):
    seen = {}
    real = nt_xent

    def spy(z1, z2, temperature):
        seen["temperature"], seen["shapes"] = temperature, (z1.shape, z2.shape)
        seen["value"] = real(z1, z2, temperature)
        return seen["value"]

    monkeypatch.setattr(simclr, "nt_xent", spy)
    method, images = build(temperature=0.2)
    loss, stats = method.training_step(images, torch.arange(8), torch.Generator().manual_seed(1))
    assert seen["temperature"] == 0.2 and seen["shapes"] == ((8, 128), (8, 128))
    assert torch.equal(loss, seen["value"])
    assert {"loss", "embedding_std", "positive_accuracy", "positive_cos", "negative_cos"} <= set(stats)
    assert 0 <= stats["positive_accuracy"] <= 100 and -1 <= stats["negative_cos"] <= 1
    loss.backward()
    assert method.backbone.stages[0][0][0].weight.grad.abs().sum() > 0
    again, _ = build(temperature=0.2)
    same, _ = again.training_step(images, torch.arange(8), torch.Generator().manual_seed(1))
    assert torch.equal(same, loss.detach())  # randomness from the generator


def test_positive_accuracy_is_100_when_the_views_match():
    method, images = build(crop_scale_min=1.0, color_strength=0.0, gray_p=0.0)
    method.eval()  # BN with running stats: identical inputs, identical outputs
    method.make_view = lambda images, generator: images.float() / 255
    _, stats = method.training_step(images, torch.arange(8), torch.Generator().manual_seed(0))
    assert stats["positive_accuracy"] == 100 and stats["positive_cos"] == pytest.approx(1.0, abs=1e-5)


def test_bf16_autocast_step_is_finite():
    method, images = build()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = method.training_step(images, torch.arange(8), torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(stats["embedding_std"])


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", 0.0),
        ("proj_dim", 0),
        ("crop_size", 2.0),
        ("crop_scale_min", 0.0),
        ("color_strength", 3.0),
        ("gray_p", 1.5),
    ],
)
def test_validate_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        Method.Params(**{field: value}).validate()


def test_nt_xent_shares_of_two_processes_average_to_the_global_loss(monkeypatch):
    """Under torchrun each process scores its own 2b anchors against the 2B gathered
    embeddings; the mean of the per-process losses is the one-process loss of the batch."""
    from bowflow.distributed import World

    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator)
    whole = nt_xent(z1, z2, 0.5)
    shares = []
    for rank in range(2):
        rows = slice(4 * rank, 4 * rank + 4)
        pieces = iter([z1, z2])  # gathered in the order nt_xent asks

        def gather(x, rank=rank, pieces=pieces):
            full = torch.nn.functional.normalize(next(pieces), dim=1).clone()
            full[4 * rank : 4 * rank + 4] = x  # this process's own (differentiable) rows
            return full

        monkeypatch.setattr(simclr, "gather", gather)
        monkeypatch.setattr(simclr, "world", lambda rank=rank: World(rank, 2))
        shares.append(nt_xent(z1[rows], z2[rows], 0.5))
    torch.testing.assert_close((shares[0] + shares[1]) / 2, whole)
    assert not torch.allclose(shares[0], whole)  # each share alone is not the loss
