"""Backbones: a registry of architectures with named feature stages.

Every backbone maps images `[B, 3, H, W]` to a list of feature maps, one per stage
(`stage1`, `stage2`, ... at decreasing resolution). Methods read any stage by name: the
BoW vocabulary is built on a middle stage, evaluation pools the last one. Add an
architecture by writing a builder and decorating it with `@register("name")`.

Architectures
- `convnet`: a plain 3-stage VGG-style net (two 3x3 conv-BN-ReLU per stage, max-pool
  between stages); `width` = channels of stage 1, doubled per stage. The fast CPU choice.
- `resnet`: CIFAR-style ResNet with basic blocks (3x3 stem, no stem pooling); `depth`
  18 or 34; `width` = channels of stage 1 (64 for the standard ResNet-18), 4 stages.
- `wrn`: Wide ResNet WRN-d-k (Zagoruyko & Komodakis) with pre-activation blocks; `depth`
  = 6n + 4 (28 for WRN-28-4), `width` = widening factor k; 3 stages of 16k/32k/64k channels.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHITECTURES: dict[str, Callable[..., "Backbone"]] = {}


def register(name: str):
    def wrap(builder):
        ARCHITECTURES[name] = builder
        return builder
    return wrap


def build_backbone(arch: str, width: int, depth: int = 0) -> "Backbone":
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch '{arch}': expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](width=width, depth=depth)


class Backbone(nn.Module):
    """A stem followed by named stages; `forward` returns the globally pooled last stage.

    Attributes: `stages` (nn.ModuleList), `channels` (output channels of each stage),
    `reductions` (spatial down-sampling factor of each stage's output w.r.t. the input).
    """

    def __init__(self, stem: nn.Module, stages: list[nn.Module], channels: list[int],
                 reductions: list[int], head_norm: nn.Module | None = None):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.channels = channels
        self.reductions = reductions
        self.head_norm = head_norm if head_norm is not None else nn.Identity()

    @property
    def stage_names(self) -> list[str]:
        return [f"stage{i + 1}" for i in range(len(self.stages))]

    def stage_index(self, layer: str) -> int:
        """'stage2' -> 1; 'last' -> the last stage. Raises a ValueError naming the options."""
        if layer == "last":
            return len(self.stages) - 1
        if layer not in self.stage_names:
            raise ValueError(f"unknown layer '{layer}': expected 'last' or one of {self.stage_names}")
        return self.stage_names.index(layer)

    def feature_maps(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """x [B, 3, H, W] -> maps [B, C_i, H / r_i, W / r_i] for stages 0..upto (default all)."""
        last = len(self.stages) - 1 if upto is None else upto
        maps = []
        h = self.stem(x)
        for i, stage in enumerate(self.stages[: last + 1]):
            h = stage(h)
            maps.append(self.head_norm(h) if i == len(self.stages) - 1 else h)
        return maps

    def feature_map(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """x [B, 3, H, W] -> the map of one stage [B, C, h, w] (computes no later stage)."""
        return self.feature_maps(x, upto=self.stage_index(layer))[-1]

    def pooled(self, x: torch.Tensor, layer: str = "last") -> torch.Tensor:
        """x [B, 3, H, W] -> globally average-pooled features [B, C] of `layer`."""
        return self.feature_map(x, layer).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_maps(x)[-1].mean(dim=(2, 3))

    @property
    def out_channels(self) -> int:
        return self.channels[-1]


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


@register("convnet")
def convnet(width: int = 32, depth: int = 0) -> Backbone:
    """3 stages at full, 1/2 and 1/4 resolution with width, 2x, 4x channels."""
    widths = [width, 2 * width, 4 * width]
    stages = [nn.Sequential(conv_bn_relu(3, widths[0]), conv_bn_relu(widths[0], widths[0]))]
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        stages.append(nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(c_in, c_out),
                                    conv_bn_relu(c_out, c_out)))
    return Backbone(nn.Identity(), stages, widths, [1, 2, 4])


class BasicBlock(nn.Module):
    """Post-activation ResNet basic block: two 3x3 convs, identity or 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


@register("resnet")
def resnet(width: int = 64, depth: int = 18) -> Backbone:
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}
    if depth not in blocks:
        raise ValueError(f"resnet depth must be one of {sorted(blocks)}, got {depth}")
    widths = [width, 2 * width, 4 * width, 8 * width]
    stem = conv_bn_relu(3, width)
    stages, c_in = [], width
    for i, (n, c_out) in enumerate(zip(blocks[depth], widths)):
        layers = [BasicBlock(c_in if j == 0 else c_out, c_out, 2 if (i > 0 and j == 0) else 1)
                  for j in range(n)]
        stages.append(nn.Sequential(*layers))
        c_in = c_out
    return Backbone(stem, stages, widths, [1, 2, 4, 8])


class PreActBlock(nn.Module):
    """Wide-ResNet pre-activation block: BN-ReLU-conv3x3, BN-ReLU-conv3x3, + shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and c_in == c_out else nn.Conv2d(
            c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + (x if self.shortcut is None else self.shortcut(pre))


@register("wrn")
def wide_resnet(width: int = 4, depth: int = 28) -> Backbone:
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"wrn depth must be 6n + 4 (e.g. 16, 22, 28), got {depth}")
    n = (depth - 4) // 6
    widths = [16 * width, 32 * width, 64 * width]
    stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    stages, c_in = [], 16
    for i, c_out in enumerate(widths):
        stages.append(nn.Sequential(*[PreActBlock(c_in if j == 0 else c_out, c_out,
                                                  2 if (i > 0 and j == 0) else 1)
                                      for j in range(n)]))
        c_in = c_out
    # Pre-activation nets end un-normalised: the final BN-ReLU belongs to the last stage's
    # output so that pooled features and BoW maps of the last stage are activated.
    head_norm = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True))
    return Backbone(stem, stages, widths, [1, 2, 4], head_norm=head_norm)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
