"""Contrastive representation distillation (Tian et al., ICLR 2020): the student's
embedding of an image must pick out the teacher's embedding of the same image among
many others, held in memory banks over the dataset's indices.

Both pooled features pass a linear embedding (128-d, L2-normalised, both trainable);
`ContrastiveMemory` keeps one student and one teacher embedding per training image
(buffers: they are checkpointed and survive resume), draws `negatives` indices per image
from the images of the other classes (the authors' CIFAR recipe; `OtherClassSampler`),
and scores with NCE at temperature 0.07 (momentum 0.5 bank update). gamma = 0.8, the
benchmark's weight.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bowflow.contrastive_distill import ContrastiveMemory, EmbedHead
from bowflow.distill import DistillParams, Distiller
from bowflow.methods.base import positive, register_method


@dataclass
class CRDParams(DistillParams):
    method: str = "crd"
    gamma: float = field(default=0.8, metadata={"help": "CRD weight (the benchmark's 0.8)"})
    embed_dim: int = field(default=128, metadata={"help": "embedding size (CRD's 128)"})
    negatives: int = field(default=16384, metadata={
        "help": "noise samples per image (CRD's 16384; capped at the training images - 1)"})
    nce_temperature: float = field(default=0.07, metadata={"help": "NCE temperature (CRD's 0.07)"})
    memory_momentum: float = field(default=0.5, metadata={"help": "bank update momentum (CRD's 0.5)"})

    def validate(self) -> None:
        super().validate()
        for name in ("embed_dim", "negatives", "nce_temperature"):
            positive(name, getattr(self, name))


class OtherClassSampler:
    """Draws CRD's negatives: for each image, K dataset indices uniformly (with replacement)
    among the images whose label differs from its own.

    labels [N] -> sampler; sampler(index [B], k, generator) -> [B, K] on index's device.
    The dataset's indices are sorted by class once (`order`); an image of class c draws a
    position u in [0, N - n_c) of the sorted list with class c's block cut out.
    """

    def __init__(self, labels: torch.Tensor):
        self.labels = labels.long()                                           # [N], on the run's device
        self.order = torch.argsort(self.labels, stable=True)                  # [N]
        self.count = torch.bincount(self.labels)                              # [C]
        self.start = torch.cumsum(self.count, 0) - self.count                 # [C] block starts
        if (self.count == len(self.labels)).any():
            raise ValueError("CRD draws its negatives from other classes, but every training "
                             "image has the same label")

    def __call__(self, index: torch.Tensor, k: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(len(index), k, generator=generator, device=device).to(self.labels.device)
        label = self.labels[index.to(self.labels.device)]                     # [B]
        pool = (len(self.labels) - self.count[label]).unsqueeze(1)            # [B, 1] other-class images
        u = (u * pool).long().clamp_max_(pool - 1)                            # [B, K]
        start, count = self.start[label].unsqueeze(1), self.count[label].unsqueeze(1)
        return self.order[u + (u >= start).long() * count].to(index.device)   # skip the own block


@register_method("crd")
class CRD(Distiller):
    label = "CRD"
    Params = CRDParams

    def build_extras(self, student_channels, teacher_channels, context):
        p = self.params
        self.embed_student = EmbedHead(student_channels[-1], p.embed_dim)
        self.embed_teacher = EmbedHead(teacher_channels[-1], p.embed_dim)
        self.memory = ContrastiveMemory(len(context["labels"]), p.embed_dim, p.negatives,
                                        p.nce_temperature, p.memory_momentum)
        self.sample_negatives = OtherClassSampler(context["labels"])
        self.generator = None

    def training_step(self, images, index, generator):
        self.generator = generator            # the trainer's per-epoch generator: seeded draws
        return super().training_step(images, index, generator)

    def method_loss(self, student, teacher, labels, index):
        negatives = self.sample_negatives(index, self.memory.n_negatives, self.generator)
        return self.memory(self.embed_student(student.pooled), self.embed_teacher(teacher.pooled),
                           index, negatives=negatives)
