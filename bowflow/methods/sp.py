"""Similarity-preserving KD (Tung & Mori, ICCV 2019): images that the teacher finds alike
the student should find alike too.

L_method = MSE between the row-normalised B x B Gram matrices of the two networks' last
stage maps (`distill_losses.similarity_loss`); gamma = 3000, the benchmark's weight.
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


@float32
def similarity_loss(s_map: torch.Tensor, t_map: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD: the two networks should find the same images alike.

    s_map [B, ...], t_map [B, ...] (any shapes with the same batch; teacher detached).
    Each is flattened to [B, N], G = f f^T [B, B], each row L2-normalised; loss =
    ||G_s - G_t||_F^2 / B^2. Invariant to scaling either map.
    """

    def gram(f):
        f = f.flatten(1)
        return F.normalize(f @ f.T, dim=1)

    b = s_map.shape[0]
    return (gram(s_map) - gram(t_map.detach())).pow(2).sum() / b**2


@dataclass
class SPParams(DistillParams):
    method: str = "sp"
    gamma: float = param(3000.0, "similarity weight (the benchmark's 3000)")


@register_method("sp")
class SP(Distiller):
    label = "SP"
    Params = SPParams
    params: SPParams  # an instance of Params (typing only)
    # The B x B Gram matrix of the global batch: the last stage maps are gathered and every
    # process computes the global term.
    batch_spanning = ("Gram matrix",)

    def method_loss(self, student, teacher, labels, index, views):
        return similarity_loss(distributed.gather(student.maps[-1]), distributed.gather_no_grad(teacher.maps[-1]))
