"""Role: a distiller of a frozen teacher. Runs are entries of `distill:`, trained by
stages.distill on every labelled train image with the model of a `teachers:` entry. What
every distillation method shares: the frozen teacher, the student's classifier, and the
loss alpha * CE + beta * KD + gamma * L_method (METHODS.md, "Knowledge distillation").

A distillation method is one module in `bowflow/methods/` that subclasses `Distiller`,
builds its trainable extras (adapters, embedding heads, memory banks) in `build_extras`,
and computes its own term in `method_loss`, with its loss function in the same module.
The teacher is loaded by the stage from its model file (`load_teacher`) and given in
`inputs.teacher`. It is frozen, in eval mode, and never
registered as a submodule: not in the optimizer, not in `state_dict()` (so not in
checkpoints or the exported model); the model file records only its name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bowflow.checks import param
from bowflow.frozen_teacher import Outputs, Teacher
from bowflow.losses import float32
from bowflow.networks import Backbone
from bowflow.roles.supervised import LabelledInputs, Supervised, SupervisedParams
from bowflow.soft_targets import kl_to_target

# ---------------------------------------------------------------- shared by the distillers


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger of two maps [B, C, H, W] to the other's H x W
    (RepDistiller's rule for AT, NST and VID); maps of equal size are returned unchanged."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    if a.shape[-2] * a.shape[-1] > b.shape[-2] * b.shape[-1]:
        return F.adaptive_avg_pool2d(a, (b.shape[-2], b.shape[-1])), b
    return a, F.adaptive_avg_pool2d(b, (a.shape[-2], a.shape[-1]))


@float32
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton's KD: KL(p_t || p_s) * T^2 with p = softmax(logits / T), mean over the batch.

    student_logits, teacher_logits [B, K] (teacher detached here). The KL is
    `soft_targets.kl_to_target` (shared with OBoW). The T^2 keeps the gradient's size
    comparable to the cross-entropy term as T changes. T = 4 (RepDistiller's benchmark,
    https://github.com/HobbitLong/RepDistiller). 0 when the logits agree up to a per-row constant.
    """
    target = F.softmax(teacher_logits.detach() / temperature, dim=1)
    return kl_to_target(student_logits / temperature, target) * temperature**2


def check_same_stages(method: str, student_channels: list[int], teacher_channels: list[int]) -> None:
    """Stage-by-stage methods (AT, VID, NST) pair the i-th stages of both networks."""
    if len(student_channels) != len(teacher_channels):
        raise ValueError(
            f"{method} pairs the networks' stages one to one, but the student has "
            f"{len(student_channels)} stages and the teacher {len(teacher_channels)}"
        )


@dataclass
class DistillParams(SupervisedParams):
    teacher: str = param("", "the teachers: entry distilled from (recorded)")
    alpha: float = param(1.0, "weight of cross-entropy on the labels", low=0)
    beta: float = param(1.0, "weight of KL to the teacher at temperature T", low=0)
    gamma: float = param(0.0, "weight of the method's own term", low=0)
    temperature: float = param(4.0, "KD temperature T (the KL is scaled by T^2); 4 in the benchmark", above=0)


@dataclass
class DistillInputs(LabelledInputs):
    teacher: Teacher  # the frozen teacher (not a submodule: never trained or saved)


class Distiller(Supervised):
    """Supervised training of the student plus a frozen teacher's guidance."""

    role = "distiller"
    section = "distill"
    stage = "distill"
    label = "Distiller"
    Inputs = DistillInputs
    Params = DistillParams
    params: DistillParams  # an instance of Params (typing only)
    # Every distiller's learning recipe (tests/test_method_learning.py), the supervised one;
    # CRD and IFACD add their head sizes to it. Student's test top-1, untrained 25.0 (measured,
    # seed 0): AT 61.7, SP 82.8, IFACD 83.6, CRD 85.9, FitNet 88.7, NST 90.2, PKT 92.2,
    # RKD 96.5, CC 97.7, KD 98.4, VID 98.4.
    learning_recipe = {"epochs": 6, "padding": 2}

    def __init__(self, params, backbone, inputs: DistillInputs):
        super().__init__(params, backbone, inputs)
        teacher = inputs.teacher
        self.teacher: Teacher
        object.__setattr__(self, "teacher", teacher)  # not a submodule: frozen, never saved
        self.check_pair(params, backbone, teacher.backbone)
        self.build_extras(backbone.channels, teacher.backbone.channels, inputs)

    @classmethod
    def check_pair(cls, params: DistillParams, student: Backbone, teacher: Backbone) -> None:
        """Raise ValueError if this method cannot pair these two networks (check_params calls
        it before any training). Default: any pair."""

    def build_extras(self, student_channels: list[int], teacher_channels: list[int], inputs: DistillInputs) -> None:
        """Create the method's trainable modules (adapters, heads, memory). Default: none."""

    def method_loss(
        self,
        student: Outputs,
        teacher: Outputs,
        labels: torch.Tensor,
        index: torch.Tensor,
        views: dict[str, torch.Tensor],
    ) -> torch.Tensor | None:
        """The method's own term L_method (scalar), or None for plain KD.

        student, teacher: both networks' `Outputs` on this process's rows; labels, index [b]
        and `views` (this process's rows of what `views` drew: "crops", a method's sampled
        negatives) likewise. Under torchrun a term that spans the batch (Gram matrices,
        pairwise relations, negatives) gathers its inputs with `bowflow.distributed.gather`
        and computes the global batch's term, the same on every process (see `step`)."""
        return None

    def student_outputs(self, x: torch.Tensor) -> Outputs:
        maps, pooled = self.backbone.distill_features(self.normalizer.normalize(x))
        return Outputs(maps, pooled, self.classifier(pooled))

    def step(self, views, index):
        """alpha * CE + beta * KD + gamma * L_method on this process's rows of the views
        (`Supervised.views`: the crops, which student and teacher both see).

        CE and KD are per-sample means over the rows: averaged over processes (DDP) they
        are the global batch's. L_method is either per-sample too, or (a batch-spanning
        term) the global batch's value on every process, from gathered tensors: its
        gradient reaches each row's owner once per process (the gather's backward sums),
        and DDP's average over processes divides that back to the global gradient."""
        x = views["crops"]  # [b, 3, H, W]
        student, teacher = self.student_outputs(x), self.teacher(x)
        labels = self.labels[index]
        p = self.params
        ce = F.cross_entropy(student.logits, labels)
        kd = kd_loss(student.logits, teacher.logits, p.temperature)
        loss = p.alpha * ce + p.beta * kd
        stats = {"ce": ce.detach(), "kd": kd.detach()}
        extra = self.method_loss(student, teacher, labels, index, views)
        if extra is not None:
            loss = loss + p.gamma * extra
            stats["method_loss"] = extra.detach()
        return loss, {"loss": loss.detach(), **stats, **self.batch_stats(student.pooled, student.logits, labels)}

    def export_extra(self) -> dict:
        return {**super().export_extra(), "teacher": self.params.teacher}
