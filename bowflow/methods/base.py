"""The method boundary: what a teacher-student method supplies to the shared trainer.

A method owns its views (augmentations), its targets (from a frozen teacher, a cached
vocabulary, an EMA teacher, labels...), its head(s) and its loss. The trainer owns
everything else: data order, optimisation, schedules, checkpoints, logging. A new method
(OBoW, BYOL, SimSiam, DINO, Barlow Twins, KD, CRD...) is one module in this package: a
`Method` subclass registered with `@register_method("name")` plus a `Params` dataclass
(extending `TrainParams`) with its hyperparameters. The hooks, each with a default that
suits RotNet and BoWNet:

    optimizer_groups()          parameter groups (lr_scale, fixed_lr, weight decay, LARS)
    configure_schedule(s, t)    told the steps per epoch and total steps before training
    training_step(...)          -> (loss, stats); stats['embedding_std'] (losses.embedding_std)
                                is checked against params.collapse_std every epoch
    before_optimizer_step(step) after backward, before the step (freeze a layer's grads)
    after_step(step, total)     after the step (EMA teachers, queues)
    export_backbone()           the network the evaluate stage gets (DINO: the EMA teacher)
    export_extra()              more to store in model.pt (a classifier head)

Everything a method keeps between steps (EMA networks, queues, centres, prototypes,
running statistics) must be a submodule, parameter or persistent buffer, so that it is in
`state_dict()` and a killed run resumes bit-for-bit from its checkpoint.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bowflow.networks import ARCHITECTURES, OWN_SIZES, Backbone, check_size
from bowflow.optim import OPTIMIZERS, SCHEDULES, default_groups

METHODS: dict[str, type["Method"]] = {}


def register_method(name: str):
    def wrap(cls):
        cls.name = name
        cls.label = cls.__dict__.get("label") or name
        METHODS[name] = cls
        return cls
    return wrap


def method_modules() -> list[str]:
    """The method modules of this package (every file but base.py and __init__.py)."""
    folder = Path(__file__).parent
    return sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("base", "__init__"))


def available_methods() -> list[str]:
    """Every registered method name (imports every method module)."""
    for module in method_modules():
        importlib.import_module(f"bowflow.methods.{module}")
    return sorted(METHODS)


def get_method(name: str) -> type["Method"]:
    """The method class registered as `name`.

    Methods load lazily: `bowflow/methods/<name>.py` is imported only when a run names it
    (a module may register several names; then every module is imported to find it). So
    a training stage runs, and depends on, its own method's file and no other method's.
    """
    if name not in METHODS and name in method_modules():
        importlib.import_module(f"bowflow.methods.{name}")
    if name not in METHODS and name not in available_methods():
        raise ValueError(f"unknown method '{name}': expected one of {available_methods()}")
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
    width: int = field(default=32, metadata={"help": "convnet/resnet: stage-1 channels; wrn: widening "
                                                     "factor; named archs (resnet56, wrn_40_2, vgg8...): 0"})
    depth: int = field(default=0, metadata={"help": "resnet 18/34, wrn 6n+4; ignored by convnet; "
                                                    "named archs: 0"})
    epochs: int = field(default=30, metadata={"help": "passes over the training images"})
    batch_size: int = field(default=128, metadata={"help": "images per step"})
    lr: float = field(default=0.1, metadata={"help": "peak SGD learning rate"})
    momentum: float = 0.9
    weight_decay: float = field(default=5e-4, metadata={"help": "L2 on weights (not on BN/bias/scale)"})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear lr warm-up, then the schedule"})
    lr_schedule: str = field(default="cosine", metadata={"help": "cosine (to 0) | step (x0.1 at lr_decay_at)"})
    lr_decay_at: list[float] = field(default_factory=lambda: [0.625, 0.75, 0.875], metadata={
        "help": "step schedule: fractions of the run where lr drops x0.1 (150/180/210 of 240 epochs)"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd (Nesterov) | lars | adamw"})
    clip_grad: float = field(default=0.0, metadata={"help": "max global gradient L2 norm (0 = off; "
                                                            "DINO clips at 3.0)"})
    collapse_std: float = field(default=0.01, metadata={
        "help": "stop when the epoch's embedding_std (per-dimension std of L2-normalised "
                "embeddings x sqrt(D): ~1 spread, 0 collapsed) falls below this; 0 = off"})

    def validate(self) -> None:
        get_method(self.method)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got '{self.optimizer}'")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {list(SCHEDULES)}, got '{self.lr_schedule}'")
        if not all(0.0 < f < 1.0 for f in self.lr_decay_at) or list(self.lr_decay_at) != sorted(self.lr_decay_at):
            raise ValueError(f"lr_decay_at must be increasing fractions of the run in (0, 1), "
                             f"got {self.lr_decay_at}")
        positive("clip_grad", self.clip_grad, allow_zero=True)
        positive("collapse_std", self.collapse_std, allow_zero=True)
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got '{self.arch}'")
        if self.arch in OWN_SIZES:             # fixed size: width/depth 0 (its own) or its own
            check_size(self.arch, self.width, self.depth)
        else:
            positive("width", self.width)
        for name in ("epochs", "batch_size", "lr"):
            positive(name, getattr(self, name))
        positive("weight_decay", self.weight_decay, allow_zero=True)
        positive("warmup_epochs", self.warmup_epochs, allow_zero=True)
        fraction("momentum", self.momentum)

    def check_parent(self, parent: "TrainParams") -> None:
        """Raise ValueError if this run cannot start from `parent`'s model (default: any)."""


class Method(nn.Module):
    """A trainable method around a backbone.

    Subclasses implement `training_step`; `summarize` may derive epoch metrics from the
    epoch means of the step statistics. `context` carries what the stage loaded for the
    method (e.g. cached BoW codes of the training images, a parent model).
    """

    name = "base"
    label = ""            # how reports name the method ("BYOL"); defaults to `name`
    # Inputs only a particular stage gives the method (BoWNet: the vocab stage's codes). A
    # method without any trains as a run of `pretrain:` on images (and labels) alone.
    stage_inputs: tuple[str, ...] = ()
    # True for methods trained on labels that export a classifier (`teachers:` entries).
    supervised = False
    Params = TrainParams

    def __init__(self, params: TrainParams, backbone: Backbone, context: dict[str, Any]):
        super().__init__()
        self.params = params
        self.backbone = backbone
        self.steps_per_epoch, self.total_steps = 1, 1

    def optimizer_groups(self) -> list[dict]:
        """Parameter groups for the optimizer (see bowflow.optim for the keys)."""
        return default_groups(self, self.params.weight_decay)

    def configure_schedule(self, steps_per_epoch: int, total_steps: int) -> None:
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps

    def training_step(self, images: torch.Tensor, index: torch.Tensor,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """images uint8 [B, 3, H, W] on the device, index [B] (rows of the training set)
        -> (scalar loss, {name: scalar tensor} batch statistics)."""
        raise NotImplementedError

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        return means

    def before_optimizer_step(self, step: int) -> None:
        """After backward, before the optimizer step (e.g. DINO zeroes its last layer's
        gradients during the first epoch). Default: nothing."""

    def after_step(self, step: int, total_steps: int) -> None:
        """Hook for EMA teachers, queues, temperature schedules. Default: nothing."""

    def export_backbone(self) -> Backbone:
        """The backbone written to model.pt and evaluated. Default: the trained one."""
        return self.backbone

    def export_extra(self) -> dict[str, Any]:
        """More of the model to store in model.pt beside the backbone (a supervised method:
        its classifier's weights). Default: nothing."""
        return {}

