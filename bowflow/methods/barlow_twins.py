"""Barlow Twins (Zbontar et al., ICML 2021): make the two views' cross-correlation the identity.

Each step: two views of every image (BYOL's asymmetric augmentations: view 1 always
blurred, view 2 sometimes blurred and solarised) -> one backbone -> projector MLP
(3 x Linear, BN + ReLU between) -> z1, z2 [B, D] -> `barlow_twins_loss`: the
dimensions are standardised over the batch, C = z1n.T @ z2n / B [D, D], and
loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2, times `loss_scale`.
No teacher, no negatives, no stop-gradient: redundancy reduction alone avoids collapse.

Logged: loss, on_diag and off_diag (the two unweighted terms), embedding_std of z1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bowflow import distributed, views
from bowflow.checks import param
from bowflow.heads import mlp
from bowflow.losses import embedding_std, float32
from bowflow.optim import default_groups
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised
from bowflow.views import TwoViews

# ---------------------------------------------------------------- loss


@float32
def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float = 5e-3, eps: float = 1e-5
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Barlow Twins: make the cross-correlation of the two views' embeddings the identity.

    z1, z2 [B, D] -> each dimension standardised over the batch (zero mean, unit biased
    variance, `eps` added to the variance as BatchNorm does, so a dead dimension gives 0,
    not NaN) -> C = z1n.T @ z2n / B [D, D], the correlation of dimension i of view 1 with
    dimension j of view 2 -> loss = sum_i (1 - C_ii)^2 + lambda * sum_{i!=j} C_ij^2.
    The first term makes each dimension invariant to the augmentation, the second removes
    redundancy between dimensions.
    lambda_offdiag = 5e-3 (paper, D = 8192): there are D(D-1) off-diagonal terms against
    D diagonal ones, so lambda must be small for both terms to matter.
    Returns (loss, {"on_diag": sum (1 - C_ii)^2, "off_diag": sum_{i!=j} C_ij^2}), the two
    terms unweighted and detached, for logging.
    """

    def standardise(z):
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)

    c = standardise(z1).T @ standardise(z2) / z1.shape[0]  # [D, D]
    diagonal = torch.diagonal(c)
    on_diag = (1 - diagonal).pow(2).sum()
    off_diag = (c - torch.diag(diagonal)).pow(2).sum()
    return on_diag + lambda_offdiag * off_diag, {"on_diag": on_diag.detach(), "off_diag": off_diag.detach()}


@dataclass
class BarlowTwinsParams(TwoViews, TrainParams):
    """Barlow Twins' hyperparameters; its views are BYOL's recipe (bowflow/views.py), as in the paper."""

    method: str = "barlow_twins"
    lr: float = param(
        0.1,
        "peak learning rate of the weights. SGD (default) at batch <= 256; the paper's LARS lr is 0.2 at batch 2048",
    )
    weight_decay: float = param(5e-4, "L2 on weights. 5e-4 suits SGD on small data; the paper: 1.5e-6 with LARS")
    proj_dim: int = param(
        1024,
        "width D of the 3 projector layers (paper: 8192 on a 2048-d ResNet-50, "
        "i.e. 4x; scaled to 1024 = 8x the 128-d convnet feature: the paper "
        "finds larger D better, and the D x D correlation stays cheap next to "
        "the backbone at this size)",
        above=0,
    )
    proj_layers: int = param(3, "projector Linear layers (paper: 3)", low=2)
    lambda_offdiag: float = param(
        5e-3,
        "weight of the off-diagonal (redundancy) term. Paper: 5e-3 at "
        "D = 8192, B = 2048. With B < D the off-diagonal sum cannot "
        "fall below about D^2 / B, so its pull against the D diagonal "
        "terms grows like lambda D / B (0.02 in the paper). Scaling "
        "lambda like 1/D (0.04 at D = 1024) gives 0.64 at B = 64 and "
        "the diagonal stopped learning on digits (on_diag stuck near "
        "D); 5e-3 keeps lambda D / B at 0.02-0.08 for B = 256-64",
        low=0,
    )
    loss_scale: float = param(
        0.0,
        "multiplier of the summed loss; 0 = 1 / proj_dim, i.e. the "
        "per-dimension loss (about 1 at the start), so SGD learning rates "
        "are comparable with the other methods. LARS is invariant to it "
        "except on its excluded groups",
        low=0,
    )
    bias_lr_scale: float = param(
        0.024,
        "LARS only: lr of biases and BN parameters relative to the "
        "weights' (paper: 0.0048 / 0.2). Ignored by SGD/AdamW",
        above=0,
    )

    @property
    def effective_loss_scale(self) -> float:
        return self.loss_scale or 1.0 / self.proj_dim


@register_method("barlow_twins")
class BarlowTwins(SelfSupervised):
    label = "Barlow Twins"
    Params = BarlowTwinsParams
    params: BarlowTwinsParams  # an instance of Params (typing only)
    batch_spanning = ("batch standardisation", "cross-correlation")
    # tests/test_method_learning.py: k-NN (measured, seed 0; untrained control 40.6) 78.5.
    learning_recipe = {"epochs": 20, "proj_dim": 128, "crop_scale_min": 0.5}

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        self.view_size = views.view_size(params, inputs.image_size)
        self.projector = mlp(backbone.out_channels, params.proj_dim, params.proj_dim, layers=params.proj_layers)

    def optimizer_groups(self):
        groups = default_groups(self, self.params.weight_decay)
        if self.params.optimizer == "lars":  # biases and BN: no trust ratio, small lr
            groups[1]["lr_scale"] = self.params.bias_lr_scale
        return groups

    def make_view(self, images: torch.Tensor, which: int, generator: torch.Generator) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> view `which` (0 or 1), float [B, 3, S, S] in [0, 1], S = view_size."""
        return views.two_view(images, self.params, which, self.view_size, generator)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """float views [B, 3, S, S] -> projector output [B, D]."""
        return self.projector(self.backbone(self.normalizer.normalize(x)))

    def views(self, images, index, generator):
        return {
            "view1": self.make_view(images, 0, generator),  # [B, 3, S, S]
            "view2": self.make_view(images, 1, generator),
        }

    def step(self, views, index):
        p = self.params
        # One forward over both views: BN statistics are shared, as with a 2B batch.
        z1, z2 = self.embed(torch.cat([views["view1"], views["view2"]])).chunk(2)  # [b, D] each
        # The standardisation over the batch and C = z1n.T @ z2n / B span the global batch:
        # every process gathers all rows (rank order = the batch's) and computes the global
        # loss; gather's backward sums each process's gradient into the rows' owner and DDP
        # averages, so the gradient is the single-process one (identity in one process).
        z1, z2 = distributed.gather(z1), distributed.gather(z2)  # [B, D] each
        loss, terms = barlow_twins_loss(z1, z2, p.lambda_offdiag)
        loss = loss * p.effective_loss_scale
        return loss, {
            "loss": loss.detach(),
            "on_diag": terms["on_diag"],
            "off_diag": terms["off_diag"],
            "embedding_std": embedding_std(z1),
        }
