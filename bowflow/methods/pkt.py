"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): the distribution of
cosine similarities from each image to the others in the batch matches the teacher's.

L_method = KL between the two conditional-probability matrices of the pooled features
(`distill_losses.pkt_loss`); gamma = 30000, the benchmark's weight (its loss is a mean
over B^2 entries, hence the large weight).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bowflow.distill import DistillParams, Distiller
from bowflow.distill_losses import pkt_loss
from bowflow.methods.base import register_method


@dataclass
class PKTParams(DistillParams):
    method: str = "pkt"
    gamma: float = field(default=30000.0, metadata={"help": "PKT weight (the benchmark's 30000)"})


@register_method("pkt")
class PKT(Distiller):
    label = "PKT"
    Params = PKTParams

    def method_loss(self, student, teacher, labels, index):
        return pkt_loss(student.pooled, teacher.pooled)
