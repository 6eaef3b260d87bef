"""SimCLR (Chen et al., ICML 2020): pick out the other view of the same image among the batch.

Each step: two views of every image (crop + flip, strong colour jitter, grayscale; no blur,
as in the paper's CIFAR-10 recipe) -> one backbone -> projector MLP (Linear, BN, ReLU,
Linear to 128) -> z1, z2 [B, 128] -> `nt_xent` (bowflow/contrastive.py): cosine
similarities / temperature, each of the 2B embeddings must pick its partner among the
2B - 1 others (2B - 2 in-batch negatives). The backbone (before the projector) is what
gets evaluated. Under torchrun each process's 2b anchors pick among the 2B gathered
embeddings of the global batch (the authors' cross-replica negatives); the per-process
losses average to the global one.

Logged: loss, embedding_std of the projector output, `positive_accuracy` (% of anchors
whose most similar other embedding is their partner: the contrastive task's accuracy) and
`positive_cos` / `negative_cos` (mean cosine to the partner / to the other images).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bowflow import augment, contrastive
from bowflow.checks import param
from bowflow.distributed import gather, world
from bowflow.heads import mlp
from bowflow.losses import embedding_std
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised

# ---------------------------------------------------------------- loss


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's loss: `contrastive.nt_xent` of z1, z2 [b, D] (row i of both = two views of
    image i) against the global batch -> scalar. temperature = 0.5: best for CIFAR-10 at
    every batch size in the paper's appendix (its ImageNet runs use 0.1); a lower T weights
    the hardest negatives more.
    Under torchrun z1, z2 are this process's b rows: its 2b anchors pick among the 2B
    embeddings of the global batch (gathered, as the authors' cross-replica negatives), and
    the mean over processes of the per-process losses is the global batch's loss; in one
    process `gather` is the identity.
    """
    return contrastive.nt_xent(z1, z2, temperature, gather=gather, rank=world().rank)


@dataclass
class SimCLRParams(TrainParams):
    method: str = "simclr"
    lr: float = param(0.1, "peak learning rate. SGD (default) at batch <= 256; the paper's LARS lr is 0.3 x B / 256")
    weight_decay: float = param(5e-4, "L2 on weights. 5e-4 suits SGD on small data; the paper: 1e-6 with LARS")
    temperature: float = param(
        0.5,
        "NT-Xent temperature T: 0.5, the best value for CIFAR-10 at every "
        "batch size in the paper's appendix (its ImageNet runs use 0.1); "
        "small batches give few negatives, and a low T would weight the "
        "few hardest ones too much",
        above=0,
    )
    proj_hidden: int = param(
        512,
        "projector hidden width (paper: the backbone's 2048 features; 4x the "
        "128-d convnet feature here, as solo-learn's 2048 on a 512-d "
        "ResNet-18)",
        above=0,
    )
    proj_dim: int = param(128, "projector output size (paper: 128)", above=0)
    crop_size: float = param(1.0, "side of both views, as a fraction of the image side (>= 4 px)", above=0, high=1)
    crop_scale_min: float = param(
        0.2,
        "smallest crop area fraction (paper 0.08 at 224 px; 0.2 keeps a 16-32 px digit or object recognisable)",
        above=0,
        high=1,
    )
    color_strength: float = param(
        0.5,
        "colour distortion strength s: brightness/contrast/saturation "
        "0.8 s, hue 0.2 s (paper: s = 1 on ImageNet, 0.5 on CIFAR-10 -> "
        "0.4/0.4/0.4/0.1)",
        low=0,
        high=2.5,
    )
    jitter_p: float = param(0.8, "probability of colour jitter per view (paper: 0.8)", low=0, high=1)
    gray_p: float = param(0.2, "probability of grayscale per view (paper: 0.2)", low=0, high=1)


@register_method("simclr")
class SimCLR(SelfSupervised):
    label = "SimCLR"
    Params = SimCLRParams
    params: SimCLRParams  # an instance of Params (typing only)
    batch_spanning = ("negatives",)
    # tests/test_method_learning.py: k-NN (measured, seed 0; untrained control 40.6) 82.8.
    learning_recipe = {"epochs": 20, "proj_hidden": 64, "proj_dim": 32, "crop_scale_min": 0.5}

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        self.view_size = augment.scaled_size(inputs.image_size, params.crop_size)
        self.projector = mlp(backbone.out_channels, params.proj_hidden, params.proj_dim, layers=2)

    def make_view(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float [B, 3, S, S] in [0, 1], S = view_size."""
        p = self.params
        return augment.simclr_view(
            images, self.view_size, p.crop_scale_min, p.color_strength, p.jitter_p, p.gray_p, generator
        )

    def views(self, images, index, generator):
        return {
            "view1": self.make_view(images, generator),  # [B, 3, S, S]
            "view2": self.make_view(images, generator),
        }

    def step(self, views, index):
        x = torch.cat([views["view1"], views["view2"]])
        # One forward over both views: BN statistics come from all 2B views, as with the
        # paper's global BN (synced over processes under torchrun).
        z1, z2 = self.projector(self.backbone(self.normalizer.normalize(x))).chunk(2)  # [B, D]
        loss = nt_xent(z1, z2, self.params.temperature)
        with torch.no_grad():  # this process's anchors against the global batch
            z, candidates, own, partner = contrastive.nt_xent_pairs(z1.float(), z2.float(), gather, world().rank)
            rows = torch.arange(len(z), device=z.device)
            cos = z @ candidates.T  # [2b, 2B]
            cos[rows, own] = -2.0
            positive_cos = cos[rows, partner]
            others = cos.clone()
            others[rows, partner] = -2.0
            negative_cos = others[others > -2.0].mean()
            accuracy = (cos.argmax(1) == partner).float().mean() * 100
        return loss, {
            "loss": loss.detach(),
            "embedding_std": embedding_std(z1),
            "positive_accuracy": accuracy,
            "positive_cos": positive_cos.mean(),
            "negative_cos": negative_cos,
        }
