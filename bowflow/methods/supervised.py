"""Supervised training from labels: the teachers that distillation compresses, and the
vanilla students the distilled ones are compared with (IFACD talk, its CIFAR-100 recipe).

Input: the standard CIFAR crop-with-padding + flip. Network: the backbone, global average
pool, then `classifier` = linear(C, num_classes). Loss: cross-entropy on the labels.
The recipe's defaults: SGD momentum 0.9, lr 0.05, weight decay 5e-4, batch 64, 240 epochs,
lr x0.1 at epochs 150/180/210 (`lr_schedule: step`, `lr_decay_at: [0.625, 0.75, 0.875]`),
no warm-up. The classifier is exported with the backbone (`export_extra`), so a distilled
student's teacher gives logits, and the stage reports top-1 from the exported model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from bowflow import augment
from bowflow.losses import embedding_std
from bowflow.methods.base import Method, TrainParams, positive, register_method


@dataclass
class SupervisedParams(TrainParams):
    method: str = "supervised"
    epochs: int = field(default=240, metadata={"help": "the distillation benchmark's 240 epochs"})
    batch_size: int = field(default=64, metadata={"help": "images per step (the benchmark's 64)"})
    lr: float = field(default=0.05, metadata={"help": "peak SGD lr (0.05 in the benchmark; 0.01 "
                                                      "for its small-student ShuffleNet/MobileNet)"})
    warmup_epochs: float = field(default=0.0, metadata={"help": "the benchmark starts at full lr"})
    lr_schedule: str = field(default="step", metadata={"help": "step: x0.1 at lr_decay_at"})
    padding: int = field(default=4, metadata={"help": "zero padding of the random crop, pixels "
                                                      "(4 of 32 in the CIFAR recipe)"})
    max_images: int = field(default=0, metadata={
        "help": "train on a seeded subset of this many labelled train images (0 = all; the same "
                "subset for every run of a seed, so teachers and students see the same images)"})

    def validate(self) -> None:
        super().validate()
        positive("padding", self.padding, allow_zero=True)
        positive("max_images", self.max_images, allow_zero=True)


@register_method("supervised")
class Supervised(Method):
    """A backbone and a linear classifier trained with cross-entropy on the labels."""

    label = "Supervised"
    supervised = True
    Params = SupervisedParams

    def __init__(self, params, backbone, context):
        super().__init__(params, backbone, context)
        self.normalizer = context["normalizer"]
        self.num_classes = int(context["num_classes"])
        self.register_buffer("labels", context["labels"].long().clone(), persistent=False)
        self.classifier = nn.Linear(backbone.out_channels, self.num_classes)

    def augmented(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> cropped, flipped, standardised float [B, 3, H, W]."""
        x = augment.pad_crop_flip(augment.to_float(images), padding=self.params.padding,
                                  generator=generator)
        return self.normalizer.normalize(x)

    def training_step(self, images, index, generator):
        features = self.backbone(self.augmented(images, generator))        # [B, C]
        logits = self.classifier(features)                                 # [B, K]
        labels = self.labels[index]
        loss = F.cross_entropy(logits, labels)
        return loss, {"loss": loss.detach(), **self.batch_stats(features, logits, labels)}

    @staticmethod
    @torch.no_grad()
    def batch_stats(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict:
        """Training top-1 (%) of logits [B, K] and the collapse monitor of features [B, C]."""
        return {"train_top1": (logits.argmax(1) == labels).float().mean() * 100,
                "embedding_std": embedding_std(features)}

    def export_extra(self) -> dict:
        return {"classifier": {k: v.detach().cpu() for k, v in self.classifier.state_dict().items()},
                "num_classes": self.num_classes}
