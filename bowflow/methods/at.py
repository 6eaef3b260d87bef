"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): at every stage, the student's
spatial attention map (channel mean of squared activations, L2-normalised) matches the
teacher's. Both networks must have the same number of stages.

L_method = sum over stages of the attention-map MSE (`distill_losses.attention_loss`);
gamma = 1000, the distillation benchmark's weight.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bowflow.distill import DistillParams, Distiller, check_same_stages
from bowflow.distill_losses import attention_loss
from bowflow.methods.base import register_method


@dataclass
class ATParams(DistillParams):
    method: str = "at"
    gamma: float = field(default=1000.0, metadata={"help": "attention weight (the benchmark's 1000)"})


@register_method("at")
class AT(Distiller):
    label = "AT"
    Params = ATParams

    @classmethod
    def check_pair(cls, params, student, teacher):
        check_same_stages("at", student.channels, teacher.channels)

    def method_loss(self, student, teacher, labels, index):
        return attention_loss(student.maps, teacher.maps)
