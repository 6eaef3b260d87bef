"""OBoW (Gidaris et al., CVPR 2021): predict an online teacher's bag of visual words.

Each step, for a batch of B images:
  teacher (EMA of the student backbone) on the plain full image -> maps of the last two
  stages [B, C_l, h_l, w_l] -> soft BoW targets y_l [B, K] against the level's vocabulary
  (a queue of K teacher features, `obow_bow_targets`; running-mean distance m_l);
  student on 2 large crops + 5 of the 9 cells of a 3x3 grid (colour jitter, grayscale) ->
  its pooled last-stage feature f (not normalised, as the authors) -> per level, a weight
  generator turns each L2-normalised word into a classifier weight W_l [K, C];
  logits = kappa * f W_l^T -> `obow_loss`: KL(y_l || softmax) (bowflow/soft_targets.py)
  averaged over the rows of one crop type (2B large-crop rows, 5B patch rows) and over
  the levels, then summed over the 2 crop types (the authors' `_bow_loss` per crop type,
  `sum()` in their solver): large crops and patches weigh the same;
  then each level's queue receives one random location of the 3x3-average-pooled teacher
  map per image, replacing the oldest words, and after the optimizer step the teacher
  follows the student with momentum 0.99 -> 1 (cosine over steps).

As in the authors' code (valeoai/obow, obow/builder_obow.py), the student predicts both
levels from its final pooled feature (generator: Linear(C_l, 2C) -> BN over the K words ->
ReLU -> Linear(2C, C) -> L2), each crop type is one forward pass (BN statistics over the
2B large crops, over the 5B patches), the
teacher runs in train mode (batch statistics) and its BN running statistics are copied
from the student, not averaged (`heads.ema_update`). The evaluated network is the student.
Queues start from random locations of the first batch's teacher maps (not random vectors:
distances to random vectors say nothing about the features' scale).
Under torchrun, as the authors: the queues receive every process's pushed features and the
running mean distance is over the global batch (gathered), so all processes hold the same
vocabulary; the weight generator's BN (over the K words, the same on every process) is not
synced (`WordBatchNorm`). The random locations are drawn in `views` for the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bowflow import augment
from bowflow.checks import param
from bowflow.distributed import gather_no_grad
from bowflow.heads import cosine_momentum, ema_update, frozen_copy
from bowflow.losses import embedding_std, float32, perplexity, update_queue
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised
from bowflow.soft_targets import kl_to_target

# ---------------------------------------------------------------- loss


@torch.no_grad()
@float32
def soft_assign(
    features: torch.Tensor,
    words: torch.Tensor,
    inv_delta: float,
    mean_distance: torch.Tensor | float,
    decay: float = 0.99,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OBoW soft assignment of local features to visual words.

    features [N, C], words [K, C] -> squared L2 distances d [N, K];
    m' = decay * m + (1 - decay) * mean_n min_k d[n, k]  (running mean of the distance to
    the nearest word, updated with this batch first, as the authors do);
    codes = softmax_k(-(inv_delta / m') * d) [N, K], rows sum to 1.
    Dividing by m' makes the sharpness independent of the feature scale, which drifts
    as the teacher trains. Returns (codes, m' as a 0-d tensor), no gradient.
    Authors: m starts at 0.5, decay 0.99; inv_delta 10 (ResNet-18) or 15 (ResNet-50).
    decay = 1 keeps m fixed (e.g. evaluation). inv_delta -> infinity gives one-hot
    nearest-word codes (BoWNet's hard assignment).
    """
    distances = (
        (features * features).sum(1, keepdim=True) - 2 * features @ words.T + (words * words).sum(1)
    ).clamp_min(0)  # [N, K]
    mean_distance = torch.as_tensor(mean_distance, dtype=torch.float32, device=features.device)
    nearest = gather_no_grad(distances.min(dim=1).values)  # every process's rows (torchrun)
    mean_distance = decay * mean_distance + (1 - decay) * nearest.mean()
    return F.softmax(-(inv_delta / mean_distance) * distances, dim=1), mean_distance


# Rows of [rows, K] scores computed at a time by `obow_bow_targets`: 2048 x 2048 words x 4
# bytes = 16 MB, which stays in the last-level cache, where the [N, K] matrix of a 128-image
# batch's 14 x 14 map (51M entries, 205 MB) made every element-wise pass a trip to memory
# (docs/BENCHMARKS.md, section 15: the targets took about half of OBoW's step).
TARGET_CHUNK_ROWS = 2048


