"""Relational KD (Park et al., CVPR 2019): distances between images and angles between
triplets of images, in the pooled-feature space, match the teacher's.

L_method = 25 x distance term + 50 x angle term (`distill_losses.rkd_loss`, the paper's
weights); gamma = 1, the benchmark's weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bowflow import distributed
from bowflow.checks import param
from bowflow.losses import float32
from bowflow.roles.base import register_method
from bowflow.roles.distiller import Distiller, DistillParams

# ---------------------------------------------------------------- loss


def _pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    squared = (x.unsqueeze(0) - x.unsqueeze(1)).pow(2).sum(-1)
    distances = squared.clamp_min(eps).sqrt()  # clamp: sqrt's gradient at 0 is inf
    return distances * (1 - torch.eye(len(x), device=x.device, dtype=x.dtype))


def _angles(x: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, B, B]: entry (a, b, c) = cos of the angle at x_a between x_b and
    x_c (0 where b or c is a)."""
    directions = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), dim=2)  # [a, b] = x_b - x_a
    return directions @ directions.transpose(1, 2)


@float32
def rkd_loss(s_emb: torch.Tensor, t_emb: torch.Tensor, w_distance: float = 25, w_angle: float = 50) -> torch.Tensor:
    """Relational KD: w_distance * distance loss + w_angle * angle loss.

    s_emb [B, ...], t_emb [B, ...] (flattened to [B, D_s], [B, D_t]; teacher detached).
    Distance: pairwise Euclidean distances, each network's divided by its mean over the
    B(B-1) off-diagonal pairs, compared by smooth-L1 (mean over B^2). Angle: cosines of
    the angles of every triplet (`_angles`), smooth-L1 (mean over B^3). Both are invariant
    to translating, rotating and scaling either embedding. Weights 25 / 50 (the paper).
    """
    s, t = s_emb.flatten(1), t_emb.detach().flatten(1)
    b = s.shape[0]

    def normalised_distances(x):
        d = _pairwise_distances(x)
        return d / (d.sum() / (b * (b - 1)))

    distance = F.smooth_l1_loss(normalised_distances(s), normalised_distances(t))
    angle = F.smooth_l1_loss(_angles(s), _angles(t))
    return w_distance * distance + w_angle * angle


@dataclass
class RKDParams(DistillParams):
    method: str = "rkd"
    gamma: float = param(1.0, "RKD weight (the benchmark's 1)")


@register_method("rkd")
class RKD(Distiller):
    label = "RKD"
    Params = RKDParams
    params: RKDParams  # an instance of Params (typing only)
    # Distances between every pair and angles of every triplet of the global batch (and the
    # mean distance that normalises them): the pooled features are gathered and every
    # process computes the global term.
    batch_spanning = ("pairwise distances", "angles")

    def method_loss(self, student, teacher, labels, index, views):
        return rkd_loss(distributed.gather(student.pooled), distributed.gather_no_grad(teacher.pooled))
