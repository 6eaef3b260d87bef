"""A distillation run's frozen teacher: a supervised model file loaded as backbone +
classifier in eval mode, with no gradients, and the outputs distillers read from it.
The distill stage loads it (`load_teacher`) and gives it to the method as
`DistillInputs.teacher` (bowflow/roles/distiller.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from bowflow.models import Normalizer, load_classifier, load_model
from bowflow.networks import Backbone


@dataclass
class Outputs:
    """One network's outputs on a batch of B images."""

    maps: list[torch.Tensor]  # stage maps [B, C_i, H_i, W_i]: the benchmark's feat[1:-1]
    pooled: torch.Tensor  # pre-logit feature [B, C]: the benchmark's feat[-1]
    logits: torch.Tensor  # [B, K]


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
