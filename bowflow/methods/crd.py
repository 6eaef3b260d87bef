"""Contrastive representation distillation (Tian et al., ICLR 2020): the student's
embedding of an image must pick out the teacher's embedding of the same image among
many others, held in memory banks over the dataset's indices.

Both pooled features pass a linear embedding (128-d, L2-normalised, both trainable);
`ContrastiveMemory` keeps one student and one teacher embedding per training image
(buffers: they are checkpointed and survive resume), draws `negatives` indices per image
from the images of the other classes (the authors' CIFAR recipe; `other_class_negatives`),
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
        labels = labels.long().cpu()
        self.labels = labels
        self.order = torch.argsort(labels, stable=True)                        # [N]
        counts = torch.bincount(labels)                                       # [C]
        self.start = torch.cumsum(counts, 0) - counts                         # [C] block starts
        self.count = counts
        if (counts == len(labels)).any():
            raise ValueError("CRD draws its negatives from other classes, but every training "
                             "image has the same label")

    def __call__(self, index: torch.Tensor, k: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else torch.device("cpu")
        label = self.labels[index.cpu()]                                      # [B]
        pool = (len(self.labels) - self.count[label]).to(device)              # [B] other-class images
        u = (torch.rand(len(index), k, generator=generator, device=device)
             * pool.unsqueeze(1)).long().clamp_max_(pool.unsqueeze(1) - 1).cpu()
        start, count = self.start[label].unsqueeze(1), self.count[label].unsqueeze(1)
        position = u + (u >= start).long() * count                            # skip the own block
        return self.order[position].to(index.device)


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
