"""SimCLR (Chen et al., ICML 2020): pick out the other view of the same image among the batch.

Each step: two views of every image (crop + flip, strong colour jitter, grayscale; no blur,
as in the paper's CIFAR-10 recipe) -> one backbone -> projector MLP (Linear, BN, ReLU,
Linear to 128) -> z1, z2 [B, 128] -> `nt_xent`: cosine similarities / temperature,
each of the 2B embeddings must pick its partner among the 2B - 1 others (2B - 2 in-batch
negatives). The backbone (before the projector) is what gets evaluated.

Logged: loss, embedding_std of the projector output, `positive_accuracy` (% of anchors
whose most similar other embedding is their partner: the contrastive task's accuracy) and
`positive_cos` / `negative_cos` (mean cosine to the partner / to the other images).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bowflow import augment
from bowflow.checks import param
from bowflow.heads import mlp
from bowflow.losses import embedding_std, float32
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised

# ---------------------------------------------------------------- loss

@float32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2B embeddings must pick its other view among the
    2B - 1 others (1 positive, 2B - 2 in-batch negatives), by softmax over cosine / T.

    z1, z2 [B, D] (row i of both = two views of image i; L2-normalised here). Symmetric:
    both views act as anchors, mean over the 2B anchors. temperature = 0.5: best for
    CIFAR-10 at every batch size in the paper's appendix (its ImageNet runs use 0.1);
    a lower T weights the hardest negatives more.
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)                              # [2B, D]
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))          # no self-pairs
    positive = torch.arange(2 * b, device=z.device).roll(b)                  # i <-> i + B
    return F.cross_entropy(logits, positive)


@dataclass
class SimCLRParams(TrainParams):
    method: str = "simclr"
    lr: float = param(0.1, "peak learning rate. SGD (default) at batch <= 256; the paper's LARS lr is "
                           "0.3 x B / 256")
    weight_decay: float = param(5e-4, "L2 on weights. 5e-4 suits SGD on small data; the paper: 1e-6 "
                                      "with LARS")
    temperature: float = param(0.5, "NT-Xent temperature T: 0.5, the best value for CIFAR-10 at every "
                                    "batch size in the paper's appendix (its ImageNet runs use 0.1); "
                                    "small batches give few negatives, and a low T would weight the "
                                    "few hardest ones too much", above=0)
    proj_hidden: int = param(512, "projector hidden width (paper: the backbone's 2048 features; 4x the "
                                  "128-d convnet feature here, as solo-learn's 2048 on a 512-d "
                                  "ResNet-18)", above=0)
    proj_dim: int = param(128, "projector output size (paper: 128)", above=0)
    crop_size: float = param(1.0, "side of both views, as a fraction of the image side (>= 4 px)",
                                  above=0, high=1)
    crop_scale_min: float = param(0.2, "smallest crop area fraction (paper 0.08 at 224 px; 0.2 keeps a "
                                       "16-32 px digit or object recognisable)", above=0, high=1)
    color_strength: float = param(0.5, "colour distortion strength s: brightness/contrast/saturation "
                                       "0.8 s, hue 0.2 s (paper: s = 1 on ImageNet, 0.5 on CIFAR-10 -> "
                                       "0.4/0.4/0.4/0.1)", low=0, high=2.5)
    jitter_p: float = param(0.8, "probability of colour jitter per view (paper: 0.8)", low=0, high=1)
    gray_p: float = param(0.2, "probability of grayscale per view (paper: 0.2)", low=0, high=1)


@register_method("simclr")
class SimCLR(SelfSupervised):
    label = "SimCLR"
    Params = SimCLRParams

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        self.view_size = augment.scaled_size(inputs.image_size, params.crop_size)
        self.projector = mlp(backbone.out_channels, params.proj_hidden, params.proj_dim, layers=2)

    def make_view(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float [B, 3, S, S] in [0, 1], S = view_size."""
        p, s = self.params, self.params.color_strength
        x = augment.random_resized_crop(augment.to_float(images), self.view_size,
                                        (p.crop_scale_min, 1.0), generator=generator)
        x = augment.color_jitter(x, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p.jitter_p, generator=generator)
        return augment.random_grayscale(x, p.gray_p, generator=generator)

    def training_step(self, images, index, generator):
        x = torch.cat([self.make_view(images, generator), self.make_view(images, generator)])
        # One forward over both views: BN statistics come from all 2B views, as with the
        # paper's global BN.
        z1, z2 = self.projector(self.backbone(self.normalizer.normalize(x))).chunk(2)  # [B, D]
        loss = nt_xent(z1, z2, self.params.temperature)
        with torch.no_grad():
            z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
            cos = (z @ z.T).fill_diagonal_(-2.0)                                  # [2B, 2B]
            partner = torch.arange(len(z), device=z.device).roll(len(z1))
            positive_cos = cos[torch.arange(len(z)), partner]
            others = cos.clone()
            others[torch.arange(len(z)), partner] = -2.0
            negative_cos = others[others > -2.0].mean()
            accuracy = (cos.argmax(1) == partner).float().mean() * 100
        return loss, {"loss": loss.detach(), "embedding_std": embedding_std(z1),
                      "positive_accuracy": accuracy, "positive_cos": positive_cos.mean(),
                      "negative_cos": negative_cos}
