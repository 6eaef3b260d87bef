"""RotNet (Gidaris et al., ICLR 2018): predict which of 4 rotations was applied.

All four exact rotations of every image go into the same batch (B images -> 4B inputs),
after the standard crop-with-padding + flip. Head: global average pool -> linear(C, 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from bowflow import augment
from bowflow.checks import param
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised


@dataclass
class RotNetParams(TrainParams):
    padding: int = param(4, "pixels of zero padding for the random crop (4 of 32 in the official CIFAR recipe)", low=0)


@register_method("rotnet")
class RotNet(SelfSupervised):
    label = "RotNet"
    Params = RotNetParams
    params: RotNetParams  # an instance of Params (typing only)
    # tests/test_method_learning.py: k-NN (measured, seed 0; untrained control 40.6) 79.3.
    learning_recipe = {"epochs": 8, "padding": 2}

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        self.head = nn.Linear(backbone.out_channels, 4)

    def views(self, images, index, generator):
        return {
            "crops": augment.pad_crop_flip(augment.to_float(images), padding=self.params.padding, generator=generator)
        }  # [B, 3, H, W]

    def step(self, views, index):
        x, rotation = augment.rotate_four(views["crops"])  # [4B, 3, H, W], [4B]
        logits = self.head(self.backbone(self.normalizer.normalize(x)))
        loss = F.cross_entropy(logits, rotation)
        accuracy = (logits.argmax(1) == rotation).float().mean() * 100
        return loss, {"loss": loss.detach(), "rotation_accuracy": accuracy}
