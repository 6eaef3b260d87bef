"""Contrastive losses over the views of a batch: SimCLR's NT-Xent and SupCon.

Used by simclr (NT-Xent), ifaclr and ifacd (SupCon); editing this file reruns their runs
only. The conventions are bowflow/losses.py's: pure functions, batch means, computed in
float32 with autocast off (`float32`); there is no target branch, so no stop-gradient:
every embedding is both an anchor and a candidate, and every one gets a gradient.
Embeddings are L2-normalised here; logits are cosines / temperature; an anchor is never
its own candidate.

Across processes. Under torchrun each process holds b of the global batch's B images.
Both losses take `gather` (a function [b, ...] -> [N * b, ...] concatenating every
process's rows in rank order, with gradients flowing back to their owner:
`bowflow.distributed.gather`) and `rank` (this process's place among the N). With
`gather`, this process's b images are the anchors and the gathered global batch the
candidates (the authors' cross-replica negatives): the per-process losses average over
processes to the global batch's loss. Without (`gather=None`, the default) the rows given
are the whole batch, as in one process, where `distributed.gather` is the identity and
both forms give the same bits. A caller may instead gather its embeddings first and pass
the global batch with `gather=None`: every process then computes the global loss (ifacd).

Notation: b this process's images, B the global batch's (B = b in one process), V views
per image, D embedding size, T temperature.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bowflow.losses import float32

Gather = Callable[[torch.Tensor], torch.Tensor]


def _whole_batch(x: torch.Tensor) -> torch.Tensor:
    """`gather` in one process: the rows are the whole batch."""
    return x


def nt_xent_pairs(
    z1: torch.Tensor, z2: torch.Tensor, gather: Gather | None = None, rank: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """NT-Xent's anchors against the global batch's embeddings.

    z1, z2 [b, D] (row i of both: two views of image i) -> (anchors [2b, D] = both views,
    view-major, L2-normalised; candidates [2B, D] = both views of the global batch,
    normalised, gathered (differentiable), view-major; own [2b] and partner [2b]: each
    anchor's own column and its other view's column among the candidates). In one process
    candidates = anchors: own is the diagonal, partner i <-> i + B. SimCLR's monitors use
    it too (positive accuracy, cosines), so they see the same pairs as the loss.
    """
    gather = gather or _whole_batch
    b = z1.shape[0]
    anchors = F.normalize(torch.cat([z1, z2]), dim=1)  # [2b, D]
    candidates = torch.cat([gather(anchors[:b]), gather(anchors[b:])])  # [2B, D]
    batch = candidates.shape[0] // 2
    local = torch.arange(b, device=z1.device) + rank * b  # this rank's rows
    own = torch.cat([local, local + batch])  # [2b]
    partner = torch.cat([local + batch, local])
    return anchors, candidates, own, partner


@float32
def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, *, gather: Gather | None = None, rank: int = 0
) -> torch.Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020): each of the 2B embeddings must pick its other
    view among the 2B - 1 others (1 positive, 2B - 2 in-batch negatives), by softmax over
    cosine / T; mean over anchors of -log p(partner).

    z1, z2 [b, D] (row i of both = two views of image i) -> scalar. Symmetric: both views
    act as anchors, mean over the 2b anchors. With `gather` (see the module docstring) the
    2b anchors of this process pick among the 2B gathered embeddings; without, b = B.
    NT-Xent is SupCon with V = 2 and no labels (`supcon_loss`, equal up to rounding: the
    rows are summed in another order).
    """
    anchors, candidates, own, partner = nt_xent_pairs(z1, z2, gather, rank)
    rows = torch.arange(len(anchors), device=anchors.device)
    logits = anchors @ candidates.T / temperature  # [2b, 2B]
    logits = logits.index_put((rows, own), torch.tensor(float("-inf"), device=logits.device))
    return F.cross_entropy(logits, partner)


@float32
def supcon_loss(
    views: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 0.07,
    *,
    gather: Gather | None = None,
    rank: int = 0,
) -> torch.Tensor:
    """Supervised-contrastive loss (Khosla et al. 2020, L_out, contrast mode "all") over V
    views per image.

    views [b, V, D] (L2-normalised here), labels [b] or None -> scalar. Every one of the
    bV embeddings is an anchor; its candidates are all BV embeddings of the (global)
    batch but itself; its positives P(i) are the other V - 1 views of its image and, with
    labels, every view of every same-class image. Per anchor
        loss_i = -1/|P(i)| sum_{p in P(i)} log softmax_{a != i}(z_i . z_a / T)[p];
    the mean over the bV anchors is returned. SupCon's factor T / T_base is 1 (both
    callers run T = T_base). Without labels it is a multi-view InfoNCE; V = 2 is NT-Xent.
    With `gather` (see the module docstring) the anchors are this process's bV rows and
    the candidates the gathered BV; labels are then not supported (they would need a
    gather too). Rows are image-major: row i * V + j is view j of image i.
    """
    b, v, d = views.shape
    if v < 2:
        raise ValueError(f"supcon_loss needs at least 2 views per image, got {v}")
    if gather is not None and labels is not None:
        raise ValueError(
            "supcon_loss takes labels only with gather=None: gather the views "
            "(and labels) first and pass the global batch"
        )
    z = F.normalize(views, dim=2)  # [b, V, D]
    anchors = z.reshape(b * v, d)  # [bV, D]
    candidates = (gather or _whole_batch)(z).reshape(-1, d)  # [BV, D]
    columns = torch.arange(candidates.shape[0], device=z.device)
    own = torch.arange(b * v, device=z.device) + rank * b * v  # each anchor's own column
    self_pair = columns[None, :] == own[:, None]  # [bV, BV]
    logits = (anchors @ candidates.T / temperature).masked_fill(self_pair, float("-inf"))
    log_prob = F.log_softmax(logits, dim=1)
    if labels is None:  # the group of a row is its (global) image
        anchor_group = own // v
        candidate_group = columns // v
    else:
        anchor_group = candidate_group = labels.to(z.device).repeat_interleave(v)
    positive = (anchor_group[:, None] == candidate_group[None, :]) & ~self_pair
    per_anchor = -log_prob.masked_fill(~positive, 0).sum(1) / positive.sum(1)
    return per_anchor.mean()


__all__ = ["nt_xent", "nt_xent_pairs", "supcon_loss"]
