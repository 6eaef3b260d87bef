"""Convolutional backbones: VGG-style nets, CIFAR ResNets and Wide ResNets as `Backbone`s.

Architectures sized by a run's `width` and `depth` (`SIZED_CONVNETS`):
- `convnet`: a plain 3-stage VGG-style net (two 3x3 conv-BN-ReLU per stage, max-pool
  between stages); `width` = channels of stage 1, doubled per stage. The fast CPU choice.
- `resnet`: CIFAR-style ResNet with basic blocks (3x3 stem, no stem pooling); `depth`
  18 or 34; `width` = channels of stage 1 (64 for the standard ResNet-18), 4 stages.
- `wrn`: Wide ResNet WRN-d-k (Zagoruyko & Komodakis) with pre-activation blocks; `depth`
  = 6n + 4 (28 for WRN-28-4), `width` = widening factor k; 3 stages of 16k/32k/64k channels.

Named architectures of the CIFAR distillation benchmark (CRD / RepDistiller, the IFACD
table), fixed in size (`NAMED_CONVNETS`: name -> own width, own depth, builder; params give
width and depth 0 or these values, bowflow/networks.py checks). Sizes with a 100-class
linear classifier, as published:
- `resnet20`, `resnet32`, `resnet56`, `resnet110` (0.28M, 0.47M, 0.86M, 1.73M): CIFAR
  ResNet-d, 3x3 stem of 16 channels, 3 stages of 16/32/64 channels with (d - 2) / 6 basic
  blocks each; own width 16 (stage-1 channels), depth d.
- `resnet8x4`, `resnet32x4` (1.23M, 7.43M): the same with a 32-channel stem and 4x wider
  stages 64/128/256; own width 64, depth 8 or 32.
- `wrn_40_2`, `wrn_16_2`, `wrn_40_1` (2.25M, 0.70M, 0.57M): `wrn` with depth d and
  widening factor k (own width k, depth d).
- `vgg8`, `vgg13` (3.96M, 9.46M): VGG with BN, five blocks of 64/128/256/512/512 channels
  with one (vgg8) or two (vgg13) 3x3 conv-BN-ReLU each. Block 0 (64 channels, full size)
  is the stem, blocks 1-4 are `stage1`..`stage4`: RepDistiller's `is_feat` list starts at
  block 0 and its distillation losses skip it (`feat[1:-1]`), as they skip a ResNet's
  stem, so stage i is the benchmark's feat[i] in every family. A 2x2 max-pool starts
  stages 1-3 and, as in RepDistiller on 32x32 inputs, none precedes stage 4 (stage maps at
  1/2, 1/4, 1/8, 1/8 resolution); own width 64, depth 8 or 13.

Every map is [B, C_i, H / r_i, W / r_i]; no initialiser is called (torch's defaults, in
module construction order, so a seeded build is reproducible).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch.nn as nn
import torch.nn.functional as F

from bowflow.backbone import Backbone


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def plain_backbone(blocks: list[list[int]], pools: list[bool], stem: Sequence[int] = ()) -> Backbone:
    """VGG-style net: a stem of one 3x3 conv-BN-ReLU per entry of `stem` (its output
    channels; none: an identity stem), then stage i: a 2x2 max-pool (where `pools[i]`) and
    one 3x3 conv-BN-ReLU per entry of `blocks[i]`."""
    stem_layers, c_in = [], 3
    for c_out in stem:
        stem_layers.append(conv_bn_relu(c_in, c_out))
        c_in = c_out
    stages, channels, reductions, reduction = [], [], [], 1
    for widths, pool in zip(blocks, pools):
        layers: list[nn.Module] = [nn.MaxPool2d(2)] if pool else []
        for c_out in widths:
            layers.append(conv_bn_relu(c_in, c_out))
            c_in = c_out
        reduction *= 2 if pool else 1
        stages.append(nn.Sequential(*layers))
        channels.append(c_in)
        reductions.append(reduction)
    return Backbone(nn.Sequential(*stem_layers) if stem_layers else nn.Identity(), stages, channels, reductions)


def convnet(width: int = 32, depth: int = 0) -> Backbone:
    """3 stages at full, 1/2 and 1/4 resolution with width, 2x, 4x channels."""
    return plain_backbone([[c, c] for c in (width, 2 * width, 4 * width)], [False, True, True])


def vgg(convs_per_stage: int) -> Backbone:
    """RepDistiller's CIFAR VGG with BN (vgg8: 1, vgg13: 2 convs per block), classifier-free:
    its block 0 (64 channels, full size) as the stem, blocks 1-4 as stages of
    128/256/512/512 channels at 1/2, 1/4, 1/8, 1/8 of the input size."""
    return plain_backbone(
        [[c] * convs_per_stage for c in (128, 256, 512, 512)], [True, True, True, False], stem=[64] * convs_per_stage
    )


class BasicBlock(nn.Module):
    """Post-activation ResNet basic block: two 3x3 convs, identity or 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


