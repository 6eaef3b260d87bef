"""The method boundary: what a teacher-student method supplies to the shared trainer.

A method owns its views (augmentations), its targets (from a frozen teacher, a cached
vocabulary, an EMA teacher, labels...), its head(s) and its loss. The trainer owns
everything else: data order, optimisation, schedules, checkpoints, logging. A new method
(OBoW, BYOL, SimSiam, DINO, Barlow Twins, KD, CRD...) is a subclass registered with
`@register_method("name")` plus a `Params` dataclass with its hyperparameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from bowflow.networks import ARCHITECTURES, Backbone

METHODS: dict[str, type["Method"]] = {}


def register_method(name: str):
    def wrap(cls):
        cls.name = name
        METHODS[name] = cls
        return cls
    return wrap


def get_method(name: str) -> type["Method"]:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}': expected one of {sorted(METHODS)}")
    return METHODS[name]


def positive(name: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def fraction(name: str, value: float, low_open: bool = False) -> None:
    if not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")


@dataclass
class TrainParams:
    """Hyperparameters every trained model shares (one section of params.yaml)."""

    method: str = field(default="rotnet", metadata={"help": "registered method name"})
    arch: str = field(default="convnet", metadata={"help": "registered backbone"})
    width: int = field(default=32, metadata={"help": "convnet/resnet: stage-1 channels; wrn: widening factor"})
    depth: int = field(default=0, metadata={"help": "resnet 18/34, wrn 6n+4; ignored by convnet"})
    epochs: int = field(default=30, metadata={"help": "passes over the training images"})
    batch_size: int = field(default=128, metadata={"help": "images per step"})
    lr: float = field(default=0.1, metadata={"help": "peak SGD learning rate"})
    momentum: float = 0.9
    weight_decay: float = field(default=5e-4, metadata={"help": "L2 on weights (not on BN/bias/scale)"})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear lr warm-up, then cosine to 0"})

    def validate(self) -> None:
        get_method(self.method)
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got '{self.arch}'")
        for name in ("width", "epochs", "batch_size", "lr"):
            positive(name, getattr(self, name))
        positive("weight_decay", self.weight_decay, allow_zero=True)
        positive("warmup_epochs", self.warmup_epochs, allow_zero=True)
        fraction("momentum", self.momentum)


class Method(nn.Module):
    """A trainable method around a backbone.

    Subclasses implement `training_step`; `summarize` may derive epoch metrics from the
    epoch means of the step statistics. `context` carries what the stage loaded for the
    method (e.g. cached BoW codes of the training images, a parent model).
    """

    name = "base"
    Params = TrainParams

    def __init__(self, params: TrainParams, backbone: Backbone, context: dict[str, Any]):
        super().__init__()
        self.params = params
        self.backbone = backbone

    def training_step(self, images: torch.Tensor, index: torch.Tensor,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """images uint8 [B, 3, H, W] on the device, index [B] (rows of the training set)
        -> (scalar loss, {name: scalar tensor} batch statistics)."""
        raise NotImplementedError

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        return means

    def after_step(self, step: int, total_steps: int) -> None:
        """Hook for EMA teachers, queues, temperature schedules. Default: nothing."""
