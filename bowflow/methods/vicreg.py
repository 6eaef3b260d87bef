"""VICReg (Bardes, Ponce & LeCun, ICLR 2022): variance-invariance-covariance regularisation.

Each step: two views of every image (BYOL's recipe, as the paper uses: bowflow/views.py)
-> one backbone -> expander MLP (3 x Linear, BN + ReLU between) -> z1, z2 [B, D] ->
`vicreg_loss` = 25 x invariance (MSE between the views) + 25 x variance (a hinge keeping
each dimension's std over the batch at >= 1, per view) + 1 x covariance (squared
off-diagonal covariances / D, per view). No teacher, no negatives, no stop-gradient, no
normalisation of z: the variance term alone prevents collapse, the covariance term
decorrelates dimensions.

Checked line by line against the authors' `main_vicreg.py` (facebookresearch/vicreg);
deliberate differences, each for a stated reason, are in docs/fidelity/self_supervised.md:
SGD instead of LARS at small batches (as Barlow Twins here), an expander sized to the
small convnet, the loss scaled by `loss_scale` so SGD's lr means what it means for the
other methods, and the expander's last Linear keeping a bias (it cancels in all three
terms, so the loss and every other gradient are unchanged).

Logged: loss, the three unweighted terms (invariance, variance, covariance) and
embedding_std of z1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bowflow import distributed, views
from bowflow.checks import param
from bowflow.heads import mlp
from bowflow.losses import embedding_std, float32
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised
from bowflow.views import TwoViews

# ---------------------------------------------------------------- loss


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The D(D-1) off-diagonal entries of a square matrix [D, D], flattened."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


@float32
def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg's loss on the two views' expander outputs z1, z2 [B, D] (B >= 2).

    invariance = mean squared difference of z1 and z2 (over B x D);
    variance   = mean over dimensions of relu(1 - sqrt(var_j + eps)), unbiased variance over
                 the batch, averaged over the two views;
    covariance = sum of squared off-diagonal entries of each view's covariance (centred,
                 / (B - 1)) divided by D, summed over the two views.
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance, with the
    paper's 25 / 25 / 1 as defaults. Returns (loss, the three terms unweighted, detached).
    """
    b, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    z1, z2 = z1 - z1.mean(0), z2 - z2.mean(0)
    std1, std2 = torch.sqrt(z1.var(0) + eps), torch.sqrt(z2.var(0) + eps)
    variance = F.relu(1 - std1).mean() / 2 + F.relu(1 - std2).mean() / 2
    cov1, cov2 = z1.T @ z1 / (b - 1), z2.T @ z2 / (b - 1)  # [D, D]
    covariance = off_diagonal(cov1).pow(2).sum() / d + off_diagonal(cov2).pow(2).sum() / d
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return loss, {"invariance": invariance.detach(), "variance": variance.detach(), "covariance": covariance.detach()}


# ---------------------------------------------------------------- params


@dataclass
class VICRegParams(TwoViews, TrainParams):
    """VICReg's hyperparameters; its views are BYOL's recipe (bowflow/views.py), as in the paper."""

    method: str = "vicreg"
    lr: float = param(
        0.1,
        "peak learning rate, SGD at batch <= 256 (paper: LARS, 0.2 x batch / 256 "
        "at batch 2048), the rate every SGD method here uses",
        above=0,
    )
    weight_decay: float = param(5e-4, "L2 on weights: 5e-4 suits SGD on small data (paper: 1e-6 with LARS)", low=0)
    proj_dim: int = param(
        1024,
        "width D of the 3 expander layers (paper: 8192 on a 2048-d ResNet-50, "
        "4x; 1024 = 8x the 128-d convnet feature, as Barlow Twins here: the "
        "paper finds wider expanders better, and D x D stays cheap)",
        above=0,
    )
    proj_layers: int = param(3, "expander Linear layers (paper: 3)", low=2)
    sim_coeff: float = param(25.0, "weight of the invariance term (paper: 25)", low=0)
    std_coeff: float = param(25.0, "weight of the variance term (paper: 25)", low=0)
    cov_coeff: float = param(1.0, "weight of the covariance term (paper: 1)", low=0)
    loss_scale: float = param(
        0.04,
        "multiplier of the loss: 1 / sim_coeff, so that the invariance "
        "term's gradient is the plain MSE's and SGD's lr is comparable "
        "with the other methods' (the paper's LARS is invariant to it)",
        above=0,
    )


@register_method("vicreg")
class VICReg(SelfSupervised):
    label = "VICReg"
    Params = VICRegParams
    params: VICRegParams  # an instance of Params (typing only)
    batch_spanning = ("variance", "covariance")
    # tests/test_method_learning.py: k-NN (measured, seed 0; untrained control 40.6) 77.0.
    learning_recipe = {"epochs": 20, "proj_dim": 128, "crop_scale_min": 0.5}

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        self.size = views.view_size(params, inputs.image_size)
        self.expander = mlp(backbone.out_channels, params.proj_dim, params.proj_dim, layers=params.proj_layers)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """float views [B, 3, S, S] in [0, 1] -> expander output [B, D]."""
        return self.expander(self.backbone(self.normalizer.normalize(x)))

    def views(self, images, index, generator):
        p = self.params
        return {
            "view1": views.two_view(images, p, 0, self.size, generator),  # [B, 3, S, S]
            "view2": views.two_view(images, p, 1, self.size, generator),
        }

    def step(self, views, index):
        p = self.params
        # One forward per view, as the authors' code does: each view's BN statistics are its own.
        z1, z2 = self.embed(views["view1"]), self.embed(views["view2"])  # [b, D] each
        # Variance and covariance span the global batch: every process gathers all rows
        # (rank order = the batch's) and computes the global loss (the invariance MSE, a mean
        # over rows, included); gather's backward sums each process's gradient into the rows'
        # owner and DDP averages, so the gradient is the single-process one. The authors
        # gather z the same way (FullGatherLayer). Identity in one process.
        z1, z2 = distributed.gather(z1), distributed.gather(z2)  # [B, D] each
        loss, terms = vicreg_loss(z1, z2, p.sim_coeff, p.std_coeff, p.cov_coeff)
        loss = loss * p.loss_scale
        return loss, {"loss": loss.detach(), **terms, "embedding_std": embedding_std(z1)}
