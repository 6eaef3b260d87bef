"""Contrastive representation distillation (Tian et al., ICLR 2020): the student's
embedding of an image must pick out the teacher's embedding of the same image among
many others, held in memory banks over the dataset's indices.

Both pooled features pass a linear embedding (128-d, L2-normalised, both trainable);
`ContrastiveMemory` keeps one student and one teacher embedding per training image
(buffers: they are checkpointed and survive resume), draws `negatives` indices per image
from the images of the other classes (the authors' CIFAR recipe; `OtherClassSampler`),
and scores with NCE at temperature 0.07 (momentum 0.5 bank update). gamma = 0.8, the
benchmark's weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bowflow import distributed
from bowflow.checks import param
from bowflow.heads import EmbedHead
from bowflow.losses import float32
from bowflow.roles.base import register_method
from bowflow.roles.distiller import Distiller, DistillParams

# ---------------------------------------------------------------- loss


@float32
def nce_loss(log_scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """CRD's NCE: tell the positive (column 0) from K noise samples (columns 1..K).

    log_scores [B, 1 + K]: log of the model's unnormalised probability of each pair,
    s / T - log Z. With noise probability 1/N, the posterior that a pair is data is
    h = P / (P + K/N); loss = -[sum_i log h(pos_i) + sum_{i,k} log(1 - h(neg_ik))] / B.
    Computed in log space (softplus), so exp(1 / 0.07) never overflows.
    """
    b, k = log_scores.shape[0], log_scores.shape[1] - 1
    log_noise = math.log(k / n_data)  # log(K * P_noise)
    positive = -F.softplus(log_noise - log_scores[:, 0])  # log h
    negative = -F.softplus(log_scores[:, 1:] - log_noise)  # log (1 - h)
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


def sample_negatives(
    index: torch.Tensor, n_data: int, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """K indices per row, uniformly (with replacement) from the N - 1 indices other than
    index[b]: index [B] -> [B, K], on index's device. Drawn on the generator's device
    (CPU by default); a seeded generator gives the same negatives every time."""
    device = generator.device if generator is not None else torch.device("cpu")
    draw = torch.randint(0, n_data - 1, (len(index), k), generator=generator, device=device)
    draw = draw.to(index.device)
    return draw + (draw >= index.unsqueeze(1)).long()  # skip the own index


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
    Under torchrun each process scores its own rows (the loss is per sample), while Z
    (from the first batch's scores) and the bank update use the whole global batch's,
    gathered (`bowflow.distributed.gather_no_grad`), so every process holds the same
    banks and constants as one process would.
    K = min(n_negatives, N - 1); defaults: K = 16384, T = 0.07, momentum 0.5 (CRD).
    Memory: 2 N dim floats (51 MB for CIFAR-100 at dim 128).
    """

    def __init__(
        self,
        n_data: int,
        dim: int = 128,
        n_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        seed: int = 0,
    ):
        super().__init__()
        if n_data < 2:
            raise ValueError(f"CRD needs at least 2 samples, got n_data={n_data}")
        self.n_data, self.temperature, self.momentum = n_data, temperature, momentum
        self.n_negatives = min(n_negatives, n_data - 1)
        init = torch.Generator().manual_seed(seed)
        self.memory_s: torch.Tensor
        self.memory_t: torch.Tensor
        for name in ("memory_s", "memory_t"):
            self.register_buffer(name, F.normalize(torch.randn(n_data, dim, generator=init), dim=1))
        self.register_buffer("log_z_s", torch.tensor(float("nan")))
        self.register_buffer("log_z_t", torch.tensor(float("nan")))

    def forward(
        self,
        s_emb: torch.Tensor,
        t_emb: torch.Tensor,
        index: torch.Tensor,
        generator: torch.Generator | None = None,
        negatives: torch.Tensor | None = None,
        update: bool = True,
    ) -> torch.Tensor:
        if negatives is None:
            negatives = sample_negatives(index, self.n_data, self.n_negatives, generator)
        rows = torch.cat([index.unsqueeze(1), negatives], dim=1)
        with torch.autocast(device_type=s_emb.device.type, enabled=False):
            s_emb, t_emb = s_emb.float(), t_emb.float()
            loss = self._side(s_emb, self.memory_t, rows, self.log_z_s) + self._side(
                t_emb, self.memory_s, rows, self.log_z_t
            )
        if update:  # every process: the global batch's rows
            with torch.no_grad():
                every = distributed.gather_no_grad(index)  # [B]
                for bank, emb in ((self.memory_s, s_emb), (self.memory_t, t_emb)):
                    emb = distributed.gather_no_grad(emb.detach())  # [B, dim]
                    mixed = self.momentum * bank[every] + (1 - self.momentum) * emb
                    bank.index_copy_(0, every, F.normalize(mixed, dim=1).to(bank.dtype))
        return loss

    def _side(self, emb, bank, rows, log_z):
        log_p = _bank_scores(bank.detach().float(), rows, emb) / self.temperature
        if torch.isnan(log_z):  # the first (global) batch fixes Z, on every process
            with torch.no_grad():
                every = distributed.gather_no_grad(log_p.detach())  # [B, 1 + K]
                log_z.copy_(torch.logsumexp(every.flatten(), 0) - math.log(every.numel()) + math.log(self.n_data))
        return nce_loss(log_p - log_z, self.n_data)


