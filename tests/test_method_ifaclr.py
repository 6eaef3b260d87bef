"""IFACLR (bowflow/methods/ifaclr.py): SupCon over layers against its formula, V = 2 is
SimCLR's NT-Xent, and the method runs on a convnet and on a ViT."""

import math

import pytest
import torch

from bowflow.methods.ifaclr import IFACLR, supcon_loss
from bowflow.methods.simclr import nt_xent
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.roles.base import ImageInputs
from bowflow.vit import VisionTransformer


def supcon_reference(z: torch.Tensor, t: float) -> float:
    """Khosla et al.'s L_out, unlabeled, written as loops in float64: for every anchor i,
    -1/|P(i)| sum_{p in P(i)} log exp(z_i.z_p/t) / sum_{a != i} exp(z_i.z_a/t)."""
    b, v, _ = z.shape
    flat = torch.nn.functional.normalize(z.double(), dim=2).reshape(b * v, -1)
    total = 0.0
    for i in range(b * v):
        denominator = sum(math.exp(flat[i] @ flat[a] / t) for a in range(b * v) if a != i)
        positives = [p for p in range(b * v) if p != i and p // v == i // v]
        total += -sum(math.log(math.exp(flat[i] @ flat[p] / t) / denominator) for p in positives) / len(positives)
    return total / (b * v)


@pytest.mark.parametrize("views", [2, 3, 4])
def test_supcon_matches_its_formula(views):
    z = torch.randn(5, views, 7, generator=torch.Generator().manual_seed(views))
    assert supcon_loss(z, 0.5).item() == pytest.approx(supcon_reference(z, 0.5), rel=1e-5)


def test_two_views_are_nt_xent():
    z = torch.randn(6, 2, 8, generator=torch.Generator().manual_seed(0))
    assert supcon_loss(z, 0.3).item() == pytest.approx(nt_xent(z[:, 0], z[:, 1], 0.3).item(), rel=1e-5)


@pytest.mark.parametrize(
    "backbone",
    [build_backbone("convnet", 4), VisionTransformer(dim=16, depth=3, heads=2, patch=4, grid=2)],
    ids=["convnet", "vit"],
)
def test_a_step_on_both_backbones(backbone):
    images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    params = IFACLR.Params(method="ifaclr", layers=2, proj_hidden=16, proj_dim=8, crop_size=1.0)
    params.validate()
    inputs = ImageInputs(normalizer=Normalizer.fit(images), image_size=8)
    method = IFACLR(params, backbone, inputs)
    loss, stats = method.training_step(images, torch.arange(8), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and set(stats) >= {"loss", "embedding_std", "positive_cos"}
    assert all(p.grad is not None for p in method.rescalers.parameters())
    assert all(p.grad is not None for p in backbone.stages[-2].parameters())  # a positive layer


def test_more_layers_than_the_backbone_has_is_an_error():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    params = IFACLR.Params(method="ifaclr", layers=4)
    with pytest.raises(ValueError, match="layers = 4 but the backbone has 3"):
        IFACLR(params, build_backbone("convnet", 4), ImageInputs(normalizer=Normalizer.fit(images), image_size=8))
