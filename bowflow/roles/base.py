"""The method boundary: what a teacher-student method supplies to the shared trainer, and
the registry that finds a method by name.

A method owns its views (augmentations), its targets (from a frozen teacher, a cached
vocabulary, an EMA teacher, labels...), its head(s) and its loss. The trainer owns
everything else: data order, optimisation, schedules, checkpoints, logging. A method is one
module in `bowflow/methods/`: a subclass of one of the four roles (`bowflow/roles/`)
registered with `@register_method("name")`, plus a `Params` dataclass (extending its
role's) with its hyperparameters. The role fixes what the method receives (`Inputs`, a
typed dataclass the stage fills) and which params section and stage run it:

    role (module)                      params section         stage             Inputs
    SelfSupervised (self_supervised)   pretrain:               stages.pretrain   ImageInputs
    BoWStudent (bow_student)           generations.*.student   stages.student    BoWInputs
    Supervised (supervised)            teachers:               stages.distill    LabelledInputs
    Distiller (distiller)              distill:                stages.distill    DistillInputs

The hooks, each with a default that suits most methods:

    optimizer_groups()          parameter groups (lr_scale, fixed_lr, weight decay, LARS)
    configure_schedule(s, t)    told the steps per epoch and total steps before training
    views(images, index, gen)   every random draw of a step, for the global batch: {name: [B, ...]}
    step(views, index)          -> (loss, stats) on this process's rows; stats['embedding_std']
                                (losses.embedding_std) is checked against params.collapse_std
    batch_spanning              what in its math spans the batch (gathered across processes)
    before_optimizer_step(step) after backward, before the step (freeze a layer's grads)
    after_step(step, total)     after the step (EMA teachers, queues)
    export_backbone()           the network the evaluate stage gets (DINO: the EMA teacher)
    export_extra()              more to store in model.pt (a classifier head)

Everything a method keeps between steps (EMA networks, queues, centres, prototypes,
running statistics) must be a submodule, parameter or persistent buffer, so that it is in
`state_dict()` and a killed run resumes bit-for-bit from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bowflow.checks import check_fields, param
from bowflow.data.prepared import load_ssl_split
from bowflow.models import Normalizer
from bowflow.networks import (
    ARCHITECTURES,
    OWN_SIZES,
    Backbone,
    BackboneSpec,
    check_arch,
    check_arch_params,
    check_size,
    family_of,
)
from bowflow.optim import OPTIMIZERS, SCHEDULES, clip_gradients, default_groups

METHODS: dict[str, type[Method]] = {}
METHODS_PACKAGE = "bowflow.methods"  # the plug-ins: one module per method


def register_method(name: str):
    def wrap(cls):
        cls.name = name
        cls.label = cls.__dict__.get("label") or name
        METHODS[name] = cls
        return cls

    return wrap


def method_modules() -> list[str]:
    """The method modules of bowflow/methods/ (every file but __init__.py)."""
    folder = Path(__file__).resolve().parent.parent / "methods"
    return sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")


def available_methods() -> list[str]:
    """Every registered method name (imports every method module)."""
    for module in method_modules():
        importlib.import_module(f"{METHODS_PACKAGE}.{module}")
    return sorted(METHODS)


def get_method(name: str) -> type[Method]:
    """The method class registered as `name`.

    Methods load lazily: `bowflow/methods/<name>.py` is imported only when a run names it
    (a module may register several names; then every module is imported to find it). So
    a training stage runs, and depends on, its own method's file and no other method's.
    """
    if name not in METHODS and name in method_modules():
        importlib.import_module(f"{METHODS_PACKAGE}.{name}")
    if name not in METHODS and name not in available_methods():
        raise ValueError(f"unknown method '{name}': expected one of {available_methods()}")
    return METHODS[name]


# ---------------------------------------------------------------- what a stage gives a method


@dataclass
class ImageInputs:
    """What every training stage gives its method, whatever the role."""

    normalizer: Normalizer  # per-channel mean/std of the training images
    image_size: int  # pixels: training images are [N, 3, image_size, image_size]


@dataclass
class TrainParams:
    """Hyperparameters every trained model shares (one section of params.yaml)."""

    method: str = param("rotnet", "registered method name")
    arch: str = param(
        "convnet",
        f"registered backbone ({', '.join(sorted(ARCHITECTURES))}) or a "
        "timm model as 'timm/<name>' (timm/resnet18, timm/convnext_atto)",
    )
    width: int = param(
        32, "convnet/resnet: stage-1 channels; wrn: widening factor; named archs (resnet56, wrn_40_2, vgg8...): 0"
    )
    depth: int = param(0, "resnet 18/34, wrn 6n+4; ignored by convnet; named archs: 0")
    arch_params: dict[str, Any] = param(
        {},
        "the arch's own settings beyond width/depth, as its "
        "registered dataclass declares them (bowflow/networks.py "
        "ARCH_PARAMS; vit*, timm/*: drop_path, stochastic depth); "
        "{}: the arch's defaults, every run's network before them",
    )
    epochs: int = param(30, "passes over the training images", above=0)
    batch_size: int = param(128, "images per step", above=0)
    lr: float = param(0.1, "peak SGD learning rate", above=0)
    momentum: float = param(0.9, "SGD momentum", low=0, high=1)
    weight_decay: float = param(5e-4, "L2 on weights (not on BN/bias/scale)", low=0)
    warmup_epochs: float = param(1.0, "linear lr warm-up, then the schedule", low=0)
    lr_schedule: str = param("cosine", "cosine (to 0) | step (x0.1 at lr_decay_at)", choices=tuple(SCHEDULES))
    lr_decay_at: list[float] = param(
        [0.625, 0.75, 0.875],
        "step schedule: fractions of the run where lr drops x0.1 (150/180/210 of 240 epochs)",
        above=0,
        below=1,
    )
    optimizer: str = param("sgd", "sgd (Nesterov) | lars | adamw", choices=tuple(OPTIMIZERS))
    clip_grad: float = param(0.0, "max global gradient L2 norm (0 = off; DINO clips at 3.0)", low=0)
    collapse_std: float = param(
        0.01,
        "stop when the epoch's embedding_std (per-dimension std of "
        "L2-normalised embeddings x sqrt(D): ~1 spread, 0 collapsed) "
        "falls below this; 0 = off",
        low=0,
    )
    sync_bn: bool = param(
        True,
        "under torchrun (resources.*.processes > 1): BatchNorm statistics "
        "over the global batch, as the authors of every method here run "
        "DDP; false: each process normalises its own rows. No effect in "
        "one process",
    )

    def validate(self) -> None:
        """The field constraints (`bowflow.checks`), then what relates fields."""
        get_method(self.method)
        check_fields(self)
        check_arch(self.arch)
        check_arch_params(self.arch, self.arch_params)
        if list(self.lr_decay_at) != sorted(self.lr_decay_at):
            raise ValueError(f"lr_decay_at must be increasing fractions of the run in (0, 1), got {self.lr_decay_at}")
        if self.arch in OWN_SIZES or family_of(self.arch):  # fixed size: width/depth 0 (its own) or its own
            check_size(self.arch, self.width, self.depth)
        elif self.width <= 0:
            raise ValueError(f"width must be > 0, got {self.width}")

    @property
    def backbone_spec(self) -> BackboneSpec:
        """Which backbone the run builds (arch, width, depth, arch_params)."""
        return BackboneSpec.of(self)

    def check_parent(self, parent: TrainParams) -> None:
        """Raise ValueError if this run cannot start from `parent`'s model (default: any)."""


