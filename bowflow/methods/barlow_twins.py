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

from dataclasses import dataclass, field

import torch

from bowflow import augment
from bowflow.checks import fraction, positive
from bowflow.heads import mlp
from bowflow.losses import embedding_std, float32
from bowflow.optim import default_groups
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised

# ---------------------------------------------------------------- loss

@float32
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float = 5e-3,
                      eps: float = 1e-5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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

    c = standardise(z1).T @ standardise(z2) / z1.shape[0]                    # [D, D]
    diagonal = torch.diagonal(c)
    on_diag = (1 - diagonal).pow(2).sum()
    off_diag = (c - torch.diag(diagonal)).pow(2).sum()
    return on_diag + lambda_offdiag * off_diag, {"on_diag": on_diag.detach(),
                                                 "off_diag": off_diag.detach()}


@dataclass
class BarlowTwinsParams(TrainParams):
    method: str = "barlow_twins"
    lr: float = field(default=0.1, metadata={"help": "peak learning rate of the weights. SGD "
                                                     "(default) at batch <= 256; the paper's "
                                                     "LARS lr is 0.2 at batch 2048"})
    weight_decay: float = field(default=5e-4, metadata={
        "help": "L2 on weights. 5e-4 suits SGD on small data; the paper: 1.5e-6 with LARS"})
    proj_dim: int = field(default=1024, metadata={
        "help": "width D of the 3 projector layers (paper: 8192 on a 2048-d ResNet-50, i.e. 4x; "
                "scaled to 1024 = 8x the 128-d convnet feature: the paper finds larger D better, "
                "and the D x D correlation stays cheap next to the backbone at this size)"})
    proj_layers: int = field(default=3, metadata={"help": "projector Linear layers (paper: 3)"})
    lambda_offdiag: float = field(default=5e-3, metadata={
        "help": "weight of the off-diagonal (redundancy) term. Paper: 5e-3 at D = 8192, B = 2048. "
                "With B < D the off-diagonal sum cannot fall below about D^2 / B, so its pull "
                "against the D diagonal terms grows like lambda D / B (0.02 in the paper). "
                "Scaling lambda like 1/D (0.04 at D = 1024) gives 0.64 at B = 64 and the "
                "diagonal stopped learning on digits (on_diag stuck near D); 5e-3 keeps "
                "lambda D / B at 0.02-0.08 for B = 256-64"})
    loss_scale: float = field(default=0.0, metadata={
        "help": "multiplier of the summed loss; 0 = 1 / proj_dim, i.e. the per-dimension loss "
                "(about 1 at the start), so SGD learning rates are comparable with the other "
                "methods. LARS is invariant to it except on its excluded groups"})
    bias_lr_scale: float = field(default=0.024, metadata={
        "help": "LARS only: lr of biases and BN parameters relative to the weights' (paper: "
                "0.0048 / 0.2). Ignored by SGD/AdamW"})
    crop_size: float = field(default=1.0, metadata={
        "help": "side of both views, as a fraction of the image side (>= 4 px)"})
    crop_scale_min: float = field(default=0.2, metadata={
        "help": "smallest crop area fraction (paper 0.08 at 224 px; 0.2 keeps a 16-32 px digit "
                "or object recognisable, as in solo-learn's CIFAR settings)"})
    brightness: float = field(default=0.4, metadata={"help": "colour jitter: factor in [1-s, 1+s] (BYOL: 0.4)"})
    contrast: float = field(default=0.4, metadata={"help": "colour jitter contrast strength (BYOL: 0.4)"})
    saturation: float = field(default=0.2, metadata={"help": "colour jitter saturation strength (BYOL: 0.2)"})
    hue: float = field(default=0.1, metadata={"help": "hue shift range, fraction of a turn (BYOL: 0.1)"})
    jitter_p: float = field(default=0.8, metadata={"help": "probability of colour jitter per view (BYOL: 0.8)"})
    gray_p: float = field(default=0.2, metadata={"help": "probability of grayscale per view (BYOL: 0.2)"})
    blur_p1: float = field(default=1.0, metadata={"help": "Gaussian blur probability, view 1 (BYOL: 1.0)"})
    blur_p2: float = field(default=0.1, metadata={"help": "Gaussian blur probability, view 2 (BYOL: 0.1)"})
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0], metadata={
        "help": "blur sigma range in px at 224 px, scaled to the view size (Barlow Twins / "
                "BYOL: 0.1-2.0); at 16-32 px a negligible blur, the same rule as every other "
                "method (augment.blur_sigma_px), so the rows differ by method, not view strength"})
    solarize_p1: float = field(default=0.0, metadata={"help": "solarize probability, view 1 (BYOL: 0)"})
    solarize_p2: float = field(default=0.2, metadata={"help": "solarize probability, view 2 (BYOL: 0.2)"})

    def validate(self) -> None:
        super().validate()
        for name in ("proj_dim", "proj_layers", "crop_size", "bias_lr_scale"):
            positive(name, getattr(self, name))
        if len(self.blur_sigma) != 2 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (low, high) with 0 < low <= high, got {self.blur_sigma}")
        for name in ("lambda_offdiag", "loss_scale", "brightness", "contrast", "saturation"):
            positive(name, getattr(self, name), allow_zero=True)
        if self.proj_layers < 2:
            raise ValueError(f"proj_layers must be >= 2 (hidden layers with BN + ReLU), got {self.proj_layers}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] turns, got {self.hue}")
        if self.crop_size > 1:
            raise ValueError(f"crop_size is a fraction of the image side, in (0, 1], got {self.crop_size}")
        fraction("crop_scale_min", self.crop_scale_min, low_open=True)
        for name in ("jitter_p", "gray_p", "blur_p1", "blur_p2", "solarize_p1", "solarize_p2"):
            fraction(name, getattr(self, name))

    @property
    def effective_loss_scale(self) -> float:
        return self.loss_scale or 1.0 / self.proj_dim


