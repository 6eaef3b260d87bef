"""Role: supervised from labels. Runs are entries of `teachers:` (the teachers that distillation compresses,
and the vanilla students the distilled ones are compared with; the IFACD paper's CIFAR-100 recipe: Rios et al.,
https://github.com/arkel23/layerwiseclr), trained by stages.distill on every labelled train image. The role is
itself a complete method (`methods/supervised.py` registers it); the distillers (`bowflow.roles.distiller`)
extend it.

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
from bowflow.checks import param
from bowflow.data.prepared import load_labelled_split
from bowflow.losses import embedding_std
from bowflow.roles.base import ImageInputs, Method, TrainParams


@dataclass
class LabelledInputs(ImageInputs):
    labels: torch.Tensor  # [N] int64: the class of each training image
    num_classes: int  # K, classes of the prepared data (the classifier's outputs)


@dataclass
class SupervisedParams(TrainParams):
    method: str = "supervised"
    epochs: int = field(default=240, metadata={"help": "the distillation benchmark's 240 epochs"})
    batch_size: int = field(default=64, metadata={"help": "images per step (the benchmark's 64)"})
    lr: float = field(
        default=0.05,
        metadata={"help": "peak SGD lr (0.05 in the benchmark; 0.01 for its small-student ShuffleNet/MobileNet)"},
    )
    warmup_epochs: float = field(default=0.0, metadata={"help": "the benchmark starts at full lr"})
    lr_schedule: str = field(default="step", metadata={"help": "step: x0.1 at lr_decay_at"})
    padding: int = param(4, "zero padding of the random crop, pixels (4 of 32 in the CIFAR recipe)", low=0)
    max_images: int = param(
        0,
        "train on a seeded subset of this many labelled train images (0 = all; "
        "the same subset for every run of a seed, so teachers and students see "
        "the same images)",
        low=0,
    )


class Supervised(Method):
    """A backbone and a linear classifier trained with cross-entropy on the labels."""

    role = "supervised"
    section = "teachers"
    stage = "teacher"
    label = "Supervised"
    Inputs: type[LabelledInputs] = LabelledInputs
    Params = SupervisedParams
    params: SupervisedParams  # an instance of Params (typing only)
    # tests/test_method_learning.py: the student's test top-1 93.0, untrained 25.0 (measured, seed 0)
    learning_recipe = {"epochs": 6, "padding": 2}

    @classmethod
    def training_images(cls, prepared, params):
        """Every labelled train row (a seeded subset of `params.max_images` when above 0)."""
        return load_labelled_split(prepared, "train", params.max_images)

    def __init__(self, params, backbone, inputs: LabelledInputs):
        super().__init__(params, backbone, inputs)
        self.num_classes = int(inputs.num_classes)
        self.labels: torch.Tensor
        self.register_buffer("labels", inputs.labels.long().clone(), persistent=False)
        self.classifier = nn.Linear(backbone.out_channels, self.num_classes)

    def views(self, images, index, generator):
        """uint8 [B, 3, H, W] -> {"crops": cropped, flipped float [B, 3, H, W] in [0, 1]}
        (the one random draw of a step: each sample's crop offset and flip)."""
        return {
            "crops": augment.pad_crop_flip(augment.to_float(images), padding=self.params.padding, generator=generator)
        }

    def step(self, views, index):
        """Per-sample cross-entropy averaged over this process's rows: nothing spans the batch."""
        features = self.backbone(self.normalizer.normalize(views["crops"]))  # [B, C]
        logits = self.classifier(features)  # [B, K]
        labels = self.labels[index]
        loss = F.cross_entropy(logits, labels)
        return loss, {"loss": loss.detach(), **self.batch_stats(features, logits, labels)}

    @staticmethod
    @torch.no_grad()
    def batch_stats(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict:
        """Training top-1 (%) of logits [B, K] and the collapse monitor of features [B, C]."""
        return {
            "train_top1": (logits.argmax(1) == labels).float().mean() * 100,
            "embedding_std": embedding_std(features),
        }

    def export_extra(self) -> dict:
        return {
            "classifier": {k: v.detach().cpu() for k, v in self.classifier.state_dict().items()},
            "num_classes": self.num_classes,
        }
