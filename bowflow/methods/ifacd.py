"""IFACD (the second reference talk): the teacher's intermediate features are extra
views of an image in a contrastive loss.

View 0 is the student's pooled feature, views 1..L the teacher's last L stage maps
(ifacd1: the last stage; ifacd2: the last two; ifacd3: three), each through its own
rescaler MLP (pool -> linear -> BN -> ReLU -> linear, L2-normalised; `RescalerMLP`). A
SimCLR-style multi-view InfoNCE (`supcon_loss` without labels, temperature 0.07) makes
all views of an image positives and every view of every other image in the batch a
negative: no memory bank. gamma = 0.8, CRD's weight, which the authors' code base (built
on CRD's) keeps. Trainable extras: L + 1 rescalers (the talk counts them as parameters).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from bowflow.contrastive_distill import RescalerMLP, supcon_loss
from bowflow.distill import DistillParams, Distiller
from bowflow.methods.base import positive, register_method


@dataclass
class IFACDParams(DistillParams):
    method: str = "ifacd"
    gamma: float = field(default=0.8, metadata={"help": "IFACD weight (CRD's 0.8)"})
    layers: int = field(default=1, metadata={"help": "teacher stages used as views, counted from "
                                                     "the last (the talk: 1, 2, 3; best at 2)"})
    embed_dim: int = field(default=128, metadata={"help": "common space of the views (128, as CRD)"})
    contrast_temperature: float = field(default=0.07, metadata={"help": "SupCon temperature (0.07)"})

    def validate(self) -> None:
        super().validate()
        for name in ("layers", "embed_dim", "contrast_temperature"):
            positive(name, getattr(self, name))


@register_method("ifacd")
class IFACD(Distiller):
    label = "IFACD"
    Params = IFACDParams

    @classmethod
    def check_pair(cls, params, student, teacher):
        if params.layers > len(teacher.channels):
            raise ValueError(f"layers = {params.layers}, but the teacher has only "
                             f"{len(teacher.channels)} stages")

    def build_extras(self, student_channels, teacher_channels, context):
        p = self.params
        self.label = f"IFACD-{p.layers}"
        self.student_rescaler = RescalerMLP(student_channels[-1], p.embed_dim)
        self.teacher_rescalers = nn.ModuleList(RescalerMLP(c, p.embed_dim) for c in teacher_channels[-p.layers:])

    def method_loss(self, student, teacher, labels, index):
        views = [self.student_rescaler(student.pooled)]
        views += [rescale(m) for rescale, m in zip(self.teacher_rescalers, teacher.maps[-self.params.layers:])]
        return supcon_loss(torch.stack(views, dim=1), None, self.params.contrast_temperature)   # [B, 1+L, D]