@dataclass
class CRDParams(DistillParams):
    method: str = "crd"
    gamma: float = param(0.8, "CRD weight (the benchmark's 0.8)")
    embed_dim: int = param(128, "embedding size (CRD's 128)", above=0)
    negatives: int = param(16384, "noise samples per image (CRD's 16384; capped at the training images - 1)", above=0)
    nce_temperature: float = param(0.07, "NCE temperature (CRD's 0.07)", above=0)
    memory_momentum: float = param(0.5, "bank update momentum (CRD's 0.5)", low=0, high=1)


class OtherClassSampler:
    """Draws CRD's negatives: for each image, K dataset indices uniformly (with replacement)
    among the images whose label differs from its own.

    labels [N] -> sampler; sampler(index [B], k, generator) -> [B, K] on index's device.
    The dataset's indices are sorted by class once (`order`); an image of class c draws a
    position u in [0, N - n_c) of the sorted list with class c's block cut out.
    """

    def __init__(self, labels: torch.Tensor):
        self.labels = labels.long()  # [N], on the run's device
        self.order = torch.argsort(self.labels, stable=True)  # [N]
        self.count = torch.bincount(self.labels)  # [C]
        self.start = torch.cumsum(self.count, 0) - self.count  # [C] block starts
        if (self.count == len(self.labels)).any():
            raise ValueError("CRD draws its negatives from other classes, but every training image has the same label")

    def __call__(self, index: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(len(index), k, generator=generator, device=device).to(self.labels.device)
        label = self.labels[index.to(self.labels.device)]  # [B]
        pool = (len(self.labels) - self.count[label]).unsqueeze(1)  # [B, 1] other-class images
        u = (u * pool).long().clamp_max_(pool - 1)  # [B, K]
        start, count = self.start[label].unsqueeze(1), self.count[label].unsqueeze(1)
        return self.order[u + (u >= start).long() * count].to(index.device)  # skip the own block


@register_method("crd")
class CRD(Distiller):
    label = "CRD"
    Params = CRDParams
    params: CRDParams  # an instance of Params (typing only)
    # The NCE loss is per sample (each image against its own sampled negatives, drawn in
    # `views` for the global batch); what spans the batch is the memory: Z and the bank
    # update come from the gathered global batch (`ContrastiveMemory`).
    batch_spanning = ("memory bank",)
    # tests/test_method_learning.py: the distillers' recipe with heads for the 32-d student;
    # student's test top-1 85.9, untrained 25.0 (measured, seed 0).
    learning_recipe = {**Distiller.learning_recipe, "embed_dim": 32, "negatives": 256}

    def build_extras(self, student_channels, teacher_channels, inputs):
        p = self.params
        self.embed_student = EmbedHead(student_channels[-1], p.embed_dim)
        self.embed_teacher = EmbedHead(teacher_channels[-1], p.embed_dim)
        self.memory = ContrastiveMemory(
            len(inputs.labels), p.embed_dim, p.negatives, p.nce_temperature, p.memory_momentum
        )
        self.sample_negatives = OtherClassSampler(inputs.labels)

    def views(self, images, index, generator):
        """The crops, then each image's K other-class negatives ([B, K] dataset indices),
        drawn after them from the same generator."""
        views = super().views(images, index, generator)
        views["negatives"] = self.sample_negatives(index, self.memory.n_negatives, generator)
        return views

    def method_loss(self, student, teacher, labels, index, views):
        return self.memory(
            self.embed_student(student.pooled), self.embed_teacher(teacher.pooled), index, negatives=views["negatives"]
        )
