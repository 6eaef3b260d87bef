"""How a training step runs on the device at hand: bf16 autocast, channels-last.

On a GPU both are on (tensor cores want bf16 and NHWC). On a CPU the best mode depends on
the machine, so it is measured (see benchmarks/bench_compute.py) and the choice cached per
machine; until a measurement exists the CPU runs eager fp32 in the default layout.
"""
from __future__ import annotations

import torch


def select_compute(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"bf16": True, "channels_last": True}
    return {"bf16": False, "channels_last": False}