class Method(nn.Module):
    """A trainable method around a backbone. Subclass a role (bowflow/roles/), not this.

    Subclasses implement `views` and `step`; `summarize` may derive epoch metrics from the
    epoch means of the step statistics. `inputs` is the role's `Inputs`, filled by the stage.

    `learning_recipe` is the test's, not the pipeline's (nothing in bowflow/, stages/ or
    workflow/ reads it): the `Params` overrides under which tests/test_method_learning.py
    shows that the method learns on its tiny task (16 px synthetic shapes, a width-8
    convnet, 512 images), a trained model beating the same network untrained. Heads are
    shrunk to that network's 32-d features, crops keep at least half the image
    (`crop_scale_min` 0.5) and epochs are the fewest measured to clear the test's margin with
    room; comments beside each recipe give what it measured. The test adds only its common
    keys (batch size, warm-up) and the network, so a new method brings its recipe here and
    needs no test edit. None (this default): no recipe, which tests/test_method_recipes.py
    refuses; the distillers share their role's (bowflow/roles/distiller.py).
    """

    name = "base"
    label = ""  # how reports name the method ("BYOL"); defaults to `name`
    role = "method"  # set by each role: "self-supervised", "bow-student", ...
    section = ""  # the params.yaml section whose entries run it
    stage = ""  # the pipeline stage (dvc.yaml) that trains it
    Inputs: type = ImageInputs
    Params = TrainParams
    # Under torchrun (bowflow.distributed): what this method's loss shares across the batch,
    # each gathered over processes in `step` ("negatives", "queue", "centre"...; () = every
    # sample's loss is its own). The contract test runs every method on two processes.
    batch_spanning: tuple[str, ...] = ()
    # True: the method works on patch tokens and needs a ViT backbone (MAE); check_params
    # refuses any other arch for it, and the contract tests give it a small ViT.
    token_backbone: bool = False
    # The Params overrides under which tests/test_method_learning.py shows the method learns
    # on its tiny task (see the class docstring); the pipeline never reads it.
    learning_recipe: dict[str, Any] | None = None

    def __init__(self, params: TrainParams, backbone: Backbone, inputs: ImageInputs):
        super().__init__()
        if not isinstance(inputs, self.Inputs):
            raise TypeError(
                f"method '{self.name}' ({self.role}) takes {self.Inputs.__name__}, got {type(inputs).__name__}"
            )
        self.params = params
        self.backbone = backbone
        self.normalizer = inputs.normalizer
        self.steps_per_epoch, self.total_steps = 1, 1

    @classmethod
    def inputs(cls, **given: Any) -> ImageInputs:
        """This role's typed inputs from what a stage (or a test) has: the keys its `Inputs`
        declares, others ignored; a missing one is an error naming the method and its stage."""
        names = [f.name for f in dataclasses.fields(cls.Inputs)]
        missing = [n for n in names if n not in given]
        if missing:
            raise ValueError(
                f"method '{cls.name}' ({cls.role}) needs {missing}, which only stage "
                f"'{cls.stage}' gives: run it as an entry of `{cls.section}`"
            )
        return cls.Inputs(**{n: given[n] for n in names})

    def optimizer_groups(self) -> list[dict]:
        """Parameter groups for the optimizer (see bowflow.optim for the keys)."""
        return default_groups(self, self.params.weight_decay)

    def configure_schedule(self, steps_per_epoch: int, total_steps: int) -> None:
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps

    def views(self, images: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Everything random about one step, drawn for the whole global batch.

        images uint8 [B, 3, H, W] on the device, index [B] (rows of the training set),
        `generator` the step's seeded generator -> {name: tensor}, every tensor with one row
        per sample in batch order ([B, ...]): augmented views, rotation labels, crop
        positions, sampled negatives. Under torchrun every process draws the views of the
        same global batch and keeps its own rows (`bowflow.distributed`), so N processes
        see exactly the samples, views and draws of the single-process run.
        Default: the images themselves.
        """
        return {"images": images}

    def step(self, views: dict[str, torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward and loss on this process's rows of `views` (index [b]: their rows of the
        training set) -> (scalar loss, {name: scalar tensor} batch statistics).

        Deterministic given its inputs: no random draws here. Where the math spans the batch
        (negatives, queues, centres, cross-correlations, Sinkhorn), gather over processes
        with `bowflow.distributed.gather` so that the loss is the global batch's; the
        per-rank losses are averaged by DDP's gradient all-reduce.
        """
        raise NotImplementedError

    def forward(self, views: dict[str, torch.Tensor], index: torch.Tensor):
        """`step`, so that DistributedDataParallel (which hooks `forward`) can wrap a method."""
        return self.step(views, index)

    def training_step(
        self, images: torch.Tensor, index: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One single-process step: `step(views(images, index, generator), index)`."""
        return self.step(self.views(images, index, generator), index)

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        return means

    def before_optimizer_step(self, step: int) -> None:
        """After backward, before the optimizer step (e.g. DINO zeroes its last layer's
        gradients during the first epoch). Default: nothing."""

    def clip_gradients(self, parameters: list[nn.Parameter]) -> None:
        """After `before_optimizer_step`, before the optimizer step: clip the gradients of
        the trained `parameters`. Default: their global L2 norm at `params.clip_grad` when
        it is above 0 (DINO overrides it to clip each parameter tensor on its own)."""
        if self.params.clip_grad > 0:
            clip_gradients(parameters, self.params.clip_grad)

    @classmethod
    def training_images(cls, prepared: str | Path, params: TrainParams) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The prepared rows this role trains on, as (images uint8 [N, 3, H, W], labels [N],
        manifest). Default: the rows self-supervised stages may use (bowflow.data.prepared's
        SSL split); labelled roles override it."""
        return load_ssl_split(prepared)

    def after_step(self, step: int, total_steps: int) -> None:
        """Hook for EMA teachers, queues, temperature schedules. Default: nothing."""

    def export_backbone(self) -> Backbone:
        """The backbone written to model.pt and evaluated. Default: the trained one."""
        return self.backbone

    def export_extra(self) -> dict[str, Any]:
        """More of the model to store in model.pt beside the backbone (a supervised method:
        its classifier's weights). Default: nothing."""
        return {}
