"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): at every stage, the student's
spatial attention map (channel mean of squared activations, L2-normalised) matches the
teacher's. Both networks must have the same number of stages.

L_method = sum over stages of the attention-map MSE (`distill_losses.attention_loss`);
gamma = 1000, the distillation benchmark's weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bowflow.checks import param
from bowflow.losses import float32
from bowflow.roles.base import register_method
from bowflow.roles.distiller import Distiller, DistillParams, check_same_stages, match_spatial

# ---------------------------------------------------------------- loss


def attention_map(feature_map: torch.Tensor, p: float = 2) -> torch.Tensor:
    """AT's spatial attention: [B, C, H, W] -> mean over channels of |a|^p, flattened and
    L2-normalised per sample -> [B, H*W]. Invariant to scaling the map."""
    return F.normalize(feature_map.abs().pow(p).mean(dim=1).flatten(1), dim=1)


@float32
def attention_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor], p: float = 2) -> torch.Tensor:
    """Attention transfer, summed over stages.

    student_maps, teacher_maps: lists of S maps [B, C_i, H_i, W_i] (stage i of each
    network; channel counts may differ, the channel mean removes them). Per stage, the
    larger map is first adaptive-average-pooled to the smaller one's size; then the mean
    over B x HW of (attention_map(s) - attention_map(t))^2. The stages' terms are summed,
    as RepDistiller does (it weights the sum by gamma = 1000). p = 2 (the paper).
    """
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(
            f"AT needs as many student as teacher stages (>= 1), got {len(student_maps)} and {len(teacher_maps)}"
        )
    total: torch.Tensor | float = 0.0
    for s, t in zip(student_maps, teacher_maps):
        s, t = match_spatial(s, t.detach())
        total = total + (attention_map(s, p) - attention_map(t, p)).pow(2).mean()
    assert isinstance(total, torch.Tensor)  # at least one stage
    return total


@dataclass
class ATParams(DistillParams):
    method: str = "at"
    gamma: float = param(1000.0, "attention weight (the benchmark's 1000)")


@register_method("at")
class AT(Distiller):
    label = "AT"
    Params = ATParams
    params: ATParams  # an instance of Params (typing only)

    @classmethod
    def check_pair(cls, params, student, teacher):
        check_same_stages("at", student.channels, teacher.channels)

    def method_loss(self, student, teacher, labels, index, views):
        return attention_loss(student.maps, teacher.maps)
