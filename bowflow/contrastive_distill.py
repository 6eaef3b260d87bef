"""Contrastive distillation: CRD (memory banks + NCE) and IFACD (teacher layers as extra
views of a supervised-contrastive loss), with their trainable heads.

Unlike `bowflow.distill_losses`, the teacher side here goes through trainable heads (CRD's
teacher embed head, IFACD's rescalers), so embeddings are NOT detached: detach the
teacher's features before the heads. Losses run in float32 with autocast off.

Notation: B batch, N dataset size, K negatives, D embedding size, V views.
Reference: shared/reference/METHODS.md, "Knowledge distillation".
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bowflow.losses import _float32


def _pool(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> global average pool; [B, N, C] (tokens) -> mean over N; [B, C] as is."""
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    if x.dim() == 3:
        return x.mean(dim=1)
    if x.dim() == 2:
        return x
    raise ValueError(f"expected [B, C], [B, N, C] or [B, C, H, W], got {tuple(x.shape)}")


class EmbedHead(nn.Module):
    """RepDistiller's embed heads: features [B, C] (or a map / tokens, pooled first) ->
    linear(dim, with bias) -> [B, dim], L2-normalised per row (CRD's `Embed`) or, with
    normalize=False, left as is (`LinearEmbed`, CC's). dim = 128 (the benchmark's)."""

    def __init__(self, c_in: int, dim: int = 128, normalize: bool = True):
        super().__init__()
        self.linear = nn.Linear(c_in, dim)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(_pool(x))
        return F.normalize(z, dim=1) if self.normalize else z


# ---------------------------------------------------------------- CRD (Tian et al. 2020)

