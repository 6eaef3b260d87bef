"""MoCo v2 (Chen et al., 2020; He et al., CVPR 2020): pick out your key among a queue of
keys from past batches, the keys coming from a slowly moving (EMA) key encoder.

Each step, for images [B]:
    two views v1, v2 (crop, flip, colour jitter, grayscale, blur)
    queries  q_i = normalise(head(backbone(v_i)))            [B, D]   (gradient)
             head: Linear(C, C) -> ReLU -> Linear(C, 128), no BN (MoCo v2's MLP head)
    keys     k_i = normalise(head_k(backbone_k(v_i)))        [B, D]   (EMA encoder, no gradient)
    loss = (InfoNCE(q1, k2, queue) + InfoNCE(q2, k1, queue)) / 2, temperature 0.2
    queue <- the newest 2B keys (a ring buffer of `queue_size` rows), after the loss
    encoder_k <- m encoder_k + (1 - m) encoder, m = key_momentum

The loss is symmetrised over the two views (as the CIFAR re-implementations of MoCo v2 do;
the paper computes one direction): both views then serve as queries, which doubles the
signal per image at the same cost of the key encoder's two forward passes. Shuffle-BN is
not implemented: it hides which keys share a batch-norm batch with their query across GPUs,
and one process computes BN over the whole batch, where the key encoder's statistics come
from its own forward passes (train mode) and are not copied from the query encoder. This
is a known deviation: a small leak through BN statistics is possible. Under torchrun the
queue receives every process's keys (gathered, as the authors' concat_all_gather) and BN is
synced over the global batch (the trainer's sync BN, where the authors shuffle the keys'
batch across GPUs instead): N processes compute what one process does.
The evaluated network is the query encoder's backbone (the paper's choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bowflow import augment
from bowflow.checks import param
from bowflow.distributed import gather_no_grad
from bowflow.heads import ema_update, frozen_copy, mlp
from bowflow.losses import embedding_std, float32, update_queue
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised

# ---------------------------------------------------------------- loss


@float32
def infonce_with_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo v2's InfoNCE: query i must pick its key k_i against the K queued keys.

    q [B, D] query-encoder output (gradient flows here only); k [B, D] key-encoder (EMA)
    output of the other view; queue [K, D] keys of past batches, L2-normalised. q and k are
    L2-normalised here, k and queue detached. logits [B, 1 + K] = [q.k, q.queue^T] / T,
    cross-entropy with the positive at index 0.
    temperature = 0.2 (MoCo v2; MoCo v1 used 0.07). Authors' queue K = 65536 with key
    encoder momentum 0.999: a slowly moving encoder keeps old keys comparable.
    """
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    positives = (q * k).sum(dim=1, keepdim=True)  # [B, 1]
    negatives = q @ queue.detach().T  # [B, K]
    logits = torch.cat([positives, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@dataclass
class MoCoParams(TrainParams):
    method: str = "moco"
    lr: float = param(
        0.06, "peak SGD lr at batch 64-256 (MoCo v2: 0.03 at batch 256 on 8 GPUs; CIFAR re-implementations use 0.06)"
    )
    temperature: float = param(0.2, "InfoNCE temperature (MoCo v2: 0.2)", above=0)
    queue_size: int = param(
        4096,
        "keys in the queue, K (MoCo: 65536 on ImageNet's 1.28M images; 4096 "
        "for CIFAR-size data keeps keys from the last ~epoch's fraction, not "
        "stale ones)",
        above=0,
    )
    key_momentum: float = param(
        0.99,
        "EMA momentum of the key encoder (MoCo: 0.999 at ~5000 "
        "steps/epoch; 0.99 for runs of a few thousand steps, as CIFAR "
        "recipes)",
        low=0,
        high=1,
    )
    proj_hidden: int = param(
        0,
        "head hidden width; 0 = the backbone's feature size, as MoCo v2's head "
        "Linear(C, C) -> ReLU -> Linear(C, 128) (2048 for its ResNet-50)",
        low=0,
    )
    proj_dim: int = param(128, "key/query size D (MoCo v2: 128)", above=0)
    crop_scale_min: float = param(0.2, "smallest crop area (MoCo v2: 0.2)", above=0, high=1)
    jitter: float = param(0.4, "brightness/contrast/saturation (MoCo v2: 0.4)", low=0)
    hue: float = param(0.1, "hue shift in turns (MoCo v2: 0.1)", low=0)
    jitter_p: float = param(0.8, "jitter probability (MoCo v2: 0.8)", low=0, high=1)
    gray_p: float = param(0.2, "grayscale probability (MoCo v2: 0.2)", low=0, high=1)
    blur_p: float = param(
        0.5,
        "blur probability (MoCo v2: 0.5); sigma 0.1-2.0 px at 224 scaled to the "
        "view (augment.blur_sigma_px), negligible at 16-32 px",
        low=0,
        high=1,
    )

    def validate(self) -> None:
        super().validate()
        if self.queue_size < 2 * self.batch_size:
            raise ValueError(
                f"queue_size ({self.queue_size}) must hold at least one step's "
                f"2 x batch_size = {2 * self.batch_size} keys"
            )


@register_method("moco")
class MoCo(SelfSupervised):
    label = "MoCo v2"
    Params = MoCoParams
    params: MoCoParams  # an instance of Params (typing only)
    queue: torch.Tensor  # buffers, registered in __init__ (typing only)
    queue_pointer: torch.Tensor
    batch_spanning = ("queue",)
    # tests/test_method_learning.py: k-NN (measured, seed 0; untrained control 40.6) 59.4.
    learning_recipe = {"epochs": 20, "proj_hidden": 64, "proj_dim": 32, "queue_size": 1024, "crop_scale_min": 0.5}

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        # MoCo v2's head (facebookresearch/moco, builder.py with mlp=True): no BatchNorm,
        # which here would also leak batch statistics between queries (no Shuffle-BN)
        self.head = mlp(backbone.out_channels, params.proj_hidden or backbone.out_channels, params.proj_dim, bn=False)
        self.key_backbone = frozen_copy(backbone)
        self.key_head = frozen_copy(self.head)
        initial = F.normalize(
            torch.randn(params.queue_size, params.proj_dim, generator=torch.Generator().manual_seed(0)), dim=1
        )
        self.register_buffer("queue", initial, persistent=True)  # [K, D]
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long), persistent=True)
        self.view = augment.ViewSpec(
            size=inputs.image_size,
            crop_scale=(params.crop_scale_min, 1.0),
            jitter=params.jitter,
            hue=params.hue,
            jitter_p=params.jitter_p,
            gray_p=params.gray_p,
            blur_p=params.blur_p,
        )

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """float views [B, 3, S, S] -> query embeddings [B, D] (not normalised)."""
        return self.head(self.backbone(self.normalizer.normalize(x)))

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """float views [B, 3, S, S] -> L2-normalised keys [B, D] of the EMA encoder."""
        return F.normalize(self.key_head(self.key_backbone(self.normalizer.normalize(x))).float(), dim=1)

    def views(self, images, index, generator):
        v1, v2 = augment.make_views(images, [self.view, self.view], generator)
        return {"view1": v1, "view2": v2}  # [B, 3, S, S]

    def step(self, views, index):
        v1, v2 = views["view1"], views["view2"]
        q1, q2 = self.queries(v1), self.queries(v2)
        k1, k2 = self.keys(v1), self.keys(v2)
        p = self.params
        loss = (
            infonce_with_queue(q1, k2, self.queue, p.temperature)
            + infonce_with_queue(q2, k1, self.queue, p.temperature)
        ) / 2
        # The queue receives the global batch's keys (the authors' concat_all_gather), view 1's
        # then view 2's, so every process holds the same queue. A new queue tensor (the loss's
        # backward still needs the old one), same buffer name.
        keys = torch.cat([gather_no_grad(k1), gather_no_grad(k2)])
        self.queue, pointer = update_queue(self.queue, keys, int(self.queue_pointer))
        self.queue_pointer.fill_(pointer)
        with torch.no_grad():
            positive_cos = (F.normalize(q1.float(), dim=1) * k2).sum(1).mean()
        return loss, {"loss": loss.detach(), "embedding_std": embedding_std(q1), "positive_cos": positive_cos}

    def after_step(self, step, total_steps):
        ema_update(self.key_backbone, self.backbone, self.params.key_momentum, copy_buffers=False)
        ema_update(self.key_head, self.head, self.params.key_momentum, copy_buffers=False)
