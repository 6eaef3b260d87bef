"""Correlation congruence (Peng et al., ICCV 2019), as the distillation benchmark runs it.

Both pooled features pass their own trainable linear embedding (128-d, NOT normalised:
RepDistiller's `LinearEmbed`; the teacher's head is trained too), and L_method is
RepDistiller's `Correlation` on the two embeddings (`distill_losses.cc_loss`): the
products of the student-teacher gaps |s_i - t_i| of neighbouring images in the batch.
gamma = 0.02, the benchmark's weight for that definition. This is the benchmark's CC,
not the paper's kernel-matrix congruence (see docs/fidelity/distillation.md): RepDistiller's
benchmark gamma and numbers are for the benchmark's. The two heads are trainable
parameters of the run (counted in its parameters, not in the exported student).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bowflow import distributed
from bowflow.checks import param
from bowflow.heads import EmbedHead
from bowflow.losses import float32
from bowflow.roles.base import register_method
from bowflow.roles.distiller import Distiller, DistillParams

# ---------------------------------------------------------------- loss


@float32
def cc_loss(s_emb: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
    """Correlation congruence as the benchmark computes it (RepDistiller's `Correlation`,
        from code the CC authors sent; RepDistiller's gamma = 0.02 is tuned for it:
    https://github.com/HobbitLong/RepDistiller).

        s_emb, t_emb [B, D]: the two networks' pooled features through their own trainable,
        UNnormalised linear embeddings (`EmbedHead(..., normalize=False)`); t_emb is NOT
        detached (its head is trained too). With delta_i = |s_i - t_i| [D] for image i of
        the batch, loss = mean over the B - 1 neighbouring pairs (i, i + 1) of
        sum_d delta_i,d * delta_i+1,d. It is not the paper's kernel-matrix congruence: it
        compares each image's two embeddings and couples consecutive images only. 0 when
        the embeddings agree; B >= 2.
    """
    if s_emb.shape[0] < 2:
        raise ValueError(f"cc_loss needs a batch of at least 2, got {s_emb.shape[0]}")
    delta = (s_emb - t_emb).abs()  # [B, D]
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


@dataclass
class CCParams(DistillParams):
    method: str = "cc"
    gamma: float = param(0.02, "correlation weight (the benchmark's 0.02)")
    embed_dim: int = param(128, "embedding size of both sides (the benchmark's 128)", above=0)


@register_method("cc")
class CC(Distiller):
    label = "CC"
    Params = CCParams
    params: CCParams  # an instance of Params (typing only)
    # Neighbouring images (i, i + 1) of the global batch are coupled, across process
    # boundaries too: both embeddings are gathered and every process computes the global term.
    batch_spanning = ("neighbouring pairs",)

    def build_extras(self, student_channels, teacher_channels, inputs):
        self.embed_student = EmbedHead(student_channels[-1], self.params.embed_dim, normalize=False)
        self.embed_teacher = EmbedHead(teacher_channels[-1], self.params.embed_dim, normalize=False)

    def method_loss(self, student, teacher, labels, index, views):
        return cc_loss(
            distributed.gather(self.embed_student(student.pooled)),  # [B, D]
            distributed.gather(self.embed_teacher(teacher.pooled)),
        )  # trained head