@register_method("barlow_twins")
class BarlowTwins(SelfSupervised):
    label = "Barlow Twins"
    Params = BarlowTwinsParams

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        self.view_size = augment.scaled_size(inputs.image_size, params.crop_size)
        self.projector = mlp(backbone.out_channels, params.proj_dim, params.proj_dim,
                             layers=params.proj_layers)

    def optimizer_groups(self):
        groups = default_groups(self, self.params.weight_decay)
        if self.params.optimizer == "lars":          # biases and BN: no trust ratio, small lr
            groups[1]["lr_scale"] = self.params.bias_lr_scale
        return groups

    def make_view(self, images: torch.Tensor, blur_p: float, solarize_p: float,
                  generator: torch.Generator) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float [B, 3, S, S] in [0, 1], S = view_size."""
        p = self.params
        x = augment.random_resized_crop(augment.to_float(images), self.view_size,
                                        (p.crop_scale_min, 1.0), generator=generator)
        x = augment.color_jitter(x, p.brightness, p.contrast, p.saturation, p.hue, p.jitter_p,
                                 generator=generator)
        x = augment.random_grayscale(x, p.gray_p, generator=generator)
        x = augment.gaussian_blur(x, blur_p, augment.blur_sigma_px(p.blur_sigma, self.view_size),
                                  generator=generator)
        return augment.solarize(x, solarize_p, generator=generator)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """float views [B, 3, S, S] -> projector output [B, D]."""
        return self.projector(self.backbone(self.normalizer.normalize(x)))

    def training_step(self, images, index, generator):
        p = self.params
        x1 = self.make_view(images, p.blur_p1, p.solarize_p1, generator)
        x2 = self.make_view(images, p.blur_p2, p.solarize_p2, generator)
        # One forward over both views: BN statistics are shared, as with a 2B batch.
        z1, z2 = self.embed(torch.cat([x1, x2])).chunk(2)                     # [B, D] each
        loss, terms = barlow_twins_loss(z1, z2, p.lambda_offdiag)
        loss = loss * p.effective_loss_scale
        return loss, {"loss": loss.detach(), "on_diag": terms["on_diag"], "off_diag": terms["off_diag"],
                      "embedding_std": embedding_std(z1)}
