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

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bowflow import augment, heads
from bowflow.checks import fraction, positive
from bowflow.losses import embedding_std, float32
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised

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
class BYOLParams(TrainParams):
    method: str = "byol"
    lr: float = field(default=0.1, metadata={
        "help": "peak lr of SGD Nesterov (BYOL: LARS 0.2 x batch/256 at batch 4096; on the small "
                "convnet at batch 64-256 plain SGD at 0.1 is stable and learns within 30 epochs)"})
    weight_decay: float = field(default=5e-4, metadata={
        "help": "L2 on conv/linear weights (BYOL: 1.5e-6 with LARS; 5e-4 is the SGD CIFAR value "
                "of lightly's example and of the RotNet recipe here)"})
    hidden_dim: int = field(default=512, metadata={
        "help": "projector and predictor hidden width (paper 4096 for a 2048-d ResNet-50, 2x its "
                "features; 512 = 4x the 128-d convnet at width 32, and small enough for CPU)"})
    out_dim: int = field(default=128, metadata={
        "help": "projection size (paper 256; 128 = the convnet's feature size at width 32: a "
                "projection wider than the features it comes from adds nothing)"})
    momentum_base: float = field(default=0.99, metadata={
        "help": "EMA momentum tau at step 0, raised to 1 on a cosine over all steps (paper 0.996 "
                "at batch 4096 on ImageNet; 0.99 is the CIFAR choice of solo-learn and lightly: "
                "with ~10-100x fewer steps the target must follow the online net faster)"})
    view_size: float = field(default=1.0, metadata={
        "help": "view side as a fraction of the image side (paper: 224 of ~256 ImageNet px; on "
                "16-32 px images the views keep the full size), at least 4 px"})
    crop_scale_min: float = field(default=0.2, metadata={
        "help": "smallest crop area fraction (paper 0.08; 0.2 on 32 px images, as lightly's "
                "CIFAR example: an 8% crop of a 32 px image is 9 px and shows too little)"})
    jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1], metadata={
        "help": "colour jitter strengths brightness, contrast, saturation, hue (turns) (BYOL)"})
    jitter_p: float = field(default=0.8, metadata={"help": "colour jitter probability (BYOL)"})
    gray_p: float = field(default=0.2, metadata={"help": "grayscale probability (BYOL)"})
    blur_p: list[float] = field(default_factory=lambda: [1.0, 0.1], metadata={
        "help": "Gaussian blur probability of view 1 and view 2 (BYOL's asymmetric recipe)"})
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0], metadata={
        "help": "blur sigma range in px at 224 px, scaled to the view size (BYOL: 0.1-2.0 with a "
                "23 px kernel, 10% of 224); at 16-32 px sigma tops out at 0.14-0.29 px, a "
                "negligible blur, the same rule as every other method (augment.blur_sigma_px)"})
    solarize_p: list[float] = field(default_factory=lambda: [0.0, 0.2], metadata={
        "help": "solarize probability of view 1 and view 2 (BYOL's asymmetric recipe)"})

    def validate(self) -> None:
        super().validate()
        for name in ("hidden_dim", "out_dim"):
            positive(name, getattr(self, name))
        fraction("momentum_base", self.momentum_base)
        fraction("view_size", self.view_size, low_open=True)
        fraction("crop_scale_min", self.crop_scale_min, low_open=True)
        fraction("jitter_p", self.jitter_p)
        fraction("gray_p", self.gray_p)
        if len(self.jitter) != 4 or any(v < 0 for v in self.jitter) or self.jitter[3] > 0.5:
            raise ValueError(f"jitter must be 4 strengths >= 0 (brightness, contrast, saturation, "
                             f"hue <= 0.5), got {self.jitter}")
        for name in ("blur_p", "solarize_p"):
            values = getattr(self, name)
            if len(values) != 2:
                raise ValueError(f"{name} must give one probability per view (2), got {values}")
            for v in values:
                fraction(name, v)
        if len(self.blur_sigma) != 2 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (low, high) with 0 < low <= high, got {self.blur_sigma}")


@register_method("byol")
class BYOL(SelfSupervised):
    label = "BYOL"
    Params = BYOLParams

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        self.size = augment.scaled_size(inputs.image_size, params.view_size)
        self.projector = heads.mlp(backbone.out_channels, params.hidden_dim, params.out_dim)
        self.predictor = heads.mlp(params.out_dim, params.hidden_dim, params.out_dim)
        self.target_backbone = heads.frozen_copy(backbone)
        self.target_projector = heads.frozen_copy(self.projector)
        self.register_buffer("tau", torch.tensor(float(params.momentum_base), dtype=torch.float64),
                             persistent=True)

    def view(self, images: torch.Tensor, which: int, generator: torch.Generator) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> view `which` (0 or 1), float [B, 3, size, size] in [0, 1]."""
        p = self.params
        x = augment.random_resized_crop(augment.to_float(images), self.size, (p.crop_scale_min, 1.0),
                                        generator=generator)
        brightness, contrast, saturation, hue = p.jitter
        x = augment.color_jitter(x, brightness, contrast, saturation, hue, p.jitter_p, generator=generator)
        x = augment.random_grayscale(x, p.gray_p, generator=generator)
        x = augment.gaussian_blur(x, p.blur_p[which], augment.blur_sigma_px(p.blur_sigma, self.size),
                                  generator=generator)
        return augment.solarize(x, p.solarize_p[which], generator=generator)

    def training_step(self, images, index, generator):
        b = images.shape[0]
        x = torch.cat([self.view(images, 0, generator), self.view(images, 1, generator)])
        x = self.normalizer.normalize(x)                                   # [2B, 3, s, s]
        z = self.projector(self.backbone(x))                               # [2B, D]
        p = self.predictor(z)                                              # [2B, D]
        with torch.no_grad():
            z_target = self.target_projector(self.target_backbone(x))      # [2B, D]
        p1, p2, t1, t2 = p[:b], p[b:], z_target[:b], z_target[b:]
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        with torch.no_grad():
            agreement = 1 - loss.detach() / 4          # mean cos(p, z') over both directions
        return loss, {"loss": loss.detach(), "embedding_std": embedding_std(z.detach().float()),
                      "momentum": self.tau.detach().float(), "target_agreement": agreement}

    @torch.no_grad()
    def after_step(self, step, total_steps):
        """EMA of backbone + projector into the target with this step's momentum."""
        tau = heads.cosine_momentum(step, total_steps, self.params.momentum_base)
        heads.ema_update(self.target_backbone, self.backbone, tau)
        heads.ema_update(self.target_projector, self.projector, tau)
        self.tau.fill_(tau)
