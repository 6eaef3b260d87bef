"""What every distillation method shares: a frozen teacher, the student's classifier, and
the loss alpha * CE + beta * KD + gamma * L_method (METHODS.md, "Knowledge distillation").

A distillation method is one module in `bowflow/methods/` that subclasses `Distiller`,
builds its trainable extras (adapters, embedding heads, memory banks) in `build_extras`,
and computes its own term in `method_loss`; its loss functions live in
`bowflow/distill_losses.py`. The teacher is loaded by the stage from its model file
(`load_teacher`) and given in `context["teacher"]`. It is frozen, in eval mode, and never
registered as a submodule: not in the optimizer, not in `state_dict()` (so not in
checkpoints or the exported model); the model file records only its name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bowflow import augment
from bowflow.distill_losses import kd_loss
from bowflow.methods.base import positive
from bowflow.methods.supervised import Supervised, SupervisedParams
from bowflow.models import Normalizer, load_classifier, load_model
from bowflow.networks import Backbone


@dataclass
class Outputs:
    """One network's outputs on a batch of B images."""

    maps: list[torch.Tensor]        # stage maps [B, C_i, H_i, W_i]: the benchmark's feat[1:-1]
    pooled: torch.Tensor            # pre-logit feature [B, C]: the benchmark's feat[-1]
    logits: torch.Tensor            # [B, K]


class Teacher:
    """A frozen supervised model: backbone + classifier in eval mode, no gradients."""

    def __init__(self, backbone: Backbone, normalizer: Normalizer, classifier: nn.Linear, name: str = ""):
        self.backbone, self.normalizer, self.classifier, self.name = backbone, normalizer, classifier, name
        for module in (backbone, classifier):
            module.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> Outputs:
        """x float [B, 3, H, W] in [0, 1] (the student's augmented batch) -> Outputs."""
        maps, pooled = self.backbone.distill_features(self.normalizer.normalize(x))
        return Outputs(maps, pooled, self.classifier(pooled))


def load_teacher(path: str | Path, device: torch.device | str = "cpu") -> Teacher:
    """The teacher a distillation run names, from its model file (a supervised run's)."""
    backbone, normalizer, record = load_model(path, device)
    return Teacher(backbone, normalizer, load_classifier(record, path).to(device), record.get("name", ""))


def check_same_stages(method: str, student_channels: list[int], teacher_channels: list[int]) -> None:
    """Stage-by-stage methods (AT, VID, NST) pair the i-th stages of both networks."""
    if len(student_channels) != len(teacher_channels):
        raise ValueError(f"{method} pairs the networks' stages one to one, but the student has "
                         f"{len(student_channels)} stages and the teacher {len(teacher_channels)}")


@dataclass
class DistillParams(SupervisedParams):
    teacher: str = field(default="", metadata={"help": "the teachers: entry distilled from (recorded)"})
    alpha: float = field(default=1.0, metadata={"help": "weight of cross-entropy on the labels"})
    beta: float = field(default=1.0, metadata={"help": "weight of KL to the teacher at temperature T"})
    gamma: float = field(default=0.0, metadata={"help": "weight of the method's own term"})
    temperature: float = field(default=4.0, metadata={"help": "KD temperature T (the KL is scaled "
                                                               "by T^2); 4 in the benchmark"})

    def validate(self) -> None:
        super().validate()
        for name in ("alpha", "beta", "gamma"):
            positive(name, getattr(self, name), allow_zero=True)
        positive("temperature", self.temperature)


class Distiller(Supervised):
    """Supervised training of the student plus a frozen teacher's guidance."""

    label = "Distiller"
    Params = DistillParams
    stage_inputs = ("teacher",)

    def __init__(self, params, backbone, context):
        super().__init__(params, backbone, context)
        teacher = context["teacher"]
        object.__setattr__(self, "teacher", teacher)      # not a submodule: frozen, never saved
        self.check_pair(params, backbone, teacher.backbone)
        self.build_extras(backbone.channels, teacher.backbone.channels, context)

    @classmethod
    def check_pair(cls, params: DistillParams, student: Backbone, teacher: Backbone) -> None:
        """Raise ValueError if this method cannot pair these two networks (check_params calls
        it before any training). Default: any pair."""

    def build_extras(self, student_channels: list[int], teacher_channels: list[int], context: dict) -> None:
        """Create the method's trainable modules (adapters, heads, memory). Default: none."""

    def method_loss(self, student: Outputs, teacher: Outputs, labels: torch.Tensor,
                    index: torch.Tensor) -> torch.Tensor | None:
        """The method's own term L_method (scalar), or None for plain KD."""
        return None

    def student_outputs(self, x: torch.Tensor) -> Outputs:
        maps, pooled = self.backbone.distill_features(self.normalizer.normalize(x))
        return Outputs(maps, pooled, self.classifier(pooled))

    def training_step(self, images, index, generator):
        x = augment.pad_crop_flip(augment.to_float(images), padding=self.params.padding,
                                  generator=generator)                     # [B, 3, H, W]
        student, teacher = self.student_outputs(x), self.teacher(x)
        labels = self.labels[index]
        p = self.params
        ce = F.cross_entropy(student.logits, labels)
        kd = kd_loss(student.logits, teacher.logits, p.temperature)
        loss = p.alpha * ce + p.beta * kd
        stats = {"ce": ce.detach(), "kd": kd.detach()}
        extra = self.method_loss(student, teacher, labels, index)
        if extra is not None:
            loss = loss + p.gamma * extra
            stats["method_loss"] = extra.detach()
        return loss, {"loss": loss.detach(), **stats,
                      **self.batch_stats(student.pooled, student.logits, labels)}

    def export_extra(self) -> dict:
        return {**super().export_extra(), "teacher": self.params.teacher}
