"""BYOL (Grill et al., NeurIPS 2020): predict the target network's projection of another view.

    online:  x -> backbone -> projector (mlp) -> z -> predictor (mlp) -> p
    target:  x -> EMA(backbone) -> EMA(projector) -> z'   (no gradient)
    loss = byol_loss(p1, z'2) + byol_loss(p2, z'1),  byol_loss = 2 - 2 cos(p, sg(z'))

The target is an exponential moving average of the online backbone + projector, updated
after every optimizer step with momentum tau going from `momentum_base` to 1 on a cosine
over all optimizer steps (heads.cosine_momentum). The exported network is the online
backbone. The two views are asymmetric (BYOL's recipe): view 1 is always blurred and never
solarized, view 2 is blurred with p 0.1 and solarized with p 0.2.

Logged: loss, embedding_std (online projections z), momentum (tau of the EMA), and
`target_agreement`, the mean cosine between p and the other view's target projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bowflow import heads, views
from bowflow.checks import param
from bowflow.losses import embedding_std, float32
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised
from bowflow.views import TwoViews

# ---------------------------------------------------------------- loss


@float32
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL: mean over the batch of 2 - 2 cos(p, sg(z)) = ||p/|p| - z/|z|||^2.

    p [B, D]: online predictor output; z [B, D]: target projection (EMA network), detached
    here. Range [0, 4]: 0 when aligned, 4 when opposite. The paper sums both directions:
    `byol_loss(p1, z2) + byol_loss(p2, z1)`.
    """
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=1).mean()


@dataclass
class BYOLParams(TwoViews, TrainParams):
    """BYOL's hyperparameters; its views are the shared two-view recipe (bowflow/views.py)."""

    method: str = "byol"
    lr: float = param(
        0.1,
        "peak lr of SGD Nesterov (BYOL: LARS 0.2 x batch/256 at batch 4096; on the "
        "small convnet at batch 64-256 plain SGD at 0.1 is stable and learns within "
        "30 epochs)",
    )
    weight_decay: float = param(
        5e-4,
        "L2 on conv/linear weights (BYOL: 1.5e-6 with LARS; 5e-4 is the "
        "SGD CIFAR value of lightly's example and of the RotNet recipe "
        "here)",
    )
    hidden_dim: int = param(
        512,
        "projector and predictor hidden width (paper 4096 for a 2048-d "
        "ResNet-50, 2x its features; 512 = 4x the 128-d convnet at width 32, "
        "and small enough for CPU)",
        above=0,
    )
    out_dim: int = param(
        128,
        "projection size (paper 256; 128 = the convnet's feature size at width "
        "32: a projection wider than the features it comes from adds nothing)",
        above=0,
    )
    momentum_base: float = param(
        0.99,
        "EMA momentum tau at step 0, raised to 1 on a cosine over all "
        "steps (paper 0.996 at batch 4096 on ImageNet; 0.99 is the "
        "CIFAR choice of solo-learn and lightly: with ~10-100x fewer "
        "steps the target must follow the online net faster)",
        low=0,
        high=1,
    )


@register_method("byol")
class BYOL(SelfSupervised):
    label = "BYOL"
    Params = BYOLParams
    params: BYOLParams  # an instance of Params (typing only)
    tau: torch.Tensor  # buffer, registered in __init__ (typing only)
    # tests/test_method_learning.py: k-NN (measured, seed 0; untrained control 40.6) 59.4.
    learning_recipe = {"epochs": 20, "hidden_dim": 64, "out_dim": 32, "crop_scale_min": 0.5}

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        self.size = views.view_size(params, inputs.image_size)
        self.projector = heads.mlp(backbone.out_channels, params.hidden_dim, params.out_dim)
        self.predictor = heads.mlp(params.out_dim, params.hidden_dim, params.out_dim)
        self.target_backbone = heads.frozen_copy(backbone)
        self.target_projector = heads.frozen_copy(self.projector)
        self.register_buffer("tau", torch.tensor(float(params.momentum_base), dtype=torch.float64), persistent=True)

    def view(self, images: torch.Tensor, which: int, generator: torch.Generator) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> view `which` (0 or 1), float [B, 3, size, size] in [0, 1]."""
        return views.two_view(images, self.params, which, self.size, generator)

    def views(self, images, index, generator):
        return {
            "view1": self.view(images, 0, generator),  # [B, 3, s, s]
            "view2": self.view(images, 1, generator),
        }

    def step(self, views, index):
        # Every term is one sample's (2 - 2 cos per row, batch mean): nothing to gather;
        # BN statistics span the batch and are synced by the trainer under torchrun.
        b = views["view1"].shape[0]
        x = self.normalizer.normalize(torch.cat([views["view1"], views["view2"]]))  # [2B, 3, s, s]
        z = self.projector(self.backbone(x))  # [2B, D]
        p = self.predictor(z)  # [2B, D]
        with torch.no_grad():
            z_target = self.target_projector(self.target_backbone(x))  # [2B, D]
        p1, p2, t1, t2 = p[:b], p[b:], z_target[:b], z_target[b:]
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        with torch.no_grad():
            agreement = 1 - loss.detach() / 4  # mean cos(p, z') over both directions
        return loss, {
            "loss": loss.detach(),
            "embedding_std": embedding_std(z.detach().float()),
            "momentum": self.tau.detach().float(),
            "target_agreement": agreement,
        }

    @torch.no_grad()
    def after_step(self, step, total_steps):
        """EMA of backbone + projector into the target with this step's momentum."""
        tau = heads.cosine_momentum(step, total_steps, self.params.momentum_base)
        heads.ema_update(self.target_backbone, self.backbone, tau)
        heads.ema_update(self.target_projector, self.projector, tau)
        self.tau.fill_(tau)
