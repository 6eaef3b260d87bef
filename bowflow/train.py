"""The one training loop every method uses.

Data: the training images live in memory as one uint8 tensor [N, 3, H, W] on the training
device; each epoch draws a permutation from a generator seeded by (seed, epoch) and feeds
index slices to the method: `method.views` draws the batch's views on the device,
`method.step` computes the loss. Because every epoch's randomness is a function of
(seed, epoch), resuming from the checkpoint of epoch e continues exactly as an
uninterrupted run would.

Processes: under torchrun (bowflow.distributed) every process draws the same batch and
views, keeps its rows and runs `step` inside DistributedDataParallel; BatchNorm is synced,
rank 0 writes the checkpoint. N processes at global batch B follow the one-process run at B.

Optimisation: the method's parameter groups (`Method.optimizer_groups`) under the
optimizer `params.optimizer` names (SGD Nesterov by default, LARS, AdamW), linear warm-up
then cosine decay to 0 stepped per iteration, optional gradient clipping (global, or per
parameter tensor where the method's params say `clip_grad_per_parameter`), and the
method's hooks before and after each optimizer step (bowflow.roles.base).

Failure: a non-finite loss, or an epoch whose `embedding_std` falls below
`params.collapse_std`, stops training with a `TrainingFailed` naming the run, the epoch
and the statistic.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bowflow import distributed
from bowflow.io import load_torch, save_torch
from bowflow.optim import build_optimizer, learning_rate, set_learning_rate
from bowflow.roles.base import Method, TrainParams
from bowflow.runtime import log


class TrainingFailed(RuntimeError):
    """A run diverged (non-finite loss) or collapsed; the message names run, epoch, statistic."""


def fingerprint(*parts) -> str:
    """A short hash of JSON-able parts: a checkpoint is only resumed by the same run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def autocast_context(device: torch.device, bf16: bool):
    """The autocast region of a training step: bf16 autocast when `bf16`, else nothing.

    It encloses `method.views` and `method.step` (views, forward, loss); backward, gradient
    clipping, the optimizer step and the method's hooks (EMA teachers, queues, centres)
    run after it, outside, on float32 parameters. Inside it convs and linears run in bf16;
    losses and softmax targets are float32 by their `float32` guards (bowflow.losses,
    bowflow.bow), BatchNorm keeps float32 statistics. docs/precision.md lists every op;
    tests/test_precision.py checks it.
    """
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train(
    method: Method,
    images: torch.Tensor,
    params: TrainParams,
    seed: int,
    checkpoint_path: Path,
    run_id: str,
    bf16: bool = False,
    channels_last: bool = False,
    show_progress: bool = True,
    run_name: str = "",
) -> list[dict]:
    """Train `method` on uint8 `images` [N, 3, H, W] (already on the training device).

    Returns the per-epoch history (means of the step statistics, lr, images/s, seconds).
    Saves a checkpoint after every epoch to `checkpoint_path` and resumes from it when its
    `run_id` matches; the caller deletes it once the final model is written.
    """
    device = images.device
    world = distributed.world()
    n = len(images)
    if params.batch_size > n:  # check_params/prepare refuse such params before training
        raise ValueError(f"batch_size {params.batch_size} is larger than the {n} training images")
    batch_size = params.batch_size
    rows = world.rows(batch_size)  # this process's rows of every global batch
    steps_per_epoch = n // batch_size
    total_steps = steps_per_epoch * params.epochs
    warmup_steps = int(params.warmup_epochs * steps_per_epoch)
    run_name = run_name or method.name
    if world.size > 1 and params.sync_bn:
        distributed.sync_batch_norm(method, device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    method.configure_schedule(steps_per_epoch, total_steps)
    optimizer = build_optimizer(params.optimizer, method.optimizer_groups(), params.lr, params.momentum)
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    history: list[dict] = []
    first_epoch = 0
    if checkpoint_path.exists():
        state = load_torch(checkpoint_path)
        if state.get("run_id") == run_id:
            method.load_state_dict(state["method"])
            optimizer.load_state_dict(state["optimizer"])
            history, first_epoch = state["history"], state["epoch"]
            log(f"resumed from checkpoint {checkpoint_path} at epoch {first_epoch}/{params.epochs}")
        else:
            log(f"ignoring checkpoint {checkpoint_path}: it belongs to another configuration")
    distributed.barrier()  # every process has read the checkpoint before rank 0 rewrites it
    model: torch.nn.Module = method
    if world.size > 1:  # gradients averaged over processes after each backward
        model = torch.nn.parallel.DistributedDataParallel(method, forward_sync_buffers=False)

    for epoch in range(first_epoch, params.epochs):
        method.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        generator = torch.Generator(device=device).manual_seed(seed * 100003 + epoch + 7919)
        sums: dict[str, float] = {}
        start = time.perf_counter()
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{method.name} epoch {epoch + 1}/{params.epochs}",
            disable=not (show_progress and world.is_main),
            leave=False,
            mininterval=2.0,
        )
        for i in bar:
            step = epoch * steps_per_epoch + i
            lr = learning_rate(
                step, total_steps, warmup_steps, params.lr, params.lr_schedule, tuple(params.lr_decay_at)
            )
            set_learning_rate(optimizer, lr, params.lr)
            index = order[i * batch_size : (i + 1) * batch_size].to(device)
            with autocast_context(device, bf16):
                views = method.views(images[index], index, generator)  # the global batch's
                if world.size > 1:
                    views = distributed.keep_rows(views, batch_size)
                loss, stats = model(views, index[rows])
            if not torch.isfinite(distributed.mean_over_processes(loss.detach())):
                raise TrainingFailed(
                    f"run '{run_name}' ({method.name}) diverged at epoch {epoch + 1}, "
                    f"step {i}: loss = {loss.item()}; lower lr (now {params.lr})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            method.before_optimizer_step(step)
            method.clip_gradients(trained)
            optimizer.step()
            method.after_step(step, total_steps)
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        seconds = time.perf_counter() - start
        keys = sorted(sums)  # the epoch's statistics, averaged over processes
        totals = distributed.mean_over_processes(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
        means = method.summarize({k: float(v) / steps_per_epoch for k, v in zip(keys, totals)})
        record = {
            "epoch": epoch + 1,
            **{k: round(v, 5) for k, v in means.items()},
            "lr": round(lr, 6),
            "images_per_second": round(steps_per_epoch * batch_size / seconds, 1),
            "seconds": round(seconds, 2),
        }
        history.append(record)
        if world.is_main:
            log(" ".join(f"{k}={v}" for k, v in record.items()))
        spread = means.get("embedding_std")
        if spread is not None and spread < params.collapse_std:
            raise TrainingFailed(
                f"run '{run_name}' ({method.name}) collapsed at epoch {epoch + 1}: "
                f"embedding_std = {spread:.5f} < collapse_std = {params.collapse_std} "
                f"(per-dimension std of its normalised embeddings x sqrt(D))"
            )
        if world.is_main:
            save_torch(
                {
                    "run_id": run_id,
                    "epoch": epoch + 1,
                    "method": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "history": history,
                },
                checkpoint_path,
            )
    if channels_last:
        method.to(memory_format=torch.contiguous_format)
    return history
