"""Variational information distillation (Ahn et al., CVPR 2019): at every stage the
student predicts a Gaussian over the teacher's map; maximising its likelihood maximises
a lower bound on their mutual information.

One `VIDRegressor` per stage (three 1x1 convs for the mean, a learned per-channel
variance); per stage the larger of the two maps is pooled to the other's size first (as
the benchmark does); L_method = sum over stages of `distill_losses.vid_loss`; gamma = 1,
the benchmark's weight. Both networks must have the same number of stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bowflow.checks import param
from bowflow.losses import float32
from bowflow.roles.base import register_method
from bowflow.roles.distiller import Distiller, DistillParams, check_same_stages, match_spatial

# ---------------------------------------------------------------- loss


class VIDRegressor(nn.Module):
    """VID's variational q(t | s): mean mu(s) by three 1x1 convs (c_s -> c_mid -> c_mid
    -> c_t, ReLU between, no bias) and a learned per-channel variance
    softplus(w_c) + eps, initialised to `init_var` = 5 (the authors' value).

    forward(s [B, c_s, H, W]) -> (mean [B, c_t, H, W], var [1, c_t, 1, 1]). Bring the
    two maps to one size with `match_spatial` first (the benchmark pools the larger).
    """

    def __init__(self, c_s: int, c_t: int, c_mid: int | None = None, init_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        c_mid = c_mid or c_t
        self.mean = nn.Sequential(
            nn.Conv2d(c_s, c_mid, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_mid, c_mid, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_mid, c_t, 1, bias=False),
        )
        inverse_softplus = math.log(math.expm1(init_var - eps))
        self.raw_var = nn.Parameter(torch.full((c_t,), inverse_softplus))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        var = F.softplus(self.raw_var) + self.eps
        return self.mean(x), var.view(1, -1, 1, 1)


@float32
def vid_loss(mean: torch.Tensor, var: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """VID: negative log-likelihood of the teacher map under N(mean, var), per element,
    averaged: mean of 1/2 [(t - mean)^2 / var + log var] (the constant log(2 pi) / 2 is
    dropped, as the authors do). mean [B, C, H, W] and var (broadcastable, e.g.
    [1, C, 1, 1]) from `VIDRegressor`; teacher_map [B, C, H, W], detached here.
    For a fixed error the loss is lowest at var = (t - mean)^2, so the variance learns
    how predictable each teacher channel is from the student.
    """
    t = teacher_map.detach()
    return (0.5 * ((t - mean).pow(2) / var + torch.log(var))).mean()


@dataclass
class VIDParams(DistillParams):
    method: str = "vid"
    gamma: float = param(1.0, "VID weight (the benchmark's 1)")


@register_method("vid")
class VID(Distiller):
    label = "VID"
    Params = VIDParams
    params: VIDParams  # an instance of Params (typing only)

    @classmethod
    def check_pair(cls, params, student, teacher):
        check_same_stages("vid", student.channels, teacher.channels)

    def build_extras(self, student_channels, teacher_channels, inputs):
        self.regressors = nn.ModuleList(VIDRegressor(s, t) for s, t in zip(student_channels, teacher_channels))

    def method_loss(self, student, teacher, labels, index, views):
        total = 0.0
        for regressor, s, t in zip(self.regressors, student.maps, teacher.maps):
            s, t = match_spatial(s, t)
            mean, var = regressor(s)
            total = total + vid_loss(mean, var, t)
        return total
