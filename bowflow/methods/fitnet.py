"""FitNets (Romero et al., ICLR 2015): the student's middle stage, through a trainable
conv regressor, regresses the teacher's middle stage ("hint").

L_method = MSE(adapter(student[hint_stage]), teacher[hint_stage]) (`distill_losses.hint_loss`,
adapter = `HintAdapter`, RepDistiller's `ConvReg`: conv -> BN -> ReLU); gamma = 100, the
distillation benchmark's weight. hint_stage = stage2 is the benchmark's hint layer 2
(feat[2]) in every architecture family (see `networks`). Trained jointly with CE + KD
(the benchmark's single-stage variant, not the paper's two-stage hint pre-training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bowflow.checks import param
from bowflow.losses import float32
from bowflow.roles.base import register_method
from bowflow.roles.distiller import Distiller, DistillParams

# ---------------------------------------------------------------- loss


class HintAdapter(nn.Module):
    """FitNets' regressor, as RepDistiller's `ConvReg`: student map [B, c_s, H, W] ->
    [B, c_t, h, w], conv (with bias) -> BatchNorm -> ReLU. `ratio` = the student map's
    side / the teacher map's (from the networks' `reductions`) picks the conv:
    1: 1x1 conv; 2: 3x3 conv, stride 2, padding 1; 0.5: 4x4 transposed conv, stride 2,
    padding 1. Any other ratio: adaptive average pooling to the teacher's h x w, then the
    1x1 conv (RepDistiller uses a valid conv whose kernel grows with the size gap, or
    fails). The ReLU is the benchmark's: the target maps of its post-activation nets are
    non-negative (a WRN's hint map is a raw block output and may be negative; the
    benchmark keeps the ReLU there too, and so do we).
    forward(x, size=teacher (h, w)) -> adapted map."""

    def __init__(self, c_s: int, c_t: int, ratio: float = 1.0):
        super().__init__()
        self.conv: nn.Module
        if ratio == 2:
            self.conv = nn.Conv2d(c_s, c_t, 3, stride=2, padding=1)
        elif ratio == 0.5:
            self.conv = nn.ConvTranspose2d(c_s, c_t, 4, stride=2, padding=1)
        else:
            self.conv = nn.Conv2d(c_s, c_t, 1)
        self.pool_first = ratio not in (0.5, 1, 2)
        self.bn = nn.BatchNorm2d(c_t)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if self.pool_first and size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.adaptive_avg_pool2d(x, size)
        return F.relu(self.bn(self.conv(x)))


@float32
def hint_loss(student_map_adapted: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """FitNets' hint: mean squared error over all elements between the adapted student map
    and the teacher map (detached here), both [B, C_t, H, W] (pass the student map through
    `HintAdapter(c_s, c_t, ratio)(s, size=teacher_map.shape[-2:])` first)."""
    if student_map_adapted.shape != teacher_map.shape:
        raise ValueError(
            f"hint shapes differ: {tuple(student_map_adapted.shape)} vs "
            f"{tuple(teacher_map.shape)}; adapt the student map first"
        )
    return F.mse_loss(student_map_adapted, teacher_map.detach())


@dataclass
class FitNetParams(DistillParams):
    method: str = "fitnet"
    gamma: float = param(100.0, "hint weight (the benchmark's 100)")
    hint_stage: str = param(
        "stage2", "stage of both networks whose maps are matched (stage2: the benchmark's hint layer 2)"
    )


@register_method("fitnet")
class FitNet(Distiller):
    label = "FitNet"
    Params = FitNetParams
    params: FitNetParams  # an instance of Params (typing only)

    @classmethod
    def check_pair(cls, params, student, teacher):
        for who, network in (("student", student), ("teacher", teacher)):
            if params.hint_stage not in network.stage_names:
                raise ValueError(
                    f"hint_stage: the {who} has no stage '{params.hint_stage}' (its stages: {network.stage_names})"
                )

    def build_extras(self, student_channels, teacher_channels, inputs):
        self.student_stage = self.backbone.stage_index(self.params.hint_stage)
        self.teacher_stage = self.teacher.backbone.stage_index(self.params.hint_stage)
        # student map side / teacher map side, from the down-sampling factors
        ratio = self.teacher.backbone.reductions[self.teacher_stage] / self.backbone.reductions[self.student_stage]
        self.adapter = HintAdapter(student_channels[self.student_stage], teacher_channels[self.teacher_stage], ratio)

    def method_loss(self, student, teacher, labels, index, views):
        target = teacher.maps[self.teacher_stage]  # [B, C_t, h, w]
        return hint_loss(self.adapter(student.maps[self.student_stage], size=target.shape[-2:]), target)
