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

Named architectures of the CIFAR distillation benchmark (CRD / RepDistiller, the IFACD
table), fixed in size: `width` and `depth` must be 0 (the architecture's own) or equal to
its own values (`OWN_SIZES`), anything else is a ValueError. Sizes with a 100-class
`Classifier`, as published:
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

Families of architectures named `<family>/<model>`: `timm/<model>` is any timm model
(`timm/resnet18`, `timm/convnext_atto`, `timm/vit_tiny_patch16_224`; `bowflow.timm_backbones`),
fixed in size by its name (width and depth 0), built without downloading weights.

Distillation reads `Backbone.distill_features`: the stage maps as the benchmark's
`forward(is_feat=True)` returns them (feat[1:-1]) and the pooled feature (feat[-1]); for
the pre-activation `wrn` family the last map is the raw last block output, before the
final BN-ReLU that the pooled feature goes through.

`Classifier` puts a linear layer on a backbone's pooled last stage and returns, in one
pass, what distillation losses read: stage maps, pooled features and logits.
"""
from __future__ import annotations

from functools import partial
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


# family -> builder(model name, width, depth): archs spelt '<family>/<model>' ('timm/resnet18')
FAMILIES: dict[str, Callable[..., "Backbone"]] = {}


def register_family(family: str):
    """Register a builder `(model, width, depth) -> Backbone` for archs '<family>/<model>'."""
    def wrap(builder):
        FAMILIES[family] = builder
        return builder
    return wrap


def family_of(arch: str) -> str:
    """'timm/resnet18' -> 'timm'; '' for an arch of ARCHITECTURES ('resnet')."""
    family, slash, model = arch.partition("/")
    return family if slash and model and family in FAMILIES else ""


def check_arch(arch: str) -> None:
    """ValueError naming `arch` unless it is registered or spelt '<family>/<model>' (the
    family's builder checks the model name when it builds)."""
    if arch not in ARCHITECTURES and not family_of(arch):
        families = ", ".join(f"'{f}/<model>'" for f in sorted(FAMILIES))
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)} or {families}, got '{arch}'")


def build_backbone(arch: str, width: int, depth: int = 0) -> "Backbone":
    family = family_of(arch)
    if family:
        check_size(arch, width, depth)
        return FAMILIES[family](arch.partition("/")[2], width=width, depth=depth)
    if arch not in ARCHITECTURES:
        families = ", ".join(f"'{f}/<model>'" for f in sorted(FAMILIES))
        raise ValueError(f"unknown arch '{arch}': expected one of {sorted(ARCHITECTURES)} or {families}")
    return ARCHITECTURES[arch](width=width, depth=depth)


OWN_SIZES: dict[str, tuple[int, int]] = {}   # named architecture -> its own (width, depth)


def register_named(name: str, width: int, depth: int, build: Callable[[], "Backbone"]) -> None:
    """Register a fixed-size architecture: `build()` makes it; params give it `width` and
    `depth` 0 (the architecture's own) or its own values, checked by `check_size`."""
    OWN_SIZES[name] = (width, depth)

    def builder(width: int = 0, depth: int = 0) -> Backbone:
        check_size(name, width, depth)
        return build()
    ARCHITECTURES[name] = builder


