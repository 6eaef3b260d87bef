"""How a training step runs on the device at hand: bf16 autocast, channels-last, threads.

On a GPU bf16 and channels-last are on (tensor cores want bf16 and NHWC). On a CPU the
best mode depends on the machine, so it is measured once by

    python -m benchmarks.bench_compute --save

which writes the fastest mode to a per-machine cache file (see `cache_path`). Training
only reads that file: it never measures anything itself. Without a cache file the CPU
runs eager fp32 in the default layout with torch's default thread count.

The returned dict is `{"bf16": bool, "channels_last": bool, "threads": int}`; threads 0
means "leave torch's default" (see `bowflow.runtime.configure_threads`).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from pathlib import Path

import torch

from bowflow.io import write_json

DEFAULT_CPU = {"bf16": False, "channels_last": False, "threads": 0}
GPU = {"bf16": True, "channels_last": True, "threads": 0}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    """A short hash of hostname and CPU model: one cache file per machine."""
    raw = f"{socket.gethostname()}|{cpu_model()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def cache_path() -> Path:
    """`$BOWFLOW_CACHE/compute-<key>.json`, `$BOWFLOW_CACHE` defaulting to ~/.cache/bowflow."""
    folder = os.environ.get("BOWFLOW_CACHE") or Path.home() / ".cache" / "bowflow"
    return Path(folder) / f"compute-{machine_key()}.json"


def _valid(choice) -> bool:
    return (isinstance(choice, dict) and isinstance(choice.get("bf16"), bool)
            and isinstance(choice.get("channels_last"), bool)
            and isinstance(choice.get("threads"), int) and choice["threads"] >= 0)


def save_choice(choice: dict, details: dict | None = None) -> Path:
    """Write the CPU compute choice (plus measurement details) to `cache_path()`."""
    if not _valid(choice):
        raise ValueError(f"not a compute choice: {choice}")
    path = cache_path()
    record = {"choice": {k: choice[k] for k in DEFAULT_CPU}, "cpu_model": cpu_model(),
              "hostname": socket.gethostname(), "torch": torch.__version__, **(details or {})}
    write_json(path, record)
    return path


def load_choice() -> dict | None:
    """The cached CPU choice, or None when there is no (readable, well-formed) cache file."""
    try:
        choice = json.loads(cache_path().read_text()).get("choice")
    except (OSError, ValueError, AttributeError):
        return None
    return {k: choice[k] for k in DEFAULT_CPU} if _valid(choice) else None


def select_compute(device: torch.device) -> dict:
    """-> {"bf16", "channels_last", "threads"} for training on `device` (no measuring)."""
    if device.type == "cuda":
        return dict(GPU)
    if device.type == "cpu":
        return load_choice() or dict(DEFAULT_CPU)
    return dict(DEFAULT_CPU)
