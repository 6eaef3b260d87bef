"""Heads and teacher networks shared by the self-supervised methods.

- `mlp`: the projector / predictor MLPs of BYOL, SimSiam, SimCLR, MoCo v2, SwAV, Barlow
  Twins (Linear -> BN -> ReLU blocks, an optional BN on the output).
- `DINOHead`: DINO's projection head, an MLP to a bottleneck, L2-normalised, then a
  weight-normalised linear layer to D prototypes.
- `ema_update` and `cosine_momentum`: the exponential moving average teachers of BYOL,
  DINO, MoCo and OBoW, with the momentum raised from its base value to 1 on a cosine over
  the optimizer steps (BYOL's schedule).
"""

from __future__ import annotations

import copy
import math
from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

ModuleT = TypeVar("ModuleT", bound=nn.Module)

# ---------------------------------------------------------------- embedding heads of the distillers (CC, CRD)


def global_pool(x: torch.Tensor) -> torch.Tensor:
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
        z = self.linear(global_pool(x))
        return F.normalize(z, dim=1) if self.normalize else z


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    layers: int = 2,
    last_bn: bool = False,
    last_bn_affine: bool = True,
    bn: bool = True,
) -> nn.Sequential:
    """[B, in_dim] -> [B, out_dim]: (layers - 1) x (Linear, BN, ReLU), then Linear
    (+ BN when `last_bn`: SimSiam's projector and Barlow Twins' output have one).
    `bn=False` drops the hidden BNs and gives the hidden Linears a bias: MoCo v2's head,
    Linear(C, C) -> ReLU -> Linear(C, 128)."""
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        if bn:
            blocks += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        else:
            blocks += [nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    blocks.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        blocks.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
    return nn.Sequential(*blocks)


class DINOHead(nn.Module):
    """DINO's head: [B, in_dim] -> MLP -> [B, bottleneck], L2-normalised ->
    weight-normalised Linear(bottleneck, out_dim) without bias -> logits [B, out_dim].
    The last layer's norm (its `weight_g`) is fixed at 1, as in the authors' code. The MLP
    uses GELU (their ViT head) or, with `bn`, Linear-BN-ReLU blocks (their ResNet head,
    `use_bn_in_head`)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 512,
        bottleneck_dim: int = 128,
        layers: int = 3,
        bn: bool = False,
    ):
        super().__init__()
        if bn:
            self.mlp = mlp(in_dim, hidden_dim, bottleneck_dim, layers=layers)
        else:
            blocks: list[nn.Module] = []
            dim = in_dim
            for _ in range(layers - 1):
                blocks += [nn.Linear(dim, hidden_dim), nn.GELU()]
                dim = hidden_dim
            blocks.append(nn.Linear(dim, bottleneck_dim))
            self.mlp = nn.Sequential(*blocks)
        self.last_direction = nn.Parameter(torch.randn(out_dim, bottleneck_dim) / math.sqrt(bottleneck_dim))

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, in_dim] -> (bottleneck [B, bottleneck_dim] before the norm, logits [B, out_dim])."""
        bottleneck = self.mlp(x)
        return bottleneck, F.linear(F.normalize(bottleneck, dim=-1), F.normalize(self.last_direction, dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)[1]


def frozen_copy(module: ModuleT) -> ModuleT:
    """A copy of `module` for an EMA teacher: same weights, no gradients (and its type)."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float, copy_buffers: bool = True) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter.
    Buffers (BN running statistics) are copied, not averaged (OBoW, BYOL), unless
    `copy_buffers` is False: a teacher that runs in train mode on its own inputs keeps
    statistics of its own activations (DINO, MoCo's key encoder)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
    if copy_buffers:
        for t_buffer, s_buffer in zip(teacher.buffers(), student.buffers()):
            t_buffer.copy_(s_buffer)


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """base at step 0 -> 1 at the last step, on a cosine: 1 - (1 - base)(cos(pi t / T) + 1) / 2."""
    progress = min(step / max(1, total_steps), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
