"""The control every method must beat: a network that is never trained.

The backbone keeps its random initial weights (the loss is 0 and carries no gradient, and
weight decay is 0, so SGD leaves every weight as it is); only its BatchNorm running
statistics are estimated, over `epochs` passes of the clean training images in train
mode. On easy small data such a network is a strong baseline: on the 16 px digits its
k-NN accuracy is above RotNet's (README), so a method's row means little without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bowflow import augment
from bowflow.checks import param
from bowflow.losses import embedding_std
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised


@dataclass
class RandomInitParams(TrainParams):
    method: str = "random_init"
    epochs: int = param(1, "passes that estimate the BN statistics (one is enough: nothing else changes)")
    weight_decay: float = param(0.0, "must stay 0: decay would shrink the random weights")

    def validate(self) -> None:
        super().validate()
        if self.weight_decay != 0:
            raise ValueError(
                f"weight_decay must be 0 for random_init (it would change the random weights), got {self.weight_decay}"
            )


@register_method("random_init")
class RandomInit(SelfSupervised):
    label = "Random init"
    Params = RandomInitParams
    params: RandomInitParams  # an instance of Params (typing only)
    # The learning test's control: one pass estimates the BN statistics.
    learning_recipe = {"epochs": 1}

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)

    def views(self, images, index, generator):
        return {"images": augment.to_float(images)}  # clean images, nothing random

    def step(self, views, index):
        # Under torchrun: BN statistics over the global batch (synced by the trainer); every
        # parameter still requires grad and gets a (zero) gradient, so DDP wraps it as any other.
        features = self.backbone(self.normalizer.normalize(views["images"]))  # [B, C]
        loss = (features * 0.0).sum()  # zero, and zero gradients: weights stay put
        return loss, {"loss": loss.detach(), "embedding_std": embedding_std(features)}
