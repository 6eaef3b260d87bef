"""Correlation congruence (Peng et al., ICCV 2019): the correlations between the images
of a batch, in embedding space, match between student and teacher.

Both pooled features pass a trainable linear embedding (128-d, L2-normalised; the
teacher's side is trainable too, as in the benchmark); L_method = the distance between
their Gaussian-kernel correlation matrices (`distill_losses.correlation_congruence_loss`,
2nd-order Taylor form); gamma = 0.02, the benchmark's weight (tuned there for its
simpler correlation variant: see that function's docstring).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bowflow.contrastive_distill import EmbedHead
from bowflow.distill import DistillParams, Distiller
from bowflow.distill_losses import correlation_congruence_loss
from bowflow.methods.base import register_method


@dataclass
class CCParams(DistillParams):
    method: str = "cc"
    gamma: float = field(default=0.02, metadata={"help": "correlation weight (the benchmark's 0.02)"})
    embed_dim: int = field(default=128, metadata={"help": "embedding size of both sides"})


@register_method("cc")
class CC(Distiller):
    label = "CC"
    Params = CCParams

    def build_extras(self, student_channels, teacher_channels, context):
        self.embed_student = EmbedHead(student_channels[-1], self.params.embed_dim)
        self.embed_teacher = EmbedHead(teacher_channels[-1], self.params.embed_dim)

    def method_loss(self, student, teacher, labels, index):
        return correlation_congruence_loss(self.embed_student(student.pooled),
                                           self.embed_teacher(teacher.pooled))
