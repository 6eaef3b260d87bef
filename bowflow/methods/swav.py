"""SwAV (Caron et al., NeurIPS 2020): predict the cluster code of one view from another.

Each step, for images [B]:
    views: 2 global crops (+ `local_crops` small ones, multi-crop)
    z_v = normalise(projector(backbone(v)))                  [B, D]
    scores_v = z_v @ normalise(prototypes).T                  [B, K]   (cosine to K prototypes)
    codes_g = sinkhorn(scores_g) for the two global views     [B, K]   (equal partition, no grad)
    loss = mean over (global g, view v != g) of CE(codes_g, softmax(scores_v / T))
           (swapped prediction: each view predicts the other views' codes)
The prototypes are a free [K, D] parameter, L2-normalised in every forward pass, and
frozen (no update) during the first `freeze_prototypes_epochs`, as in the paper.
The paper's feature queue (which fills the Sinkhorn batch when B is small next to K) is
left out: with K = 128 and batches of 64-256 it is not needed; with K much larger than the
batch, the equal partition only constrains soft codes and the codes blur.
Under torchrun the Sinkhorn equal partition is over the global batch: every process gathers
the scores, runs the same Sinkhorn and keeps its rows' codes (`global_codes`).
Logged: loss, embedding_std of z, and the perplexity of the mean code (how many prototypes
the batch really uses; collapse drives it to 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bowflow import augment
from bowflow.checks import param
from bowflow.distributed import gather_no_grad, world
from bowflow.heads import mlp
from bowflow.losses import embedding_std, float32, perplexity
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised

# ---------------------------------------------------------------- loss


@torch.no_grad()
@float32
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV's codes: soft assignments of B samples to K prototypes with equal partition.

    scores [B, K]: cosine similarities of L2-normalised embeddings and prototypes.
    Q = exp(scores / epsilon), then alternately scale columns (each prototype gets 1/K of
    the mass) and rows (each sample gets 1/B); done on log Q (logsumexp), so no score range
    can overflow or underflow. Returns codes [B, K] (no gradient): rows sum to 1, columns
    sum to about B/K (exactly after many iterations), so the batch cannot all go to one
    prototype (the collapse this prevents).
    epsilon = 0.05 (SwAV): small epsilon gives sharp codes, large ones blur them to uniform;
    iterations = 3 (SwAV): enough for approximately equal partition.
    """
    if iterations < 1:
        raise ValueError(f"sinkhorn needs at least one iteration, got {iterations}")
    b, k = scores.shape
    log_codes = scores / epsilon
    for _ in range(iterations):
        log_codes = log_codes - log_codes.logsumexp(dim=0, keepdim=True) - math.log(k)  # prototypes
        log_codes = log_codes - log_codes.logsumexp(dim=1, keepdim=True) - math.log(b)  # samples
    return torch.exp(log_codes + math.log(b))


