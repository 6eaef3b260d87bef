"""The stage-map contract every architecture meets: `Backbone`.

A backbone maps images `[B, 3, H, W]` to a list of feature maps, one per stage (`stage1`,
`stage2`, ... at decreasing or equal resolution). Methods read any stage by name: the BoW
vocabulary is built on a middle stage, evaluation pools the last one, distillation reads
`distill_features`. Convnets (bowflow/convnets.py), vision transformers (bowflow/vit.py) and
timm models (bowflow/timm_backbones.py) are `Backbone`s; bowflow/networks.py names them.

Distillation reads `Backbone.distill_features`: the stage maps as the CIFAR distillation
benchmark's `forward(is_feat=True)` returns them (feat[1:-1]) and the pooled feature
(feat[-1]); for pre-activation nets (`wrn`) the last map is the raw last block output,
before the final BN-ReLU (`head_norm`) that the pooled feature goes through.

This module imports nothing of bowflow's, so every architecture module can build on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class NoArchParams:
    """The declared settings of an architecture that has none beyond `width` and `depth`: a
    run's `arch_params` must be empty for it (bowflow/networks.py registers each architecture
    with its settings' dataclass; bowflow/vit.py's `ViTParams` is one with a field)."""


class Backbone(nn.Module):
    """A stem followed by named stages; `forward` returns the globally pooled last stage.

    Attributes: `stages` (nn.ModuleList), `channels` (output channels of each stage),
    `reductions` (spatial down-sampling factor of each stage's output w.r.t. the input).
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        channels: list[int],
        reductions: list[int],
        head_norm: nn.Module | None = None,
    ):
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

    def feature_maps(self, x: torch.Tensor, upto: int | None = None, final_norm: bool = True) -> list[torch.Tensor]:
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


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of `module` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