@torch.no_grad()
@float32
def obow_bow_targets(
    maps: torch.Tensor,
    words: torch.Tensor,
    inv_delta: float,
    mean_distance: torch.Tensor | float,
    drop_border: int = 1,
    decay: float = 0.99,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OBoW targets of one level: teacher maps [B, C, h, w], words [K, C] -> BoW [B, K].

    Drops `drop_border` locations on each side (border cells see the zero padding;
    authors: 1), soft-assigns every location as `soft_assign` does, max-pools the codes
    over locations (does word k appear anywhere, softly), L1-normalises each row.
    Returns (targets [B, K] rows summing to 1, the updated running mean distance).

    The same codes as `soft_assign` on all B * h' * w' locations, without ever holding
    their [N, K] distances: with s = 2 f.w - |w|^2 [rows, K], d = |f|^2 - s, so the nearest
    distance is |f|^2 - max_k s and softmax_k(-a d) = softmax_k(a s) (|f|^2 is constant along
    the row). One pass over chunks of whole images finds each location's nearest distance
    (for the running mean, which the authors update before assigning); a second recomputes s
    per chunk (a [rows, C] x [C, K] product, cheap next to the softmax) and keeps only the
    chunk's max over locations. Equal to `soft_assign` up to float rounding (tests/test_losses.py).
    """
    if drop_border:
        maps = maps[:, :, drop_border:-drop_border, drop_border:-drop_border]
    b, c = maps.shape[:2]
    features = maps.flatten(2).transpose(1, 2)  # [B, L, C], L = h' * w' locations
    locations = features.shape[1]
    per_chunk = max(1, TARGET_CHUNK_ROWS // locations)  # whole images per chunk
    chunks = [features[i : i + per_chunk].reshape(-1, c) for i in range(0, b, per_chunk)]  # [rows, C]
    words_sq = (words * words).sum(1)  # [K]
    nearest = torch.cat(
        [((f * f).sum(1) - torch.addmm(words_sq, f, words.T, beta=-1, alpha=2).amax(1)).clamp_min(0) for f in chunks]
    )  # [B * L]
    mean_distance = torch.as_tensor(mean_distance, dtype=torch.float32, device=features.device)
    mean_distance = decay * mean_distance + (1 - decay) * gather_no_grad(nearest).mean()  # every process's rows
    sharpness = inv_delta / mean_distance
    bow = torch.cat(
        [
            F.softmax(torch.addmm(words_sq, f, words.T, beta=-1, alpha=2).mul_(sharpness), dim=1)
            .view(-1, locations, words.shape[0])
            .amax(dim=1)
            for f in chunks
        ]
    )  # [B, K]
    return bow / bow.sum(dim=1, keepdim=True), mean_distance


@float32
def obow_loss(logits: list[list[torch.Tensor]], targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """OBoW's loss, combined over crop types and BoW levels as the authors' code does.

    logits: T lists, one per crop type (OBoW: the 2 large crops, the 5 patches), each of
    L tensors [n_t * B, K] (one per level), view-major: rows j*B .. (j+1)*B - 1 are crop j
    of every image. targets: L tensors [B, K] (the teacher's BoW of each level, detached).
    Per crop type t and level l: KL(y_l || softmax(logits[t][l])) averaged over all
    n_t * B rows (each crop of an image predicts that image's target); then averaged over
    the levels; then SUMMED over the crop types:
        loss = sum_t mean_l mean_rows KL.
    So the 2 large crops and the 5 patches weigh the same whatever their counts, and a
    2-type run has twice the gradient of a plain mean over all 7 crops' rows.
    Returns (loss, terms [T, L] of the unweighted per-type, per-level KLs, detached).
    """
    terms = torch.stack(
        [
            torch.stack([kl_to_target(x, y.repeat(x.shape[0] // y.shape[0], 1)) for x, y in zip(per_type, targets)])
            for per_type in logits
        ]
    )  # [T, L]
    return terms.mean(dim=1).sum(), terms.detach()


@dataclass
class OBoWParams(TrainParams):
    method: str = "obow"
    lr: float = param(0.05, "peak SGD lr (authors: 0.05 at batch 128 for ResNet-18, cosine; kept for batch 64-256)")
    num_words: int = param(
        2048,
        "K, words per level (a queue; paper 8192 on ImageNet, fewer for "
        "10-class small images); a multiple of batch_size",
        above=0,
    )
    base_momentum: float = param(0.99, "EMA teacher momentum at step 0, -> 1 on a cosine (paper 0.99)", low=0, high=1)
    inv_delta: float = param(
        10.0, "soft-assignment sharpness, in units of 1 / running mean distance (paper: 10 for ResNet-18)", above=0
    )
    distance_decay: float = param(
        0.99, "decay of the running mean of the nearest-word distance (paper 0.99, init 0.5)", low=0, high=1
    )
    kappa: float = param(5.0, "fixed logit scale (paper: 5 for ResNet-18)", above=0)
    normalize_features: bool = param(
        False,
        "L2-normalise the student's pooled feature before the "
        "kappa-scaled dot product (a cosine classifier). Authors: "
        "no (BoWPredictor scales the raw feature by kappa)",
    )
    drop_border: int = param(
        1, "map cells dropped on each side before BoW (paper 1); 0 where fewer than 2x2 would remain", low=0
    )
    num_crops: int = param(2, "large student crops (paper 2)", above=0)
    crop_size: float = param(
        1.0, "large crop side, fraction of the image (paper 160 of 224 px; full size on small images)", above=0, high=1
    )
    crop_scale_min: float = param(
        0.25, "large crop area range, fraction of the image (paper 0.08-0.6; raised for 16-32 px)", above=0, high=1
    )
    crop_scale_max: float = param(0.7, "see crop_scale_min", above=0, high=1)
    num_patches: int = param(5, "grid cells (of 9) given to the student (paper 5)", low=0, high=9)
    patch_size: float = param(
        0.5,
        "patch side, fraction of the image, >= 4 px (paper 96 of 224 px, ~0.6 of the 160 px crops)",
        above=0,
        high=1,
    )
    jitter: float = param(0.4, "brightness/contrast/saturation strength (paper 0.4)", low=0)
    hue: float = param(0.1, "hue shift, fraction of a turn (paper 0.1)", low=0)
    jitter_p: float = param(0.8, "probability of colour jitter per view (paper 0.8)", low=0, high=1)
    gray_p: float = param(0.2, "probability of grayscale per view (paper 0.2)", low=0, high=1)

    def validate(self) -> None:
        super().validate()
        if self.num_words % self.batch_size:
            raise ValueError(
                f"num_words ({self.num_words}) must be a multiple of batch_size "
                f"({self.batch_size}): each step pushes one word per image"
            )
        if self.crop_scale_min > self.crop_scale_max:
            raise ValueError(
                f"crop_scale_min ({self.crop_scale_min}) must be <= crop_scale_max ({self.crop_scale_max})"
            )


def grid_cells(images: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` distinct random cells per image of a 3x3 grid: uint8 [B, 3, H, W] ->
    [count * B, 3, c, c] (cell-major: cell j of every image, then cell j + 1), with
    c = max(H // 3, min(H, 4)); cells overlap when H < 12 so none is below 4 px."""
    b, _, h, w = images.shape
    side = max(min(h, w) // 3, min(h, w, 4))
    tops = torch.linspace(0, h - side, 3).round().long().tolist()
    lefts = torch.linspace(0, w - side, 3).round().long().tolist()
    cells = torch.stack([images[:, :, t : t + side, x : x + side] for t in tops for x in lefts], 1)
    chosen = torch.rand(b, 9, generator=generator, device=images.device).argsort(1)[:, :count]
    picked = cells[torch.arange(b, device=images.device)[:, None], chosen]  # [B, count, 3, c, c]
    return picked.transpose(0, 1).reshape(count * b, *cells.shape[2:])


class WordBatchNorm(nn.Module):
    """nn.BatchNorm1d's parameters, buffers and arithmetic, normalising over the K words of
    a vocabulary (not over images). Every process holds the same words, so its statistics
    are already the global ones: it is deliberately not a torch BatchNorm class, which the
    trainer's sync BN (torchrun) would convert into a BN over N copies of the words (same
    output, but a running variance unbiased with N*K instead of K, and float32 sums in
    another order)."""

    def __init__(self, features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.running_mean: torch.Tensor
        self.running_var: torch.Tensor
        self.num_batches_tracked: torch.Tensor
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training, self.momentum, self.eps
        )


class WeightGenerator(nn.Module):
    """Words [K, C_l] -> classifier weights [K, C]: L2-normalise, Linear(C_l, 2C) -> BN over
    the K words -> ReLU -> Linear(2C, C) -> L2-normalise (OBoW's dynamic BoW head)."""

    def __init__(self, word_dim: int, feature_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(word_dim, 2 * feature_dim, bias=False),
            WordBatchNorm(2 * feature_dim),
            nn.ReLU(inplace=True),
            nn.Linear(2 * feature_dim, feature_dim),
        )

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(F.normalize(words, dim=1)), dim=1)


@register_method("obow")
class OBoW(SelfSupervised):
    label = "OBoW"
    Params = OBoWParams
    params: OBoWParams  # an instance of Params (typing only)
    pointer: torch.Tensor  # buffers, registered in __init__ (typing only)
    initialized: torch.Tensor
    momentum: torch.Tensor
    batch_spanning = ("queue", "mean distance")
    levels = 2  # BoW from the last two backbone stages
    # tests/test_method_learning.py: k-NN (measured, seed 0; untrained control 40.6) 59.4,
    # without its 5 grid patches: at 16 px a patch is 8 px, a fragment of the 10 px glyph
    # (measured, 20 epochs: 46.5 with them, 59.4 without).
    learning_recipe = {"epochs": 20, "num_words": 256, "num_patches": 0}

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        self.teacher = frozen_copy(backbone)
        self.first_stage = len(backbone.channels) - self.levels
        dims = backbone.channels[self.first_stage :]
        self.generators = nn.ModuleList(WeightGenerator(c, backbone.out_channels) for c in dims)
        for level, c in enumerate(dims):
            self.register_buffer(f"words{level}", torch.zeros(params.num_words, c))
            self.register_buffer(f"mean_distance{level}", torch.tensor(0.5))
        self.register_buffer("pointer", torch.tensor(0))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("momentum", torch.tensor(params.base_momentum, dtype=torch.float64))
        size = inputs.image_size
        common = dict(jitter=params.jitter, hue=params.hue, jitter_p=params.jitter_p, gray_p=params.gray_p)
        self.crop = augment.ViewSpec(
            size=augment.scaled_size(size, params.crop_size),
            crop_scale=(params.crop_scale_min, params.crop_scale_max),
            **common,
        )
        self.patch = augment.ViewSpec(
            size=augment.scaled_size(size, params.patch_size), crop_scale=(0.6, 1.0), **common
        )

    def _border(self, side: int) -> int:
        drop_border = self.params.drop_border
        return drop_border if side - 2 * drop_border >= 2 else 0

    @torch.no_grad()
    def _pooled_sizes(self, height: int, width: int) -> list[int]:
        """Locations per image of each level's 3x3-average-pooled teacher map for H x W
        images (what `_local_features` draws from), from one probe image through the
        teacher in eval mode (no BN statistics touched); cached per image size."""
        cache = self.__dict__.setdefault("_pooled_cache", {})
        if (height, width) not in cache:
            was_training = self.teacher.training
            self.teacher.eval()
            weight = next(self.teacher.parameters())
            probe = torch.zeros(1, 3, height, width, device=weight.device, dtype=weight.dtype)
            maps = self.teacher.feature_maps(probe)[self.first_stage :]
            self.teacher.train(was_training)
            sizes = []
            for m in maps:
                k = min(3, m.shape[2], m.shape[3])
                sizes.append((m.shape[2] - k + 1) * (m.shape[3] - k + 1))
            cache[(height, width)] = sizes
        return cache[(height, width)]

    @torch.no_grad()
    def _local_features(self, maps: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """The drawn locations `where` [B, count] of the 3x3-average-pooled map [B, C, h, w]
        (kernel shrinks to the map on maps under 3x3) -> [B, count, C]."""
        k = min(3, maps.shape[2], maps.shape[3])
        pooled = F.avg_pool2d(maps.float(), k, stride=1).flatten(2)  # [B, C, L]
        rows = torch.arange(maps.shape[0], device=maps.device)[:, None]
        return pooled[rows, :, where]  # [B, count, C]

    def views(self, images, index, generator):
        """The draws of one step, in the order the unsplit step drew them: the queues' first
        words (first step only), the large crops, the grid cells and their patches, then the
        location pushed into each level's queue. Every tensor is [B, ...] (image-major)."""
        p, b = self.params, images.shape[0]
        sizes = self._pooled_sizes(images.shape[2], images.shape[3])
        out = {"images": images}  # the teacher's input
        if not bool(self.initialized):  # `count` locations per image fill each queue
            count = -(-p.num_words // b)
            for level, size in enumerate(sizes):
                out[f"first_words{level}"] = torch.randint(
                    size, (count, b), generator=generator, device=images.device
                ).T
        out["crops"] = torch.stack(
            [augment.make_view(images, self.crop, generator) for _ in range(p.num_crops)], 1
        )  # [B, n, 3, s, s]
        if p.num_patches:
            cells = grid_cells(images, p.num_patches, generator)  # [n*B, ...] cell-major
            patches = augment.make_view(cells, self.patch, generator)
            out["patches"] = patches.view(p.num_patches, b, *patches.shape[1:]).transpose(0, 1)
        for level, size in enumerate(sizes):
            out[f"push{level}"] = torch.randint(size, (1, b), generator=generator, device=images.device).T  # [B, 1]
        return out

    def step(self, views, index):
        p = self.params
        with torch.no_grad():
            plain = self.normalizer.normalize(augment.to_float(views["images"]))
            maps = self.teacher.feature_maps(plain)[self.first_stage :]
            if not bool(self.initialized):  # fill each queue from the first batch
                for level, m in enumerate(maps):
                    first = gather_no_grad(self._local_features(m, views[f"first_words{level}"]))
                    words = first.transpose(0, 1).reshape(-1, first.shape[2])  # location-major
                    getattr(self, f"words{level}").copy_(words[: p.num_words])
                self.initialized.fill_(True)
            targets, stats = [], {}
            for level, m in enumerate(maps):
                y, distance = obow_bow_targets(
                    m,
                    getattr(self, f"words{level}"),
                    p.inv_delta,
                    getattr(self, f"mean_distance{level}"),
                    self._border(min(m.shape[2:])),
                    p.distance_decay,
                )
                getattr(self, f"mean_distance{level}").copy_(distance)
                targets.append(y)
                stats[f"mean_distance{level}"] = distance
                stats[f"perplexity_batch{level}"] = perplexity(y.mean(0))
                stats[f"perplexity_image{level}"] = perplexity(y).mean()

        # One forward per crop type, as the authors: BN statistics over the 2B large crops
        crops = views["crops"].transpose(0, 1).reshape(-1, *views["crops"].shape[2:])  # crop-major
        student = [self.backbone(self.normalizer.normalize(crops))]  # [2B, C]
        if p.num_patches:
            patches = views["patches"].transpose(0, 1).reshape(-1, *views["patches"].shape[2:])
            student.append(self.backbone(self.normalizer.normalize(patches)))  # [n*B, C]
        features = [F.normalize(f, dim=1) if p.normalize_features else f for f in student]
        weights = [g(getattr(self, f"words{level}")) for level, g in enumerate(self.generators)]
        logits = [[p.kappa * F.linear(f, w) for w in weights] for f in features]  # T x L x [n_t*B, K]
        loss, terms = obow_loss(logits, targets)
        for level in range(self.levels):
            stats[f"loss{level}"] = terms[:, level].sum()  # this level's share, summed over crop types
        stats["loss_crops"] = terms[0].mean()
        if p.num_patches:
            stats["loss_patches"] = terms[1].mean()

        with torch.no_grad():  # push one word per image per level, the global batch's
            pointer = int(self.pointer)
            for level, m in enumerate(maps):
                queue = getattr(self, f"words{level}")
                pushed = gather_no_grad(self._local_features(m, views[f"push{level}"])[:, 0])
                new, next_pointer = update_queue(queue, pushed, pointer)
                queue.copy_(new)
            self.pointer.fill_(next_pointer)
        stats.update(loss=loss.detach(), embedding_std=embedding_std(student[0]), momentum=self.momentum.float())
        return loss, stats

    def after_step(self, step, total_steps):
        self.momentum.fill_(cosine_momentum(step, total_steps, self.params.base_momentum))
        ema_update(self.teacher, self.backbone, float(self.momentum))
