"""MAE (bowflow/methods/mae.py): patch order, sin-cos table and loss against the authors'
formulas; the encoder sees only visible patches; a step on a ViT; a convnet is refused."""

import math

import numpy as np
import pytest
import torch

from bowflow.methods.mae import MAE, mae_loss, patchify, sincos_2d
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.roles.base import ImageInputs
from bowflow.vit import VisionTransformer


def test_patchify_is_row_major_patches_with_pixels_then_channels():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    patches = patchify(x, 2)  # [2, 4, 12]
    # patch (row 0, col 1) of image 1: pixels (0..1, 2..3), channel innermost
    expected = torch.stack([x[1, :, i, j] for i in (0, 1) for j in (2, 3)]).reshape(-1)
    assert torch.equal(patches[1, 1], expected)


def sincos_reference(dim, grid):
    """facebookresearch/mae util/pos_embed.py, restated with numpy."""

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    emb = np.concatenate([one(dim // 2, gw), one(dim // 2, gh)], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def test_sincos_matches_the_authors_table():
    assert np.allclose(sincos_2d(16, 4).numpy(), sincos_reference(16, 4), atol=1e-6)


def test_loss_is_the_mean_over_hidden_patches_of_the_patch_mse():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)
    hidden = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.float32)
    raw = [((pred[b, n] - target[b, n]) ** 2).mean().item() for b in range(2) for n in range(5) if hidden[b, n]]
    assert mae_loss(pred, target, hidden, norm_pix=False).item() == pytest.approx(sum(raw) / 4, rel=1e-6)
    normed = []
    for b in range(2):
        for n in range(5):
            if hidden[b, n]:
                t = target[b, n]
                t = (t - t.mean()) / math.sqrt(t.var().item() + 1e-6)
                normed.append(((pred[b, n] - t) ** 2).mean().item())
    assert mae_loss(pred, target, hidden).item() == pytest.approx(sum(normed) / 4, rel=1e-5)


def make(backbone, size=8, **kw):
    images = torch.randint(0, 256, (6, 3, size, size), dtype=torch.uint8)
    params = MAE.Params(method="mae", arch="vit_tiny", decoder_dim=16, decoder_heads=2, decoder_depth=1, **kw)
    params.validate()
    return MAE(params, backbone, ImageInputs(normalizer=Normalizer.fit(images), image_size=size)), images


def test_the_encoder_sees_only_the_visible_patches():
    method, images = make(VisionTransformer(dim=16, depth=2, heads=2, patch=2, grid=4))
    views = method.views(images, torch.arange(6), torch.Generator().manual_seed(0))
    assert views["keep"].shape == (6, 4)  # 16 patches, 25% visible
    seen = []
    handle = method.backbone.stages[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    loss, _ = method.step(views, torch.arange(6))
    handle.remove()
    assert seen == [(6, 1 + 4, 16)]  # CLS + 4 visible tokens
    loss.backward()
    assert torch.isfinite(loss) and method.backbone.pos_embed.grad is not None


def test_a_convnet_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="mae needs a ViT backbone"):
        make(build_backbone("convnet", 4))
