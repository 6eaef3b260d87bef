"""Neuron selectivity transfer (Huang & Wang, 2017): at every stage, the set of the
student's channel activation patterns matches the teacher's (squared MMD with a
polynomial kernel, `distill_losses.nst_loss`), summed over the stages: the benchmark's
feat[1:-1], every block output but the stem and the pooled vector.

gamma = 50, the benchmark's weight. Both networks must have the same number of stages.
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


@float32
def nst_loss(s_map: torch.Tensor, t_map: torch.Tensor) -> torch.Tensor:
    """Neuron selectivity transfer: squared MMD between the two networks' channels.

    s_map [B, C_s, H, W], t_map [B, C_t, h, w] (teacher detached; the larger map is
    adaptive-average-pooled to the smaller size). Each channel's spatial map, flattened
    and L2-normalised, is one sample; per image, MMD^2 = mean k(t, t') + mean k(s, s')
    - 2 mean k(s, t) with the polynomial kernel k(x, y) = (x.y)^2 (the paper's d = 2,
    c = 0), averaged over the batch. >= 0, and 0 when the channel sets coincide (in any
    order).
    """
    s, t = match_spatial(s_map, t_map.detach())
    s = F.normalize(s.flatten(2), dim=2)  # [B, C_s, HW]
    t = F.normalize(t.flatten(2), dim=2)

    def kernel_mean(a, b):
        return (a @ b.transpose(1, 2)).pow(2).mean()

    return kernel_mean(t, t) + kernel_mean(s, s) - 2 * kernel_mean(s, t)


@dataclass
class NSTParams(DistillParams):
    method: str = "nst"
    gamma: float = param(50.0, "NST weight (the benchmark's 50)")


@register_method("nst")
class NST(Distiller):
    label = "NST"
    Params = NSTParams
    params: NSTParams  # an instance of Params (typing only)

    @classmethod
    def check_pair(cls, params, student, teacher):
        check_same_stages("nst", student.channels, teacher.channels)

    def method_loss(self, student, teacher, labels, index, views):
        return sum(nst_loss(s, t) for s, t in zip(student.maps, teacher.maps))
