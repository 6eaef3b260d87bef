"""One training stage as N processes under `torchrun` (PyTorch DistributedDataParallel).

    torchrun --standalone --nproc-per-node 2 -m stages.pretrain ...     # (bin/launch 2 ...)

torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK; `start` joins them
into one process group (NCCL on GPUs, gloo on CPUs). The rule that keeps N processes on
the single-process run's path:

- every process draws the same global batch B (same seed, same order) and the same views
  of it (`Method.views`, the same generator), then keeps its own rows, b = B / N of them
  (`World.rows`);
- `Method.step` runs on those rows; where a loss spans the batch, `gather` concatenates
  every process's rows in rank order (so the global batch reads as in one process), with
  gradients flowing back to the process that owns them;
- DDP averages the gradients; BatchNorm statistics are over the global batch
  (`sync_batch_norm`); queues and memories are updated from gathered rows, so every process
  holds the same ones;
- only rank 0 writes files (checkpoints, model, metrics), atomically; every rank resumes
  from the same checkpoint.

A single process (no torchrun, or --nproc-per-node 1) never initialises a process group:
`gather` and the reductions are the identity and nothing changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as collectives
import torch.nn as nn


@dataclass(frozen=True)
class World:
    """This process's place among the N processes of one training stage."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    def rows(self, batch: int) -> slice:
        """This process's rows of a global batch of `batch` (divisible by `size`)."""
        if batch % self.size:
            raise ValueError(
                f"a global batch of {batch} does not split over {self.size} processes: "
                f"batch_size must be a multiple of the process count"
            )
        per = batch // self.size
        return slice(self.rank * per, (self.rank + 1) * per)


_WORLD = World()


def world() -> World:
    """The current process's World (rank 0 of 1 outside torchrun)."""
    return _WORLD


def launched() -> bool:
    """True when torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: torch.device) -> tuple[World, torch.device]:
    """Join torchrun's process group when there is one -> (world, this process's device).

    On CUDA each process takes GPU LOCAL_RANK (NCCL); on the CPU all share the cores (gloo).
    """
    global _WORLD
    if not launched():
        return _WORLD, device
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    _WORLD = World(
        dist.get_rank(),
        dist.get_world_size(),
        local_rank,
        int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])),
    )
    return _WORLD, device


def stop() -> None:
    """Leave the process group (end of a stage)."""
    global _WORLD
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _WORLD = World()


def barrier() -> None:
    if _WORLD.size > 1:
        dist.barrier()


def gather(x: torch.Tensor) -> torch.Tensor:
    """[b, ...] on each process -> [N * b, ...], rank 0's rows first (the global batch's
    order). Differentiable: each process's rows get the gradient of every process's loss."""
    if _WORLD.size == 1:
        return x
    return _gather_with_grad(x)


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """all_gather along dim 0 whose backward sums every process's gradient into the owner's
    rows (PyTorch's functional collectives; torch.distributed.nn.functional is deprecated)."""
    gathered = collectives.all_gather_single_autograd(x.contiguous(), 0, cast(dist.ProcessGroup, dist.group.WORLD))
    return collectives.wait_tensor(gathered)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """`gather` for tensors that need no gradient (keys entering a queue, indices)."""
    if _WORLD.size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_WORLD.size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def sum_over_processes(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over processes (differentiable), added in rank order on every process so
    that all hold the same bits; the identity in one process."""
    if _WORLD.size == 1:
        return x
    return _gather_with_grad(x.unsqueeze(0)).sum(0)


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """Mean over processes of a float tensor (no gradient): epoch statistics, the loss check."""
    if _WORLD.size == 1:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / _WORLD.size


def broadcast_object(value):
    """Rank 0's `value` on every process."""
    if _WORLD.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are over every process's rows, on any device.

    torch.nn.SyncBatchNorm does this on GPUs only (it refuses CPU tensors), and the
    two-process CPU contract test needs it too. In training with N > 1 processes each
    process takes its rows' per-channel count, mean and sum of squared deviations (two
    passes, so a channel whose mean dwarfs its spread keeps its precision), and the
    processes' moments are combined exactly (Chan et al.'s parallel variance, as
    SyncBatchNorm combines them), differentiably. The running variance is unbiased, as
    torch's. Same parameters and buffers as BatchNorm1d/2d, so state_dict keys do not
    change. In eval mode, or in one process, it is plain BatchNorm.
    """

    def _check_input_dim(self, x):
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected a 2D to 5D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _WORLD.size > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 -> float32; float64 kept
        count = x.numel() / c  # rows x positions per channel
        local_mean = xf.mean(dims)  # [C]
        local_m2 = ((xf - local_mean.view(shape)) ** 2).sum(dims)  # [C]
        counts = torch.full((1, c), count, dtype=xf.dtype, device=x.device)
        moments = _gather_with_grad(torch.stack([local_mean, local_m2]).unsqueeze(0))  # [N, 2, C]
        counts = gather_no_grad(counts)  # [N, C]
        n = counts.sum(0)  # [C]
        mean = (counts * moments[:, 0]).sum(0) / n
        m2 = (moments[:, 1] + counts * (moments[:, 0] - mean) ** 2).sum(0)
        var = m2 / n  # biased, as BN normalises with
        if self.track_running_stats:
            assert (
                self.num_batches_tracked is not None and self.running_mean is not None and self.running_var is not None
            )  # registered with track_running_stats
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1))
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `module` normalised over the global batch: torch's SyncBatchNorm on
    GPUs, `GlobalBatchNorm` on the CPU. In place where possible; returns the module."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for _name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(child, GlobalBatchNorm):
            # same parameters and buffers, new forward (mypy rejects any __class__ swap)
            child.__class__ = GlobalBatchNorm  # type: ignore[assignment]
        else:
            sync_batch_norm(child, device)
    return module


def keep_rows(views: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
    """This process's rows of every view tensor ([B, ...] -> [b, ...]); an error naming the
    view whose first dimension is not the batch (a `Method.views` contract breach)."""
    rows = _WORLD.rows(batch)
    out = {}
    for key, value in views.items():
        if not torch.is_tensor(value) or value.dim() == 0 or value.shape[0] != batch:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(
                f"views['{key}'] has shape {shape}: every view must have one row per "
                f"sample of the batch ({batch}) so that processes can split it"
            )
        out[key] = value[rows]
    return out


__all__ = [
    "World",
    "world",
    "launched",
    "start",
    "stop",
    "barrier",
    "gather",
    "gather_no_grad",
    "sum_over_processes",
    "mean_over_processes",
    "broadcast_object",
    "GlobalBatchNorm",
    "sync_batch_norm",
    "keep_rows",
]
