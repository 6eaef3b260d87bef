"""Correlation congruence (Peng et al., ICCV 2019), as the distillation benchmark runs it.

Both pooled features pass their own trainable linear embedding (128-d, NOT normalised:
RepDistiller's `LinearEmbed`; the teacher's head is trained too), and L_method is
RepDistiller's `Correlation` on the two embeddings (`distill_losses.cc_loss`): the
products of the student-teacher gaps |s_i - t_i| of neighbouring images in the batch.
gamma = 0.02, the benchmark's weight for that definition. This is the benchmark's CC,
not the paper's kernel-matrix congruence (see docs/fidelity/distillation.md): the
seed's gamma and numbers are for the benchmark's. The two heads are trainable
parameters of the run (counted in its parameters, not in the exported student).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bowflow.contrastive_distill import EmbedHead
from bowflow.distill import DistillParams, Distiller
from bowflow.distill_losses import cc_loss
from bowflow.methods.base import positive, register_method


@dataclass
class CCParams(DistillParams):
    method: str = "cc"
    gamma: float = field(default=0.02, metadata={"help": "correlation weight (the benchmark's 0.02)"})
    embed_dim: int = field(default=128, metadata={"help": "embedding size of both sides (the benchmark's 128)"})

    def validate(self) -> None:
        super().validate()
        positive("embed_dim", self.embed_dim)


@register_method("cc")
class CC(Distiller):
    label = "CC"
    Params = CCParams

    def build_extras(self, student_channels, teacher_channels, context):
        self.embed_student = EmbedHead(student_channels[-1], self.params.embed_dim, normalize=False)
        self.embed_teacher = EmbedHead(teacher_channels[-1], self.params.embed_dim, normalize=False)

    def method_loss(self, student, teacher, labels, index):
        return cc_loss(self.embed_student(student.pooled), self.embed_teacher(teacher.pooled))
