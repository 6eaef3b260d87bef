"""BoWNet (Gidaris et al., CVPR 2020): predict the teacher's bag of visual words.

The frozen teacher's BoW codes of the clean training images are computed once per
generation by the vocab stage (`codes` [N, L] word indices) and arrive here in `context`.
Each step: targets y [B, K] from the codes -> the student sees a perturbed view (crop,
flip, colour jitter, grayscale) and CutMix pastes boxes between images, mixing targets by
kept area -> normalised linear head with learnable scale -> soft cross-entropy.

Logged per epoch: the loss, the targets' entropy and perplexity, and `captured`, the
fraction of the learnable loss the student has captured:
    (CE(y, mean histogram) - loss) / (CE(y, mean histogram) - H(y))
0 = no better than predicting the training set's mean histogram, 1 = perfect prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bowflow import augment
from bowflow.bow import bow_targets, entropy, soft_cross_entropy
from bowflow.checks import param
from bowflow.networks import BackboneSpec
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.bow_student import BoWStudent


@dataclass
class BoWNetParams(TrainParams):
    method: str = "bownet"
    pooling: str = param("histogram", "'histogram' counts or 'binary' presence", choices=("histogram", "binary"))
    init: str = param("scratch", "'scratch' (paper) or 'parent' (warm start)", choices=("scratch", "parent"))
    crop_scale_min: float = param(0.35, "smallest crop area fraction", above=0, high=1)
    jitter: float = param(0.4, "brightness/contrast/saturation strength", low=0)
    hue: float = param(0.1, "hue shift, fraction of a turn", low=0)
    jitter_p: float = param(0.8, low=0, high=1)
    gray_p: float = param(0.2, low=0, high=1)
    cutmix_p: float = param(0.5, "probability an image gets a CutMix box", low=0, high=1)
    head_scale: float = param(10.0, "initial value of the learnable logit scale", above=0)

    def check_parent(self, parent: TrainParams) -> None:
        """init 'parent' starts from the parent's weights: the same backbone (its settings too)."""
        spec = parent.backbone_spec
        if self.init == "parent" and spec != self.backbone_spec:
            raise ValueError(f"init 'parent' needs the parent's architecture ({spec.describe()})")

    def check_parent_model(self, record: dict) -> None:
        """The same check against a parent's model file record."""
        spec = BackboneSpec.from_record(record)
        if self.init == "parent" and spec != self.backbone_spec:
            raise ValueError(
                f"init 'parent' needs the parent's architecture, but the parent is a {spec.arch} ({spec.describe()})"
            )


class NormalizedLinear(nn.Module):
    """logits_k = gamma * <w_k / ||w_k||, f>: rows re-normalised at every forward pass,
    learnable scalar gamma, no bias, f not normalised. f [B, C] -> logits [B, K]."""

    def __init__(self, in_features: int, out_features: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / math.sqrt(in_features))
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(features, F.normalize(self.weight, dim=1))


@register_method("bownet")
class BoWNet(BoWStudent):
    label = "BoWNet"
    Params = BoWNetParams
    params: BoWNetParams  # an instance of Params (typing only)
    codes: torch.Tensor  # buffers, registered in __init__ (typing only)
    log_mean_histogram: torch.Tensor
    # tests/test_method_learning.py, on the trained RotNet's stage3 vocabulary of 16 words (the
    # test's VOCABULARY): k-NN (measured, seed 0; untrained control 40.6) 55.9.
    learning_recipe = {"epochs": 40}

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        if params.init == "parent":  # warm start from the teacher's weights
            params.check_parent_model(inputs.parent)
            backbone.load_state_dict(inputs.parent["state_dict"])
        self.num_words = int(inputs.num_words)
        self.register_buffer("codes", inputs.codes.long(), persistent=False)  # [N, L]
        self.head = NormalizedLinear(backbone.out_channels, self.num_words, params.head_scale)
        mean_histogram = bow_targets(self.codes, self.num_words, params.pooling).mean(0)
        self.register_buffer("log_mean_histogram", torch.log(mean_histogram.clamp_min(1e-8)), persistent=False)
        image_size = inputs.image_size
        self.view = augment.ViewSpec(
            size=image_size,
            crop_scale=(params.crop_scale_min, 1.0),
            jitter=params.jitter,
            hue=params.hue,
            jitter_p=params.jitter_p,
            gray_p=params.gray_p,
        )

    def views(self, images, index, generator):
        # CutMix pastes boxes between images of the batch and mixes their targets: drawn here,
        # on the global batch, so every process sees the single-process pairs and targets.
        targets = bow_targets(self.codes[index], self.num_words, self.params.pooling)  # [B, K]
        x = augment.make_view(images, self.view, generator)
        x, targets = augment.cutmix(x, targets, p=self.params.cutmix_p, generator=generator)
        return {"images": x, "targets": targets}  # [B, 3, H, W], [B, K]

    def step(self, views, index):
        # Soft cross-entropy per sample, batch mean: nothing to gather (BN synced by the trainer).
        x, targets = views["images"], views["targets"]
        logits = self.head(self.backbone(self.normalizer.normalize(x)))
        loss = soft_cross_entropy(logits, targets)
        with torch.no_grad():
            target_entropy = entropy(targets).mean()
            mean_histogram_ce = -(targets * self.log_mean_histogram).sum(1).mean()
        return loss, {
            "loss": loss.detach(),
            "target_entropy": target_entropy,
            "mean_histogram_ce": mean_histogram_ce,
            "head_scale": self.head.scale.detach(),
        }

    def summarize(self, means):
        learnable = means["mean_histogram_ce"] - means["target_entropy"]
        means["captured"] = (means["mean_histogram_ce"] - means["loss"]) / max(learnable, 1e-8)
        means["target_perplexity"] = math.exp(means["target_entropy"])
        return means
