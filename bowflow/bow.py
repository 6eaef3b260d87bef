"""Visual-word vocabularies and bag-of-words (BoW) targets.

Pipeline for one generation (BoWNet: Gidaris et al., "Learning Representations by Predicting
Bags of Visual Words", CVPR 2020, https://arxiv.org/abs/2002.12247):
1. `sample_local_features`: run the frozen teacher over the training images and keep
   random local feature vectors of one stage's map                      -> [S, C]
2. `kmeans`: faiss k-means on those vectors                           -> words [K, C]
3. `assign_codes`: nearest word (squared L2) of every map location      -> codes [N, h*w]
   (computed once per generation, batched on the device: the teacher sees the clean
   image, so the targets never change during student training and are cached)
4. `bow_targets`: histogram or binary pooling of codes, L1-normalised -> targets [B, K]
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch
import torch.nn.functional as F

from bowflow.networks import Backbone


def float32(fn):
    """Run `fn` with autocast off and its floating-point tensor arguments cast to float32
    (the guard every loss of bowflow.losses has; `__wrapped__` is the unguarded `fn`).
    Written here rather than imported from bowflow.losses so that the vocab stage, which
    runs this module, does not depend on the losses file (an edit there would otherwise
    invalidate every cached vocabulary)."""

    @functools.wraps(fn)
    def run(*args):
        device = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args))

    return run


@torch.no_grad()
def teacher_maps(
    teacher: Backbone,
    images: torch.Tensor,
    layer: str,
    batch_size: int,
    device: torch.device,
    preprocess,
    drop_border: int = 0,
):
    """Yield (start index, maps [b, C, h, w]) over uint8 `images` [N, 3, H, W], in order.

    `drop_border` removes that many locations on every side of the map (border cells see
    the zero padding and carry little content).
    """
    teacher.eval()
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start : start + batch_size].to(device, non_blocking=True))
        maps = teacher.feature_map(x, layer).float()
        if drop_border:
            maps = maps[:, :, drop_border:-drop_border, drop_border:-drop_border]
        yield start, maps


@torch.no_grad()
def sample_local_features(
    teacher: Backbone,
    images: torch.Tensor,
    layer: str,
    n_samples: int,
    batch_size: int,
    device: torch.device,
    preprocess,
    seed: int,
    drop_border: int = 0,
) -> torch.Tensor:
    """Sample `n_samples` local feature vectors [S, C] uniformly over images and locations.

    Each image contributes the same number of random locations (ceil(S / N)), so the
    sample covers the whole training set; the result is trimmed to exactly S rows.
    """
    generator = torch.Generator().manual_seed(seed)
    per_image = -(-n_samples // len(images))
    chunks = []
    for _, maps in teacher_maps(teacher, images, layer, batch_size, device, preprocess, drop_border):
        b, c, h, w = maps.shape
        flat = maps.flatten(2).transpose(1, 2)  # [b, h*w, C]
        take = min(per_image, h * w)
        idx = torch.rand(b, h * w, generator=generator).argsort(dim=1)[:, :take]
        chunks.append(torch.gather(flat.cpu(), 1, idx[:, :, None].expand(-1, -1, c)).reshape(-1, c))
    features = torch.cat(chunks)
    if len(features) < n_samples:
        raise ValueError(
            f"vocab.samples={n_samples} but the teacher maps only hold "
            f"{len(features)} local features; lower vocab.samples"
        )
    order = torch.randperm(len(features), generator=generator)[:n_samples]
    return features[order].contiguous()


def kmeans(features: torch.Tensor, k: int, iters: int, seed: int, use_gpu: bool | None = None) -> dict:
    """faiss k-means of features [S, C] into k words.

    Returns `words` [K, C] float32, `inertia` (sum of squared distances to the nearest
    word), `word_counts` [K], `seconds`, `gpu` (whether faiss-gpu was used). faiss-gpu is
    used when it is installed and a GPU is visible, unless use_gpu=False.
    """
    import faiss

    x = np.ascontiguousarray(features.float().numpy())
    if k > len(x):
        raise ValueError(f"vocab.size={k} is larger than the {len(x)} sampled features")
    gpu = faiss_gpu_available() if use_gpu is None else use_gpu
    start = time.perf_counter()
    km = faiss.Kmeans(
        x.shape[1], k, niter=iters, seed=seed, gpu=gpu, verbose=False, max_points_per_centroid=max(256, -(-len(x) // k))
    )
    km.train(x)
    assert km.centroids is not None  # set by train()
    distances, assignment = km.index.search(x, 1)
    seconds = time.perf_counter() - start
    counts = np.bincount(assignment[:, 0], minlength=k)
    return {
        "words": torch.from_numpy(km.centroids.copy()),
        "inertia": float(distances.sum()),
        "word_counts": torch.from_numpy(counts),
        "seconds": seconds,
        "gpu": bool(gpu),
    }


def faiss_gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@float32
def nearest_words(maps: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """maps [B, C, h, w], words [K, C] -> index of the nearest word [B, h*w] (squared L2).

    One batched matrix product: ||f - w||^2 = ||f||^2 - 2 f.w + ||w||^2, and ||f||^2 does not
    change the argmin, so it is skipped. In float32 with autocast off (`float32`): under
    bf16 autocast the product would round f.w to 8 bits of mantissa and pick another word
    for features between two nearby words.
    """
    flat = maps.flatten(2).transpose(1, 2)  # [B, L, C]
    scores = flat @ words.t() * -2.0 + (words * words).sum(1)  # [B, L, K]
    return scores.argmin(dim=2)


@torch.no_grad()
def assign_codes(
    teacher: Backbone,
    images: torch.Tensor,
    layer: str,
    words: torch.Tensor,
    batch_size: int,
    device: torch.device,
    preprocess,
    drop_border: int = 0,
) -> torch.Tensor:
    """Word index of every map location of every image: codes [N, h*w] int16 (on CPU)."""
    words = words.to(device)
    codes = []
    for _, maps in teacher_maps(teacher, images, layer, batch_size, device, preprocess, drop_border):
        codes.append(nearest_words(maps, words).to(torch.int16).cpu())
    return torch.cat(codes)


def bow_targets(codes: torch.Tensor, k: int, pooling: str = "histogram") -> torch.Tensor:
    """codes [B, L] (word indices) -> L1-normalised BoW targets [B, K] float32.

    histogram: counts of each word / L; binary: presence of each word / number present.
    """
    codes = codes.long()
    counts = torch.zeros(codes.shape[0], k, device=codes.device)
    counts.scatter_add_(1, codes, torch.ones_like(codes, dtype=torch.float32))
    if pooling == "binary":
        counts = (counts > 0).float()
    elif pooling != "histogram":
        raise ValueError(f"unknown pooling '{pooling}': expected 'histogram' or 'binary'")
    return counts / counts.sum(dim=1, keepdim=True)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of distributions p [B, K] -> [B]."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1)


@float32
def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-sum_k y_k log softmax(logits)_k, averaged over the batch: logits, targets [B, K].

    In float32 with autocast off (`float32`), as every loss of bowflow.losses: CPU
    autocast keeps log_softmax in the input's dtype, so bf16 logits (BoWNet's head is a
    linear layer) gave log-probabilities and their gradient in bf16 (log-probabilities
    near log(1/64) = -4.2 then carry +-0.016 of rounding; docs/precision.md)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def word_usage(counts: torch.Tensor) -> dict:
    """Summary of how evenly words are used, from per-word counts [K]."""
    p = counts.float() / counts.sum()
    return {
        "words_used": int((counts > 0).sum()),
        "usage_perplexity": float(torch.exp(entropy(p[None]))[0]),
        "largest_word_fraction": float(p.max()),
    }
