"""The backbone each run builds, made on PyTorch's meta device, so that the checks can read
its stage names, channels, patch size and tokens without allocating a weight; a size the
builder refuses is a ParamsError naming the run's key."""
from __future__ import annotations

import functools
from typing import Any

from bowflow.networks import build_backbone
from bowflow.sections import ParamsError


@functools.cache
def architecture(arch: str, width: int, depth: int):
    """The Backbone a run builds, made on PyTorch's meta device: stage names, channels and
    reductions without allocating or initialising a weight (a WRN-28-10 in 0.1 s instead of
    1.5 s), so check_params can check every run's layer names. Cached; never run it."""
    import torch

    with torch.device("meta"):
        return build_backbone(arch, width, depth)


def run_architecture(run: Any, where: str):
    """`architecture` of a checked run section; a size the builder refuses (a resnet depth
    other than 18/34, a wrn depth not 6n + 4) is a ParamsError naming `where`'s key."""
    try:
        return architecture(run.arch, run.width, run.depth)
    except ValueError as error:
        key = next((k for k in ("depth", "width") if k in str(error).split()), "arch")
        raise ParamsError(f"{where}.{key}: {error} (arch '{run.arch}', width {run.width}, "
                          f"depth {run.depth})") from None
