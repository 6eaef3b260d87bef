"""SimSiam (Chen & He, CVPR 2021): BYOL without the EMA teacher.

    x -> backbone -> projector (mlp ending in BN, no affine) -> z -> predictor (bottleneck) -> p
    loss = (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2,  simsiam_loss = -cos(p, sg(z))

One network encodes both views; collapse is avoided by the stop-gradient on the target
branch (inside simsiam_loss) together with the predictor. The predictor is trained
at a fixed learning rate (the paper: a decayed predictor lr hurts), through a `fixed_lr`
optimizer group. Views: the SimCLR/MoCo v2 recipe the paper uses on CIFAR (crop, flip,
colour jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale p 0.2; no blur at CIFAR size).

Logged: loss (in [-1, 1], -1 = perfect), embedding_std of z, and `p_std`, the same
spread measure on the predictor output (the paper's collapse plot is the std of z).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bowflow import augment, heads
from bowflow.checks import param
from bowflow.losses import embedding_std, float32
from bowflow.optim import default_groups
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised

# ---------------------------------------------------------------- loss


@float32
def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam: -mean cos(p, sg(z)). p [B, D] predictor output; z [B, D] projection of the
    other view by the same network, detached here (the stop-gradient is what prevents
    collapse without an EMA teacher). Range [-1, 1]. The paper averages both directions:
    `(simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2`.
    """
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


@dataclass
class SimSiamParams(TrainParams):
    method: str = "simsiam"
    lr: float = param(
        0.05,
        "peak lr (paper: SGD 0.05 x batch/256 on ImageNet, 0.03 x batch/256 on "
        "CIFAR; at batch 64-128 the linear rule gives 0.01-0.03, too slow for a "
        "30-epoch budget on the small convnet, so the unscaled base lr 0.05 is the "
        "default)",
    )
    weight_decay: float = param(5e-4, "L2 on conv/linear weights (paper: 1e-4 on ImageNet, 5e-4 on CIFAR)")
    proj_dim: int = param(
        512,
        "projector hidden and output size (paper 2048 for ResNet-50 / ResNet-18 "
        "on CIFAR; 512 = 4x the 128-d convnet features at width 32)",
        above=0,
    )
    proj_layers: int = param(2, "projector linear layers (paper: 3 on ImageNet, 2 on CIFAR)", low=1)
    pred_dim: int = param(128, "predictor bottleneck (paper 512 = proj_dim / 4; kept at a quarter: 128)", above=0)
    view_size: float = param(
        1.0, "view side as a fraction of the image side (full size on 16-32 px), at least 4 px", above=0, high=1
    )
    crop_scale_min: float = param(
        0.2, "smallest crop area fraction (paper's CIFAR recipe 0.2; ImageNet 0.08)", above=0, high=1
    )
    jitter: float = param(0.4, "brightness/contrast/saturation strength (paper: 0.4)", low=0)
    hue: float = param(0.1, "hue shift in turns (paper: 0.1)", low=0, high=0.5)
    jitter_p: float = param(0.8, "colour jitter probability (paper)", low=0, high=1)
    gray_p: float = param(0.2, "grayscale probability (paper)", low=0, high=1)


@register_method("simsiam")
class SimSiam(SelfSupervised):
    label = "SimSiam"
    Params = SimSiamParams
    params: SimSiamParams  # an instance of Params (typing only)
    # tests/test_method_learning.py: k-NN (measured, seed 0; untrained control 40.6) 64.5.
    learning_recipe = {"epochs": 20, "proj_dim": 64, "pred_dim": 16, "crop_scale_min": 0.5}

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        self.projector = heads.mlp(
            backbone.out_channels,
            params.proj_dim,
            params.proj_dim,
            layers=params.proj_layers,
            last_bn=True,
            last_bn_affine=False,
        )
        self.predictor = heads.mlp(params.proj_dim, params.pred_dim, params.proj_dim, layers=2)
        self.spec = augment.ViewSpec(
            size=max(4, round(params.view_size * inputs.image_size)),
            crop_scale=(params.crop_scale_min, 1.0),
            jitter=params.jitter,
            hue=params.hue,
            jitter_p=params.jitter_p,
            gray_p=params.gray_p,
        )

    def optimizer_groups(self):
        """Backbone + projector on the schedule; the predictor at the fixed peak lr."""
        wd = self.params.weight_decay
        predictor = {id(p) for p in self.predictor.parameters()}
        scheduled = [
            g | {"params": [p for p in g["params"] if id(p) not in predictor]} for g in default_groups(self, wd)
        ]
        fixed = [g | {"fixed_lr": True} for g in default_groups(self.predictor, wd)]
        return scheduled + fixed

    def views(self, images, index, generator):
        return {
            "view1": augment.make_view(images, self.spec, generator),  # [B, 3, s, s]
            "view2": augment.make_view(images, self.spec, generator),
        }

    def step(self, views, index):
        # Every term is one sample's (-cos per row, batch mean): nothing to gather; the
        # projector's BN statistics span the batch and are synced by the trainer.
        b = views["view1"].shape[0]
        x = torch.cat([views["view1"], views["view2"]])
        z = self.projector(self.backbone(self.normalizer.normalize(x)))  # [2B, D]
        p = self.predictor(z)  # [2B, D]
        loss = (simsiam_loss(p[:b], z[b:]) + simsiam_loss(p[b:], z[:b])) / 2
        return loss, {
            "loss": loss.detach(),
            "embedding_std": embedding_std(z.detach().float()),
            "p_std": embedding_std(p.detach().float()),
        }
