"""KD (Hinton et al., 2015): the student matches the teacher's class distribution softened
at temperature T, beside the cross-entropy on the labels.

Loss = alpha * CE + beta * T^2 * KL(teacher_T || student_T) (`distill_losses.kd_loss`):
exactly the shared `Distiller` loss with no method term, so every other distillation
method is "KD plus gamma * its own term", as the benchmark of the IFACD paper (Rios et al.,
https://github.com/arkel23/layerwiseclr; CRD's benchmark, RepDistiller
https://github.com/HobbitLong/RepDistiller) runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

from bowflow.roles.base import register_method
from bowflow.roles.distiller import Distiller, DistillParams


@dataclass
class KDParams(DistillParams):
    method: str = "kd"


@register_method("kd")
class KD(Distiller):
    label = "KD"
    Params = KDParams
    params: KDParams  # an instance of Params (typing only)
