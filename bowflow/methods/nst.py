"""Neuron selectivity transfer (Huang & Wang, 2017): at every stage, the set of the
student's channel activation patterns matches the teacher's (squared MMD with a
polynomial kernel, `distill_losses.nst_loss`), summed over the stages: the benchmark's
feat[1:-1], every block output but the stem and the pooled vector.

gamma = 50, the benchmark's weight. Both networks must have the same number of stages.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bowflow.distill import DistillParams, Distiller, check_same_stages
from bowflow.distill_losses import nst_loss
from bowflow.methods.base import register_method


@dataclass
class NSTParams(DistillParams):
    method: str = "nst"
    gamma: float = field(default=50.0, metadata={"help": "NST weight (the benchmark's 50)"})


@register_method("nst")
class NST(Distiller):
    label = "NST"
    Params = NSTParams

    @classmethod
    def check_pair(cls, params, student, teacher):
        check_same_stages("nst", student.channels, teacher.channels)

    def method_loss(self, student, teacher, labels, index):
        return sum(nst_loss(s, t) for s, t in zip(student.maps, teacher.maps))