@_float32
def nce_loss(log_scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """CRD's NCE: tell the positive (column 0) from K noise samples (columns 1..K).

    log_scores [B, 1 + K]: log of the model's unnormalised probability of each pair,
    s / T - log Z. With noise probability 1/N, the posterior that a pair is data is
    h = P / (P + K/N); loss = -[sum_i log h(pos_i) + sum_{i,k} log(1 - h(neg_ik))] / B.
    Computed in log space (softplus), so exp(1 / 0.07) never overflows.
    """
    b, k = log_scores.shape[0], log_scores.shape[1] - 1
    log_noise = math.log(k / n_data)                                 # log(K * P_noise)
    positive = -F.softplus(log_noise - log_scores[:, 0])             # log h
    negative = -F.softplus(log_scores[:, 1:] - log_noise)            # log (1 - h)
    return -(positive.sum() + negative.sum()) / b


def _bank_scores(memory: torch.Tensor, rows: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """memory [N, D], rows [B, 1 + K] indices, emb [B, D] -> [B, 1 + K] dot products of
    emb_b with memory[rows[b, j]]. Whichever is cheaper: gathering B(1 + K) rows, or one
    [B, N] product and then picking (when B(1 + K) > N, e.g. CIFAR with K = 16384).
    That path multiplies by a copy of the bank (smaller than the gather it replaces):
    autograd keeps it for the backward pass, and the bank is updated in place before."""
    if rows.numel() > memory.shape[0]:
        return (emb @ memory.clone().T).gather(1, rows)
    return torch.einsum("bkd,bd->bk", memory[rows], emb)


def sample_negatives(index: torch.Tensor, n_data: int, k: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """K indices per row, uniformly (with replacement) from the N - 1 indices other than
    index[b]: index [B] -> [B, K], on index's device. Drawn on the generator's device
    (CPU by default); a seeded generator gives the same negatives every time."""
    device = generator.device if generator is not None else torch.device("cpu")
    draw = torch.randint(0, n_data - 1, (len(index), k), generator=generator, device=device)
    draw = draw.to(index.device)
    return draw + (draw >= index.unsqueeze(1)).long()                # skip the own index


class ContrastiveMemory(nn.Module):
    """CRD's two memory banks and its two-sided NCE loss.

    memory_s, memory_t [N, dim]: one unit-norm embedding per dataset image, of the student
    and of the teacher; buffers, so they are saved in state_dict and restored on resume
    (also log_z_s, log_z_t: the NCE normalising constants, NaN until the first batch fixes
    them to log(mean exp(s / T) * N), as the authors do). Initialised to random unit rows
    drawn from `seed` (CRD draws uniform rows of about unit norm).

    forward(s_emb [B, dim], t_emb [B, dim] (unit norm, from `EmbedHead`s), index [B]
    dataset indices, generator=None, negatives=None [B, K']) -> loss:
    1. rows = [index, K negatives]; negatives sampled by `sample_negatives` unless given
       (CRD's CIFAR recipe draws them from other classes: pass those).
    2. the student embedding is scored against the teacher bank, the teacher embedding
       against the student bank (banks detached), exp(dot / T) / Z; loss = the two
       `nce_loss`es summed.
    3. if `update`, memory[index] <- normalise(momentum * memory[index] + (1 - momentum)
       * emb), for both banks (after scoring, so a sample is never its own positive).
    K = min(n_negatives, N - 1); defaults: K = 16384, T = 0.07, momentum 0.5 (CRD).
    Memory: 2 N dim floats (51 MB for CIFAR-100 at dim 128).
    """

    def __init__(self, n_data: int, dim: int = 128, n_negatives: int = 16384,
                 temperature: float = 0.07, momentum: float = 0.5, seed: int = 0):
        super().__init__()
        if n_data < 2:
            raise ValueError(f"CRD needs at least 2 samples, got n_data={n_data}")
        self.n_data, self.temperature, self.momentum = n_data, temperature, momentum
        self.n_negatives = min(n_negatives, n_data - 1)
        init = torch.Generator().manual_seed(seed)
        for name in ("memory_s", "memory_t"):
            self.register_buffer(name, F.normalize(torch.randn(n_data, dim, generator=init), dim=1))
        self.register_buffer("log_z_s", torch.tensor(float("nan")))
        self.register_buffer("log_z_t", torch.tensor(float("nan")))

    def forward(self, s_emb: torch.Tensor, t_emb: torch.Tensor, index: torch.Tensor,
                generator: torch.Generator | None = None,
                negatives: torch.Tensor | None = None, update: bool = True) -> torch.Tensor:
        if negatives is None:
            negatives = sample_negatives(index, self.n_data, self.n_negatives, generator)
        rows = torch.cat([index.unsqueeze(1), negatives], dim=1)
        with torch.autocast(device_type=s_emb.device.type, enabled=False):
            s_emb, t_emb = s_emb.float(), t_emb.float()
            loss = (self._side(s_emb, self.memory_t, rows, self.log_z_s)
                    + self._side(t_emb, self.memory_s, rows, self.log_z_t))
        if update:
            with torch.no_grad():
                for bank, emb in ((self.memory_s, s_emb), (self.memory_t, t_emb)):
                    mixed = self.momentum * bank[index] + (1 - self.momentum) * emb.detach()
                    bank.index_copy_(0, index, F.normalize(mixed, dim=1).to(bank.dtype))
        return loss

    def _side(self, emb, bank, rows, log_z):
        log_p = _bank_scores(bank.detach().float(), rows, emb) / self.temperature
        if torch.isnan(log_z):                                       # first batch fixes Z
            with torch.no_grad():
                log_z.copy_(torch.logsumexp(log_p.flatten(), 0) - math.log(log_p.numel())
                            + math.log(self.n_data))
        return nce_loss(log_p - log_z, self.n_data)


# ---------------------------------------------------------------- IFACD (Rios et al. 2022)

class RescalerMLP(nn.Module):
    """IFACD's rescaler: one per view, mapping a network's layer to the common space.

    [B, C, H, W] (global average pool) / [B, N, C] (tokens, mean) / [B, C] -> linear(c_in,
    hidden) -> BatchNorm1d or LayerNorm -> ReLU or GELU -> linear(hidden, dim) ->
    L2-normalised [B, dim]. hidden defaults to dim (as in the authors' code); the talk
    pairs BN with ReLU (CNNs) and LN with GELU (ViTs). Note BN needs B > 1 in training.
    """

    def __init__(self, c_in: int, dim: int = 128, hidden: int | None = None,
                 norm: str = "bn", act: str = "relu"):
        super().__init__()
        hidden = hidden or dim
        norms = {"bn": nn.BatchNorm1d, "ln": nn.LayerNorm}
        acts = {"relu": nn.ReLU, "gelu": nn.GELU}
        if norm not in norms or act not in acts:
            raise ValueError(f"norm must be one of {sorted(norms)} and act one of "
                             f"{sorted(acts)}, got {norm!r}, {act!r}")
        self.mlp = nn.Sequential(nn.Linear(c_in, hidden), norms[norm](hidden), acts[act](),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(_pool(x)), dim=1)


@_float32
def supcon_loss(views: torch.Tensor, labels: torch.Tensor | None = None,
                temperature: float = 0.07) -> torch.Tensor:
    """Supervised-contrastive loss (Khosla et al. 2020, L_out) over V views per image.

    views [B, V, D] (L2-normalised here again; for IFACD view 0 is the student's
    embedding and views 1.. the rescaled teacher layers, ifacd1: V = 2, ifacd2: V = 3);
    labels [B] or None. Every one of the BV embeddings is an anchor; its candidates are
    the other BV - 1; its positives P(i) are the other views of the same image and, with
    labels, every view of the same-class images. loss_i = -mean_{p in P(i)}
    log softmax_{a != i}(z_i.z_a / T)[p]; the mean over the BV anchors is returned
    (SupCon's T / T_base factor is 1 at the authors' T = T_base = 0.07).
    Positives for IFACD (the talk: "representation for a given image across different
    layers should be closer between each other than to any other image in same layer or
    in other layers"; the authors' code calls SupCon without labels): labels=None, so
    the views of one image are the positives and every view of every other image is a
    negative, a SimCLR-style multi-view InfoNCE (= `losses.nt_xent` when V = 2). The
    labels option is SupCon's supervised form, not what the seed reports.
    """
    b, v, d = views.shape
    if v < 2:
        raise ValueError(f"supcon_loss needs at least 2 views per image, got {v}")
    z = F.normalize(views.reshape(b * v, d), dim=1)                 # row i * V + j
    self_pair = torch.eye(b * v, dtype=torch.bool, device=z.device)
    log_prob = F.log_softmax((z @ z.T / temperature).masked_fill(self_pair, float("-inf")), dim=1)
    group = torch.arange(b, device=z.device) if labels is None else labels.to(z.device)
    group = group.repeat_interleave(v)
    positive = (group.unsqueeze(0) == group.unsqueeze(1)) & ~self_pair
    per_anchor = -log_prob.masked_fill(~positive, 0).sum(1) / positive.sum(1)
    return per_anchor.mean()
