"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): the distribution of
cosine similarities from each image to the others in the batch matches the teacher's.

L_method = KL between the two conditional-probability matrices of the pooled features
(`distill_losses.pkt_loss`); gamma = 30000, the benchmark's weight (its loss is a mean
over B^2 entries, hence the large weight).
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
def pkt_loss(s_emb: torch.Tensor, t_emb: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer: match the distributions of neighbours.

    s_emb [B, ...], t_emb [B, ...] (flattened, L2-normalised; teacher detached). Row i of
    P = (cos + 1) / 2 divided by its row sum is a distribution over the batch (self
    included); loss = mean over all B^2 entries of p_t log((p_t + eps) / (p_s + eps)),
    i.e. the mean per-row KL(p_t || p_s) divided by B (RepDistiller's scale, which
    its benchmark's gamma = 30000 assumes: https://github.com/HobbitLong/RepDistiller).
    """

    def neighbours(x):
        x = F.normalize(x.flatten(1), dim=1)
        p = (x @ x.T + 1) / 2
        return p / p.sum(dim=1, keepdim=True)

    p_s, p_t = neighbours(s_emb), neighbours(t_emb.detach())
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@dataclass
class PKTParams(DistillParams):
    method: str = "pkt"
    gamma: float = param(30000.0, "PKT weight (the benchmark's 30000)")


@register_method("pkt")
class PKT(Distiller):
    label = "PKT"
    Params = PKTParams
    params: PKTParams  # an instance of Params (typing only)
    # Each image's distribution over its similarities to every image of the global batch:
    # the pooled features are gathered and every process computes the global term.
    batch_spanning = ("batch similarities",)

    def method_loss(self, student, teacher, labels, index, views):
        return pkt_loss(distributed.gather(student.pooled), distributed.gather_no_grad(teacher.pooled))
