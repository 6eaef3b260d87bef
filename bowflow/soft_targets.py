"""KL divergence from a soft target distribution to a softmax prediction.

    KL(y || softmax(logits)) = sum_k y_k log y_k - y_k log softmax(logits)_k

Used by the distillers' KD term (`roles.distiller.kd_loss`: y the teacher's softmax at
temperature T, logits the student's divided by T) and by OBoW (y the teacher's bag of
words); editing this file reruns their runs only. It is the soft-target cross-entropy
minus the target's entropy: the same gradient, but 0 at a perfect prediction, so a
logged value says how far the prediction is. The conventions are bowflow/losses.py's:
pure, batch mean, float32 with autocast off (`float32`), stop-gradient on the target
(applied here). `torch.xlogy` makes 0 log 0 = 0, so targets may hold exact zeros
(one-hot, or a softmax that underflowed).

Notation: B rows, K classes (or words).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bowflow.losses import float32


@float32
def kl_to_target(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KL(y || softmax(logits)) = sum_k y_k (log y_k - log softmax(logits)_k), mean over
    the batch. logits [B, K]; targets [B, K], rows summing to 1, detached here -> scalar.
    Same gradient as the soft cross-entropy but 0 at a perfect prediction (the target
    entropy is subtracted). Equals torch's `F.kl_div(log_softmax(logits), targets,
    reduction="batchmean")` up to rounding."""
    targets = targets.detach()
    pointwise = torch.xlogy(targets, targets) - targets * F.log_softmax(logits, dim=1)
    return pointwise.sum(dim=1).mean()


__all__ = ["kl_to_target"]
