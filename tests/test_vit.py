"""Vision transformer backbones (bowflow/vit.py): sizes against the published ones, the
stage-map contract, position embeddings on other grids."""

import pytest
import torch
import torch.nn as nn

from bowflow.networks import build_backbone, count_parameters
from bowflow.vit import VIT_SIZES, VisionTransformer

# timm's vit_tiny_patch16_224 / vit_small_patch16_224 (the DeiT sizes, with a 1000-class head)
PUBLISHED_224 = {"vit_tiny": 5_717_416, "vit_small": 22_050_664}


@pytest.mark.parametrize("name", sorted(PUBLISHED_224))
def test_parameter_count_matches_the_published_model_at_its_patch_grid(name):
    dim, depth, heads, _, _ = VIT_SIZES[name]
    at_224 = VisionTransformer(dim, depth, heads, patch=16, grid=14)  # 224 px / 16
    head = nn.Linear(dim, 1000)
    assert count_parameters(at_224) + count_parameters(head) == PUBLISHED_224[name]
    # ours differs only by the patch embedding (4 x 4 instead of 16 x 16 pixels) and the
    # position table (8 x 8 + 1 tokens instead of 14 x 14 + 1)
    ours = build_backbone(name, 0)
    expected = count_parameters(at_224) - (16 * 16 - 4 * 4) * 3 * dim - (14 * 14 - 8 * 8) * dim
    assert count_parameters(ours) == expected


def test_blocks_are_stages_with_token_maps():
    torch.manual_seed(0)
    vit = VisionTransformer(dim=32, depth=3, heads=2, patch=4, grid=4)
    x = torch.randn(2, 3, 16, 16)
    maps = vit.feature_maps(x)
    assert vit.stage_names == ["stage1", "stage2", "stage3"]
    assert [m.shape for m in maps] == [torch.Size([2, 32, 4, 4])] * 3
    assert vit.reductions == [4, 4, 4] and vit.channels == [32, 32, 32]
    raw, pooled = vit.distill_features(x)
    assert torch.allclose(raw[0], maps[0]) and torch.allclose(raw[1], maps[1])
    assert not torch.allclose(raw[2], maps[2])  # the last map is final-normed
    assert torch.allclose(pooled, vit(x)) and pooled.shape == (2, 32)
    assert torch.allclose(vit.pooled(x), vit(x))
    # a middle layer: that block's CLS token, computing no later block
    assert vit.pooled(x, "stage2").shape == (2, 32)
    assert len(vit.feature_maps(x, upto=1)) == 2


def test_a_patch_token_map_is_its_patch_token():
    """Map position (i, j) holds the token of patch (i, j): changing one patch's pixels
    changes its own position in block 1's map most."""
    torch.manual_seed(0)
    vit = VisionTransformer(dim=16, depth=1, heads=2, patch=4, grid=4).eval()
    x = torch.randn(1, 3, 16, 16)
    y = x.clone()
    y[..., 4:8, 8:12] += 3.0  # patch row 1, column 2
    change = (vit.feature_maps(y)[0] - vit.feature_maps(x)[0]).abs().sum(1)[0]  # [4, 4]
    assert change.argmax().item() == 1 * 4 + 2


def test_other_image_sizes_get_resized_position_embeddings():
    vit = build_backbone("vit_tiny_p2", 0)
    assert vit.feature_maps(torch.randn(1, 3, 16, 16))[-1].shape == (1, 192, 8, 8)  # its own grid
    assert vit(torch.randn(2, 3, 12, 12)).shape == (2, 192)  # 6 x 6 tokens
    with pytest.raises(ValueError, match="not a multiple of the patch size 2"):
        vit(torch.randn(1, 3, 15, 15))


def test_sizes_are_validated_like_other_named_architectures():
    with pytest.raises(ValueError, match="width must be 0 .* or 192"):
        build_backbone("vit_tiny", 128)
    assert build_backbone("vit_small", 384, 12).out_channels == 384


def test_it_trains():
    """The backbone learns a trivial task (which colour channel is brighter) from chance."""
    torch.manual_seed(0)
    vit = VisionTransformer(dim=16, depth=1, heads=2, patch=4, grid=2)
    head = nn.Linear(16, 2)
    opt = torch.optim.AdamW([*vit.parameters(), *head.parameters()], lr=1e-2)
    x = torch.rand(32, 3, 8, 8)
    y = torch.arange(32) % 2
    x[torch.arange(32), y] += 1.0  # class 0: red brighter, class 1: green
    assert (head(vit(x)).argmax(1) == y).float().mean() < 0.9
    for _ in range(30):
        loss = nn.functional.cross_entropy(head(vit(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (head(vit(x)).argmax(1) == y).float().mean() > 0.9


def test_parameter_counts_in_the_module_docstring_are_the_built_models():
    """bowflow/vit.py's docstring states each registered size's parameter count (to 0.01M):
    they are what build_backbone makes, so the text cannot drift from the code."""
    import re

    from bowflow import vit

    stated = dict(re.findall(r"- `(vit_\w+)`: D \d+.*?(\d+\.\d+)M parameters", vit.__doc__, re.S))
    assert set(stated) == {"vit_tiny", "vit_small"}
    for name, millions in stated.items():
        width = vit.VIT_SIZES[name][0]
        built = sum(p.numel() for p in build_backbone(name, width, 12).parameters())
        assert f"{built / 1e6:.2f}" == millions, name
