"""Relational KD (Park et al., CVPR 2019): distances between images and angles between
triplets of images, in the pooled-feature space, match the teacher's.

L_method = 25 x distance term + 50 x angle term (`distill_losses.rkd_loss`, the paper's
weights); gamma = 1, the benchmark's weight.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bowflow.distill import DistillParams, Distiller
from bowflow.distill_losses import rkd_loss
from bowflow.methods.base import register_method


@dataclass
class RKDParams(DistillParams):
    method: str = "rkd"
    gamma: float = field(default=1.0, metadata={"help": "RKD weight (the benchmark's 1)"})


@register_method("rkd")
class RKD(Distiller):
    label = "RKD"
    Params = RKDParams

    def method_loss(self, student, teacher, labels, index):
        return rkd_loss(student.pooled, teacher.pooled)
