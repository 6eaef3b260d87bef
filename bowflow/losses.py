"""Building blocks shared by several methods' losses; each method's own loss is in its module.

Every loss in bowflow follows these conventions:
- Pure: no module state. State that a method keeps between steps (MoCo's queue, DINO's
  centre, OBoW's running mean distance) is passed in and the updated value is returned;
  the method stores it (e.g. in a buffer) and passes it back next step.
- Stop-gradient is applied inside the function, to whatever is a target (BYOL/SimSiam
  target branch, MoCo keys and queue, SwAV codes, DINO teacher, BoW targets, a
  distillation teacher's features), so a caller cannot forget it.
- Losses are averaged over the batch. Two-view losses take one direction of prediction
  where the paper symmetrises by hand (the docstring shows the symmetric call).
- Computed in float32 with autocast off (`float32` below): the training loop runs under
  bf16 autocast, and bf16 keeps 8 bits of mantissa, too few for cross-correlations near
  1, cosine logits divided by a temperature of 0.1, or distances between nearby features.

A loss lives here only when two or more methods use it; editing this file reruns every
run of those methods. Notation: B batch, D embedding size, K queue length.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def float32(fn):
    """Run `fn` with autocast off and its floating-point tensor arguments (also inside
    lists/tuples) cast to float32. Casting is differentiable, so gradients still flow."""

    def cast(x):
        if torch.is_tensor(x) and x.is_floating_point():
            return x.float()
        if isinstance(x, (list, tuple)):
            return type(x)(cast(v) for v in x)
        return x

    def first_tensor(values):
        for v in values:
            if torch.is_tensor(v):
                return v
            if isinstance(v, (list, tuple)):
                found = first_tensor(v)
                if found is not None:
                    return found
        return None

    @functools.wraps(fn)
    def run(*args, **kwargs):
        anchor = first_tensor(list(args) + list(kwargs.values()))
        device_type = anchor.device.type if anchor is not None else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*cast(args), **{k: cast(v) for k, v in kwargs.items()})

    return run


# ---------------------------------------------------------------- shared by several methods


@torch.no_grad()
def update_queue(queue: torch.Tensor, keys: torch.Tensor, pointer: int) -> tuple[torch.Tensor, int]:
    """Ring buffer: write keys [B, D] into queue [K, D] at rows pointer, pointer + 1, ...
    (wrapping past row K - 1 to row 0), overwriting the oldest keys.

    Returns (new queue, new pointer = (pointer + B) mod K); the input queue is unchanged
    (one K x D copy per step: 32 MB at the authors' K = 65536, D = 128). Needs B <= K.
    """
    size, b = queue.shape[0], keys.shape[0]
    if b > size:
        raise ValueError(f"cannot push {b} keys into a queue of {size}")
    rows = (pointer + torch.arange(b, device=queue.device)) % size
    return queue.index_copy(0, rows, keys.detach().to(queue.dtype)), (pointer + b) % size


@torch.no_grad()
def perplexity(p: torch.Tensor) -> torch.Tensor:
    """exp(entropy in nats) of distributions over the last dimension: p [..., K] -> [...].

    The effective number of words used: K for uniform, 1 for one-hot. OBoW monitors it on
    the targets: `perplexity(targets.mean(0))` (words used across the batch) and
    `perplexity(targets).mean()` (per image); a collapsing perplexity signals collapse.
    """
    return torch.exp(-torch.xlogy(p, p).sum(dim=-1))


@torch.no_grad()
@float32
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor that every method logs: z [B, D] -> scalar.

    Mean over dimensions of the per-dimension std (over the batch) of the L2-normalised
    embeddings, times sqrt(D). Embeddings spread over the sphere have std 1/sqrt(D) per
    dimension, so this is about 1; it goes to 0 when all embeddings collapse to one
    point (and falls when they collapse to a low-dimensional subspace).
    """
    return F.normalize(z, dim=1).std(dim=0).mean() * math.sqrt(z.shape[1])
