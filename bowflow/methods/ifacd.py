"""IFACD (Rios et al., "IFACD: Intermediate Features Augmented Contrastive Distillation"): the teacher's
intermediate features are extra views of an image in a contrastive loss (code: https://github.com/arkel23/layerwiseclr).

View 0 is the student's pooled feature, views 1..L the teacher's last L stage maps
(ifacd1: the last stage; ifacd2: the last two; ifacd3: three), each through its own
rescaler MLP (pool -> linear -> BN -> ReLU -> linear, L2-normalised; `RescalerMLP`). A
SimCLR-style multi-view InfoNCE (`supcon_loss` of bowflow/contrastive.py, without labels,
temperature 0.07) makes all views of an image positives and every view of every other
image in the batch a negative: no memory bank. Positives as the paper puts it:
"representation for a given image across different layers should be closer between each
other than to any other image in same layer or in other layers"; the authors' code calls
SupCon without labels (its labelled form is SupCon's supervised loss, not what the paper
reports). gamma = 0.8, CRD's weight, which the authors' code base (built on CRD's) keeps.
Trainable extras: L + 1 rescalers (the paper counts them as parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bowflow import distributed
from bowflow.checks import param
from bowflow.contrastive import supcon_loss
from bowflow.heads import global_pool
from bowflow.roles.base import register_method
from bowflow.roles.distiller import Distiller, DistillParams

# ---------------------------------------------------------------- loss


class RescalerMLP(nn.Module):
    """IFACD's rescaler: one per view, mapping a network's layer to the common space.

    [B, C, H, W] (global average pool) / [B, N, C] (tokens, mean) / [B, C] -> linear(c_in,
    hidden) -> BatchNorm1d or LayerNorm -> ReLU or GELU -> linear(hidden, dim) ->
    L2-normalised [B, dim]. hidden defaults to dim (as in the authors' code); the paper
    pairs BN with ReLU (CNNs) and LN with GELU (ViTs). Note BN needs B > 1 in training.
    """

    def __init__(self, c_in: int, dim: int = 128, hidden: int | None = None, norm: str = "bn", act: str = "relu"):
        super().__init__()
        hidden = hidden or dim
        norms = {"bn": nn.BatchNorm1d, "ln": nn.LayerNorm}
        acts = {"relu": nn.ReLU, "gelu": nn.GELU}
        if norm not in norms or act not in acts:
            raise ValueError(
                f"norm must be one of {sorted(norms)} and act one of {sorted(acts)}, got {norm!r}, {act!r}"
            )
        self.mlp = nn.Sequential(nn.Linear(c_in, hidden), norms[norm](hidden), acts[act](), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(global_pool(x)), dim=1)


@dataclass
class IFACDParams(DistillParams):
    method: str = "ifacd"
    gamma: float = param(0.8, "IFACD weight (CRD's 0.8)")
    layers: int = param(
        1, "teacher stages used as views, counted from the last (the IFACD paper: 1, 2, 3; best at 2)", above=0
    )
    embed_dim: int = param(128, "common space of the views (128, as CRD)", above=0)
    contrast_temperature: float = param(0.07, "SupCon temperature (0.07)", above=0)


@register_method("ifacd")
class IFACD(Distiller):
    label = "IFACD"
    Params = IFACDParams
    params: IFACDParams  # an instance of Params (typing only)
    # SupCon's negatives are every view of every other image of the global batch: the views
    # are gathered and every process computes the global term. (The rescalers' BatchNorm is
    # synced by the trainer.)
    batch_spanning = ("negatives",)
    # tests/test_method_learning.py: the distillers' recipe with heads for the 32-d student;
    # student's test top-1 83.6, untrained 25.0 (measured, seed 0).
    learning_recipe = {**Distiller.learning_recipe, "embed_dim": 32}

    @classmethod
    def check_pair(cls, params, student, teacher):
        if params.layers > len(teacher.channels):
            raise ValueError(f"layers = {params.layers}, but the teacher has only {len(teacher.channels)} stages")

    def build_extras(self, student_channels, teacher_channels, inputs):
        p = self.params
        self.label = f"IFACD-{p.layers}"
        self.student_rescaler = RescalerMLP(student_channels[-1], p.embed_dim)
        self.teacher_rescalers = nn.ModuleList(RescalerMLP(c, p.embed_dim) for c in teacher_channels[-p.layers :])

    def method_loss(self, student, teacher, labels, index, views):
        embedded = [self.student_rescaler(student.pooled)]
        embedded += [rescale(m) for rescale, m in zip(self.teacher_rescalers, teacher.maps[-self.params.layers :])]
        # view 0 the student, views 1.. the teacher's layers (ifacd1: V = 2, ifacd2: V = 3).
        # Gathered here, so every process computes the global batch's loss (gather=None).
        stacked = distributed.gather(torch.stack(embedded, dim=1))  # [B, 1+L, D]
        return supcon_loss(stacked, None, self.params.contrast_temperature)
