"""IFACLR (Rios et al., the appendix of "IFACD: Intermediate Features Augmented Contrastive Distillation"):
SimCLR whose positives are also the network's own intermediate layers. The authors' code is
https://github.com/arkel23/layerwiseclr, mode `simlwclr` (lit_simlwclr.py); this module follows it.

Each step: two views of every image (SimCLR's CIFAR recipe, as the authors'). View 1 -> the backbone's last-layer
feature -> projector -> z_1 [B, D]. View 2 -> the features of its last `layers` layers, each
rescaled to the last layer's width (convnets: a per-layer Linear + LayerNorm on the pooled
stage map, the authors' 1-layer rescaler; ViTs: identity, every block's CLS has the same
width) -> the same projector -> z_2 .. z_{1+layers}. The 1 + `layers` embeddings of an image
are positives of each other, every embedding of every other image a negative: SupCon
(Khosla et al. 2020) without labels, `supcon_loss` (bowflow/contrastive.py). `layers` = 1
is SimCLR with a rescaled second view.

A layer's feature: convnets, the global average of the stage map; ViTs, the block's CLS
token through the backbone's final LayerNorm (the authors apply one shared LayerNorm to every
block's CLS). Projector: the authors' LayerNorm MLP (Linear-LN-GELU x2, Linear-LN), no BN;
`bn_proj` switches projector and rescalers to BatchNorm, as their --bn_proj flags.

Deliberate differences (docs/fidelity/self_supervised.md, IFACLR row): SGD with our schedule and widths scaled
to CPU budgets (the authors: hidden and output 2048, momentum SGD at lr 3e-4 for a ViT-B/16
at 224 px); the augmentation is SimCLR's CIFAR recipe here, as theirs.
Under torchrun: anchors are this process's rows, candidates the gathered global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bowflow import augment, contrastive
from bowflow.checks import param
from bowflow.distributed import gather, world
from bowflow.heads import mlp
from bowflow.losses import embedding_std
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised


def supcon_loss(z: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """IFACLR's loss: unsupervised SupCon (`contrastive.supcon_loss`, no labels) of
    z [b, V, D] (this process's b images, V embeddings each) against the global batch ->
    scalar.

    Every one of the b*V embeddings is an anchor; its candidates are all B*V embeddings of
    the global batch but itself; its positives the V - 1 other embeddings of its image. Per
    anchor: -mean over positives p of log softmax_p(z_a . z_c / T); mean over anchors
    (SupCon's L_out with `base_temperature` = T, as the authors run it). V = 2 is NT-Xent.
    Under torchrun the anchors are this process's rows and the candidates are gathered
    (`gather`, differentiable); in one process `gather` is the identity.
    """
    return contrastive.supcon_loss(z, None, temperature, gather=gather, rank=world().rank)


def layer_features(backbone, x: torch.Tensor) -> list[torch.Tensor]:
    """x [B, 3, H, W] -> one feature per layer, [B, C_l] each: a ViT's block CLS tokens
    through its final LayerNorm, a convnet's globally pooled stage maps."""
    if hasattr(backbone, "block_tokens"):
        return [backbone.norm(t)[:, 0] for t in backbone.block_tokens(x)]
    return [m.mean(dim=(2, 3)) for m in backbone.feature_maps(x)]


def layernorm_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """The authors' ProjectionMLPHead without BN: Linear-LN-GELU, Linear-LN-GELU, Linear-LN."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.LayerNorm(hidden, eps=1e-12),
        nn.GELU(),
        nn.Linear(hidden, hidden),
        nn.LayerNorm(hidden, eps=1e-12),
        nn.GELU(),
        nn.Linear(hidden, out_dim),
        nn.LayerNorm(out_dim, eps=1e-12),
    )


@dataclass
class IFACLRParams(TrainParams):
    method: str = "ifaclr"
    temperature: float = param(
        0.5, "SupCon temperature T (= base temperature; the authors' default 0.5, SimCLR's CIFAR-10 value)", above=0
    )
    layers: int = param(
        2,
        "how many last layers of view 2 are positives of view 1's last layer and of "
        "each other (the authors' cont_layers_range, default 2; 1 = SimCLR)",
        above=0,
    )
    proj_hidden: int = param(
        512, "projector hidden width (authors: 2048 on ViT-B; 4x the 128-d convnet feature here)", above=0
    )
    proj_dim: int = param(128, "projector output size (authors: 2048; SimCLR's 128 here)", above=0)
    bn_proj: bool = param(
        False,
        "BatchNorm projector (Linear-BN-ReLU x2, Linear-BN) and rescalers (Linear-BN) "
        "instead of the LayerNorm/GELU ones: the authors' --bn_proj and "
        "--bn_proj_rescaler, off by default (their ViT setting). On a small "
        "convnet with SGD the LayerNorm projector hardly learns (tests/"
        "test_method_learning.py: k-NN 46 against 70 with BN, control 41)",
    )
    stop_gradient: bool = param(
        False, "detach view 2's layer features before the rescalers (the authors' --stop_gradient, off by default)"
    )
    crop_size: float = param(1.0, "side of both views, as a fraction of the image side", above=0, high=1)
    crop_scale_min: float = param(
        0.2, "smallest crop area fraction (SimCLR's recipe, as the authors')", above=0, high=1
    )
    color_strength: float = param(
        0.5,
        "colour distortion strength s: brightness/contrast/saturation 0.8 s, hue 0.2 s (SimCLR's CIFAR-10 value)",
        low=0,
        high=2.5,
    )
    jitter_p: float = param(0.8, "probability of colour jitter per view", low=0, high=1)
    gray_p: float = param(0.2, "probability of grayscale per view", low=0, high=1)


@register_method("ifaclr")
class IFACLR(SelfSupervised):
    label = "IFACLR"
    Params = IFACLRParams
    params: IFACLRParams  # an instance of Params (typing only)
    batch_spanning = ("negatives",)
    # tests/test_method_learning.py: k-NN (measured, seed 0; untrained control 40.6) 75.8.
    learning_recipe = {"epochs": 20, "proj_hidden": 64, "proj_dim": 32, "crop_scale_min": 0.5, "bn_proj": True}

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        self.view_size = augment.scaled_size(inputs.image_size, params.crop_size)
        depth = len(backbone.stages)
        if params.layers > depth:
            raise ValueError(f"layers = {params.layers} but the backbone has {depth} layers (stages)")
        out = backbone.out_channels
        if params.bn_proj:
            self.projector = mlp(out, params.proj_hidden, params.proj_dim, layers=3, last_bn=True)
        else:
            self.projector = layernorm_mlp(out, params.proj_hidden, params.proj_dim)
        norm = (lambda: nn.BatchNorm1d(out)) if params.bn_proj else (lambda: nn.LayerNorm(out, eps=1e-12))
        is_vit = hasattr(backbone, "block_tokens")
        self.rescalers = nn.ModuleList(
            nn.Identity() if is_vit else nn.Sequential(nn.Linear(c, out), norm())
            for c in backbone.channels[depth - params.layers :]
        )

    def make_view(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float [B, 3, S, S] in [0, 1], S = view_size."""
        p = self.params
        return augment.simclr_view(
            images, self.view_size, p.crop_scale_min, p.color_strength, p.jitter_p, p.gray_p, generator
        )

    def views(self, images, index, generator):
        return {"view1": self.make_view(images, generator), "view2": self.make_view(images, generator)}

    def step(self, views, index):
        p = self.params
        x1 = self.normalizer.normalize(views["view1"])
        x2 = self.normalizer.normalize(views["view2"])
        z1 = self.projector(self.backbone(x1))  # [b, D]
        feats = layer_features(self.backbone, x2)[-p.layers :]
        if p.stop_gradient:
            feats = [f.detach() for f in feats]
        z2 = [self.projector(r(f)) for r, f in zip(self.rescalers, feats)]  # layers x [b, D]
        z = torch.stack([z1, *z2], dim=1)  # [b, 1 + layers, D]
        loss = supcon_loss(z, p.temperature)
        with torch.no_grad():
            n = F.normalize(z.float(), dim=2)
            layer_cos = (n[:, :1] * n[:, 1:]).sum(2).mean()  # view 1 last layer vs view 2's layers
        return loss, {"loss": loss.detach(), "embedding_std": embedding_std(z1), "positive_cos": layer_cos}
