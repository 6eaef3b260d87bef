"""Similarity-preserving KD (Tung & Mori, ICCV 2019): images that the teacher finds alike
the student should find alike too.

L_method = MSE between the row-normalised B x B Gram matrices of the two networks' last
stage maps (`distill_losses.similarity_loss`); gamma = 3000, the benchmark's weight.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bowflow.distill import DistillParams, Distiller
from bowflow.distill_losses import similarity_loss
from bowflow.methods.base import register_method


@dataclass
class SPParams(DistillParams):
    method: str = "sp"
    gamma: float = field(default=3000.0, metadata={"help": "similarity weight (the benchmark's 3000)"})


@register_method("sp")
class SP(Distiller):
    label = "SP"
    Params = SPParams

    def method_loss(self, student, teacher, labels, index):
        return similarity_loss(student.maps[-1], teacher.maps[-1])