@torch.no_grad()
def global_codes(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """`sinkhorn` over the GLOBAL batch -> this process's rows of the codes.

    scores [b, K] this process's rows; under torchrun every process gathers all B rows, runs
    the same Sinkhorn on them (the equal partition is over the global batch, as the authors'
    distributed_sinkhorn, which all-reduces its sums) and keeps its own b rows. In one
    process this is `sinkhorn(scores)`.
    """
    everything = gather_no_grad(scores)  # [B, K]
    return sinkhorn(everything, epsilon, iterations)[world().rows(len(everything))]


@float32
def swav_loss(
    scores1: torch.Tensor, scores2: torch.Tensor, codes1: torch.Tensor, codes2: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """SwAV swapped prediction: view 1's scores predict view 2's codes and vice versa.

    scores [B, K] prototype similarities; codes [B, K] from `sinkhorn` of the same view's
    scores (detached here). loss = 1/2 [CE(codes2, softmax(scores1 / T))
    + CE(codes1, softmax(scores2 / T))]. temperature = 0.1 (SwAV).
    """

    def cross_entropy(scores, codes):
        return -(codes.detach() * F.log_softmax(scores / temperature, dim=1)).sum(dim=1).mean()

    return (cross_entropy(scores1, codes2) + cross_entropy(scores2, codes1)) / 2


@dataclass
class SwAVParams(TrainParams):
    method: str = "swav"
    lr: float = param(0.06, "peak SGD lr (SwAV: LARS 4.8 at batch 4096; SGD for small batches)")
    prototypes: int = param(
        128,
        "K, prototypes (SwAV: 3000 on ImageNet; ~10x the classes for "
        "CIFAR-size data, not far above the batch size: there is no feature "
        "queue)",
        above=0,
    )
    proj_hidden: int = param(512, "projector hidden width (SwAV: 2048)", above=0)
    proj_dim: int = param(128, "embedding size D (SwAV: 128)", above=0)
    temperature: float = param(0.1, "softmax temperature of the prediction (SwAV: 0.1)", above=0)
    epsilon: float = param(0.05, "Sinkhorn entropy weight (SwAV: 0.05)", above=0)
    sinkhorn_iterations: int = param(3, "Sinkhorn iterations (SwAV: 3)", above=0)
    freeze_prototypes_epochs: int = param(1, "epochs without prototype updates (SwAV: 1)", low=0)
    local_crops: int = param(
        0,
        "small crops per image (SwAV: 6 at 96 px of 224; 0 by default on 16-32 "
        "px images, where a 3/7-size crop keeps little of the object)",
        low=0,
    )
    local_size: float = param(3 / 7, "local crop side / image side (SwAV: 96/224)", above=0, high=1)
    crop_scale_min: float = param(0.2, "smallest global crop area (SwAV: 0.14 at 224 px)", above=0, high=1)
    jitter: float = param(0.4, "colour jitter strength (SwAV: 0.8 x 0.5)", low=0)
    hue: float = param(0.1, "hue shift in turns", low=0)
    jitter_p: float = param(0.8, "jitter probability (SwAV: 0.8)", low=0, high=1)
    gray_p: float = param(0.2, "grayscale probability (SwAV: 0.2)", low=0, high=1)


@register_method("swav")
class SwAV(SelfSupervised):
    label = "SwAV"
    Params = SwAVParams
    params: SwAVParams  # an instance of Params (typing only)
    batch_spanning = ("sinkhorn",)
    # tests/test_method_learning.py: k-NN (measured, seed 0; untrained control 40.6) 58.2.
    learning_recipe = {"epochs": 20, "proj_hidden": 64, "proj_dim": 32, "prototypes": 32, "crop_scale_min": 0.5}

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        self.projector = mlp(backbone.out_channels, params.proj_hidden, params.proj_dim)
        self.prototypes = nn.Parameter(torch.randn(params.prototypes, params.proj_dim) / math.sqrt(params.proj_dim))
        size = inputs.image_size
        colour = dict(jitter=params.jitter, hue=params.hue, jitter_p=params.jitter_p, gray_p=params.gray_p)
        self.global_view = augment.ViewSpec(size=size, crop_scale=(params.crop_scale_min, 1.0), **colour)
        self.local_view = augment.ViewSpec(
            size=augment.scaled_size(size, params.local_size), crop_scale=(0.05, params.crop_scale_min), **colour
        )

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float views [N, 3, S, S] -> (embeddings z [N, D], cosine scores [N, K])."""
        z = F.normalize(self.projector(self.backbone(self.normalizer.normalize(x))).float(), dim=1)
        return z, z @ F.normalize(self.prototypes.float(), dim=1).T

    def views(self, images, index, generator):
        p = self.params
        specs = [self.global_view] * 2 + [self.local_view] * p.local_crops
        crops = augment.make_views(images, specs, generator)  # each [B, 3, s, s]
        names = ["global0", "global1"] + [f"local{i}" for i in range(p.local_crops)]
        return dict(zip(names, crops))

    def step(self, views, index):
        p = self.params
        b = len(views["global0"])
        z_global, s_global = self.scores(torch.cat([views["global0"], views["global1"]]))  # [2b, D], [2b, K]
        scores = list(s_global.split(b))
        if p.local_crops:
            local = torch.cat([views[f"local{i}"] for i in range(p.local_crops)])
            scores += list(self.scores(local)[1].split(b))
        codes = [global_codes(s, p.epsilon, p.sinkhorn_iterations) for s in scores[:2]]
        # The two global views predict each other's codes; each local view predicts both.
        # Every term averages two predictions, so this is the mean over all 2 + 2L pairs.
        terms = [swav_loss(scores[0], scores[1], codes[0], codes[1], p.temperature)]
        terms += [swav_loss(s, s, codes[0], codes[1], p.temperature) for s in scores[2:]]
        loss = torch.stack(terms).mean()
        with torch.no_grad():
            mean_code = torch.cat(codes).mean(0)
        return loss, {
            "loss": loss.detach(),
            "embedding_std": embedding_std(z_global),
            "code_perplexity": perplexity(mean_code),
        }

    def before_optimizer_step(self, step):
        if step < self.params.freeze_prototypes_epochs * self.steps_per_epoch:
            self.prototypes.grad = None  # SGD then leaves the prototypes as they are
