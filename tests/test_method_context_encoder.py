"""Context encoder (bowflow/methods/context_encoder.py): the hole, its weights and the loss
against the authors' weighting; the encoder never sees the blanked pixels."""

import pytest
import torch

from bowflow.methods.context_encoder import ContextEncoder, context_loss, hole_box, hole_weights
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.roles.base import ImageInputs
from bowflow.vit import VisionTransformer


def test_hole_weights_are_ten_on_the_border_one_inside_zero_outside():
    assert hole_box(16, 0.5) == (4, 12)
    w = hole_weights(16, 0.5, overlap=1)
    assert w[4, 4] == 10 and w[4, 8] == 10 and w[11, 11] == 10  # border of the square
    assert w[5, 5] == 1 and w[10, 10] == 1  # inside
    assert w[3, 8] == 0 and w[12, 8] == 0 and w.sum() == 6 * 6 * 1 + (64 - 36) * 10


def test_loss_is_their_weighted_mean_over_the_predicted_square():
    """pathak22/context-encoder train.lua: mean over the predicted centre (3 channels) of
    wtl2Matrix * (fake - real)^2, the matrix 10 on the overlap border and 1 inside."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    w = hole_weights(16, 0.5, overlap=1)
    centre = (slice(None), slice(None), slice(4, 12), slice(4, 12))
    expected = (w[4:12, 4:12] * (pred[centre] - target[centre]) ** 2).mean()
    assert context_loss(pred, target, w).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(
    "backbone",
    [build_backbone("convnet", 4), VisionTransformer(dim=16, depth=2, heads=2, patch=2, grid=8)],
    ids=["convnet", "vit"],
)
def test_the_encoder_sees_the_blank_and_the_step_learns_something(backbone):
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    params = ContextEncoder.Params(method="context_encoder", decoder_width=16)
    params.validate()
    method = ContextEncoder(params, backbone, ImageInputs(normalizer=Normalizer.fit(images), image_size=16))
    seen = []
    handle = backbone.stem.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    views = method.views(images, torch.arange(6), torch.Generator().manual_seed(0))
    loss, _ = method.step(views, torch.arange(6))
    handle.remove()
    assert (seen[0][..., 5:11, 5:11] == 0).all() and (seen[0][..., 4, 4:12] != 0).any()
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in method.decoder.parameters())