def check_size(arch: str, width: int, depth: int) -> None:
    """A named architecture takes width/depth 0 or its own values, a family's ('timm/...')
    0: ValueError otherwise. Architectures sized by width/depth (convnet, resnet, wrn) check
    them when built."""
    if family_of(arch):
        for key, value in (("width", width), ("depth", depth)):
            if value:
                raise ValueError(f"{key} must be 0 for arch '{arch}' (its name fixes its size), got {value}")
        return
    if arch not in OWN_SIZES:
        return
    own = dict(zip(("width", "depth"), OWN_SIZES[arch]))
    for key, value in (("width", width), ("depth", depth)):
        if value not in (0, own[key]):
            raise ValueError(f"{key} must be 0 (the architecture's own) or {own[key]} for arch "
                             f"'{arch}' (its own width {own['width']}, depth {own['depth']}), "
                             f"got {value}")


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

    def feature_maps(self, x: torch.Tensor, upto: int | None = None,
                     final_norm: bool = True) -> list[torch.Tensor]:
        """x [B, 3, H, W] -> maps [B, C_i, H / r_i, W / r_i] for stages 0..upto (default all).
        The last stage's map goes through `head_norm` (the final BN-ReLU of pre-activation
        nets) unless final_norm=False."""
        last = len(self.stages) - 1 if upto is None else upto
        maps = []
        h = self.stem(x)
        for i, stage in enumerate(self.stages[: last + 1]):
            h = stage(h)
            maps.append(self.head_norm(h) if final_norm and i == len(self.stages) - 1 else h)
        return maps

    def distill_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x [B, 3, H, W] -> (maps, pooled): what RepDistiller's `forward(x, is_feat=True)`
        gives its distillation losses, without the stem output: maps = feat[1:-1], one
        [B, C_i, H / r_i, W / r_i] per stage, each the raw output of its stage (no
        `head_norm`: the benchmark's WRN returns its last block before the final BN-ReLU);
        pooled = feat[-1] [B, C], the global average of head_norm(last map), the feature
        the classifier reads."""
        maps = self.feature_maps(x, final_norm=False)
        return maps, self.head_norm(maps[-1]).mean(dim=(2, 3))

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


def plain_backbone(blocks: list[list[int]], pools: list[bool], stem: list[int] = ()) -> Backbone:
    """VGG-style net: a stem of one 3x3 conv-BN-ReLU per entry of `stem` (its output
    channels; none: an identity stem), then stage i: a 2x2 max-pool (where `pools[i]`) and
    one 3x3 conv-BN-ReLU per entry of `blocks[i]`."""
    stem_layers, c_in = [], 3
    for c_out in stem:
        stem_layers.append(conv_bn_relu(c_in, c_out))
        c_in = c_out
    stages, channels, reductions, reduction = [], [], [], 1
    for widths, pool in zip(blocks, pools):
        layers = [nn.MaxPool2d(2)] if pool else []
        for c_out in widths:
            layers.append(conv_bn_relu(c_in, c_out))
            c_in = c_out
        reduction *= 2 if pool else 1
        stages.append(nn.Sequential(*layers))
        channels.append(c_in)
        reductions.append(reduction)
    return Backbone(nn.Sequential(*stem_layers) if stem_layers else nn.Identity(),
                    stages, channels, reductions)


@register("convnet")
def convnet(width: int = 32, depth: int = 0) -> Backbone:
    """3 stages at full, 1/2 and 1/4 resolution with width, 2x, 4x channels."""
    return plain_backbone([[c, c] for c in (width, 2 * width, 4 * width)], [False, True, True])


def vgg(convs_per_stage: int) -> Backbone:
    """RepDistiller's CIFAR VGG with BN (vgg8: 1, vgg13: 2 convs per block), classifier-free:
    its block 0 (64 channels, full size) as the stem, blocks 1-4 as stages of
    128/256/512/512 channels at 1/2, 1/4, 1/8, 1/8 of the input size."""
    return plain_backbone([[c] * convs_per_stage for c in (128, 256, 512, 512)],
                          [True, True, True, False], stem=[64] * convs_per_stage)


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


def basic_resnet(stem: int, widths: list[int], blocks: list[int]) -> Backbone:
    """3x3 conv-BN-ReLU stem of `stem` channels (no pooling), then stage i of `blocks[i]`
    basic blocks with `widths[i]` channels; every stage after the first halves the size."""
    stem_layers = conv_bn_relu(3, stem)        # made first: seeded inits stay as they were
    stages, c_in = [], stem
    for i, (n, c_out) in enumerate(zip(blocks, widths)):
        layers = [BasicBlock(c_in if j == 0 else c_out, c_out, 2 if (i > 0 and j == 0) else 1)
                  for j in range(n)]
        stages.append(nn.Sequential(*layers))
        c_in = c_out
    return Backbone(stem_layers, stages, widths, [2 ** i for i in range(len(widths))])


@register("resnet")
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


# The distillation benchmark's architectures, by the talk's names, with their own (width, depth).
for _depth in (20, 32, 56, 110):
    register_named(f"resnet{_depth}", 16, _depth, partial(cifar_resnet, _depth, 16, [16, 32, 64]))
for _depth in (8, 32):
    register_named(f"resnet{_depth}x4", 64, _depth, partial(cifar_resnet, _depth, 32, [64, 128, 256]))
for _depth, _k in ((40, 2), (16, 2), (40, 1)):
    register_named(f"wrn_{_depth}_{_k}", _k, _depth, partial(wide_resnet, _k, _depth))
register_named("vgg8", 64, 8, partial(vgg, 1))
register_named("vgg13", 64, 13, partial(vgg, 2))
del _depth, _k


class Classifier(nn.Module):
    """A backbone with a linear classifier on its pooled last stage (a distillation
    teacher or student): `forward(x)` gives logits, `features_and_logits(x)` everything a
    distillation loss reads, in one pass."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> logits [B, num_classes]."""
        return self.fc(self.backbone(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor,
                                                            torch.Tensor]:
        """x [B, 3, H, W] -> (stage maps [B, C_i, H / r_i, W / r_i] and pooled feature [B, C]
        as `Backbone.distill_features` gives them; logits [B, num_classes])."""
        maps, pooled = self.backbone.distill_features(x)
        return maps, pooled, self.fc(pooled)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


from bowflow import vit  # noqa: E402,F401  registers the vision transformers (vit_tiny, ...)
from bowflow import timm_backbones  # noqa: E402,F401  registers the 'timm/<model>' family