def basic_resnet(stem: int, widths: list[int], blocks: list[int]) -> Backbone:
    """3x3 conv-BN-ReLU stem of `stem` channels (no pooling), then stage i of `blocks[i]`
    basic blocks with `widths[i]` channels; every stage after the first halves the size."""
    stem_layers = conv_bn_relu(3, stem)  # made first: seeded inits stay as they were
    stages, c_in = [], stem
    for i, (n, c_out) in enumerate(zip(blocks, widths)):
        layers = [BasicBlock(c_in if j == 0 else c_out, c_out, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
        stages.append(nn.Sequential(*layers))
        c_in = c_out
    return Backbone(stem_layers, stages, widths, [2**i for i in range(len(widths))])


def resnet(width: int = 64, depth: int = 18) -> Backbone:
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}
    if depth not in blocks:
        raise ValueError(f"resnet depth must be one of {sorted(blocks)}, got {depth}")
    return basic_resnet(width, [width, 2 * width, 4 * width, 8 * width], blocks[depth])


def cifar_resnet(depth: int, stem: int, widths: list[int]) -> Backbone:
    """He et al.'s CIFAR ResNet-depth: 3 stages of (depth - 2) / 6 basic blocks (2 convs
    each, + stem conv + classifier = depth layers); 1x1 conv-BN shortcuts where the shape
    changes (as RepDistiller)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR resnet depth must be 6n + 2 (e.g. 20, 32, 56), got {depth}")
    return basic_resnet(stem, widths, [(depth - 2) // 6] * 3)


class PreActBlock(nn.Module):
    """Wide-ResNet pre-activation block: BN-ReLU-conv3x3, BN-ReLU-conv3x3, + shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + (x if self.shortcut is None else self.shortcut(pre))


def wide_resnet(width: int = 4, depth: int = 28) -> Backbone:
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"wrn depth must be 6n + 4 (e.g. 16, 22, 28), got {depth}")
    n = (depth - 4) // 6
    widths = [16 * width, 32 * width, 64 * width]
    stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    stages, c_in = [], 16
    for i, c_out in enumerate(widths):
        stages.append(
            nn.Sequential(
                *[PreActBlock(c_in if j == 0 else c_out, c_out, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            )
        )
        c_in = c_out
    # Pre-activation nets end un-normalised: the final BN-ReLU belongs to the last stage's
    # output so that pooled features and BoW maps of the last stage are activated.
    head_norm = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True))
    return Backbone(stem, stages, widths, [1, 2, 4], head_norm=head_norm)


# Sized by params: name -> builder(width, depth).
SIZED_CONVNETS: dict[str, Callable[..., Backbone]] = {"convnet": convnet, "resnet": resnet, "wrn": wide_resnet}

# The distillation benchmark's architectures by RepDistiller's names (CRD's benchmark, which the IFACD paper's
# tables follow; https://github.com/HobbitLong/RepDistiller): name -> (own width, own depth, builder()).
NAMED_CONVNETS: dict[str, tuple[int, int, Callable[[], Backbone]]] = {
    **{f"resnet{d}": (16, d, partial(cifar_resnet, d, 16, [16, 32, 64])) for d in (20, 32, 56, 110)},
    **{f"resnet{d}x4": (64, d, partial(cifar_resnet, d, 32, [64, 128, 256])) for d in (8, 32)},
    **{f"wrn_{d}_{k}": (k, d, partial(wide_resnet, k, d)) for d, k in ((40, 2), (16, 2), (40, 1))},
    "vgg8": (64, 8, partial(vgg, 1)),
    "vgg13": (64, 13, partial(vgg, 2)),
}
