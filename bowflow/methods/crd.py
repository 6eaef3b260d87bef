"""Contrastive representation distillation (Tian et al., ICLR 2020): the student's
embedding of an image must pick out the teacher's embedding of the same image among
many others, held in memory banks over the dataset's indices.

Both pooled features pass a linear embedding (128-d, L2-normalised, both trainable);
`ContrastiveMemory` keeps one student and one teacher embedding per training image
(buffers: they are checkpointed and survive resume), draws `negatives` other indices
uniformly per image, and scores with NCE at temperature 0.07 (momentum 0.5 bank update).
gamma = 0.8, the benchmark's weight. The paper's CIFAR recipe draws negatives from other
classes only; uniform draws are the simpler variant (they rarely hit the same image).
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
        self.generator = None

    def training_step(self, images, index, generator):
        self.generator = generator            # the trainer's per-epoch generator: seeded draws
        return super().training_step(images, index, generator)

    def method_loss(self, student, teacher, labels, index):
        return self.memory(self.embed_student(student.pooled), self.embed_teacher(teacher.pooled),
                           index, generator=self.generator)
