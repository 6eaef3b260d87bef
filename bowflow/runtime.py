"""Process-level concerns shared by the stages: seeds, device, timing and peak memory."""

from __future__ import annotations

import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; data order and augmentations use their own
    generators derived from the same seed (see bowflow.train)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cpu' / 'cuda' / 'cuda:1' as given.

    A device this machine cannot provide stops the stage with a one-line message naming
    the `device` parameter (SystemExit, so no traceback), before any work.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise SystemExit(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(
                f"device: '{name}' requested but no CUDA GPU is available on this machine "
                f"(torch.cuda.is_available() is False): expected 'auto' (a GPU only "
                f"when present) or 'cpu'"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise SystemExit(
                f"device: '{name}' requested but this machine has {count} CUDA "
                f"device(s): expected 'cuda', 'auto' or one of cuda:0..cuda:{count - 1}"
            )
    elif device.type != "cpu":
        raise SystemExit(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got {name!r}")
    return device


@dataclass
class StageClock:
    """Wall time and peak memory of a stage, for its metrics file."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    start: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def summary(self) -> dict:
        # ru_maxrss is in kilobytes on Linux (bytes on macOS).
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
        out = {"wall_seconds": round(time.perf_counter() - self.start, 3), "peak_rss_mb": round(rss_mb, 1)}
        if self.device.type == "cuda":
            out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return out


def log(message: str) -> None:
    print(f"[bowflow {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def configure_threads(threads: int) -> None:
    """Set torch's intra-op threads (0 = leave torch's default: one per physical core)."""
    if threads > 0:
        torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
