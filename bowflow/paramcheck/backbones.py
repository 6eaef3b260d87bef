"""The backbone each run builds, made on PyTorch's meta device, so that the checks can read
its stage names, channels, patch size and tokens without allocating a weight; a size the
builder refuses is a ParamsError naming the run's key."""

from __future__ import annotations

import functools
from typing import Any

from bowflow.networks import BackboneSpec, build_backbone
from bowflow.sections import ParamsError


@functools.cache
def architecture(spec: BackboneSpec):
    """The Backbone a run builds, made on PyTorch's meta device: stage names, channels and
    reductions without allocating or initialising a weight (a WRN-28-10 in 0.1 s instead of
    1.5 s), so check_params can check every run's layer names. Cached; never run it."""
    import torch

    with torch.device("meta"):
        return build_backbone(spec)


def run_architecture(run: Any, where: str):
    """`architecture` of a checked run section's `BackboneSpec`; a size or setting the
    builder refuses (a resnet depth other than 18/34, a wrn depth not 6n + 4) is a
    ParamsError naming `where`'s key."""
    spec = BackboneSpec.of(run)
    try:
        return architecture(spec)
    except ValueError as error:
        first = str(error).split(" ", 1)[0]
        if first.startswith("arch_params."):  # a setting the arch refuses
            raise ParamsError(f"{where}.{error} ({spec.describe()})") from None
        key = next((k for k in ("depth", "width") if k in str(error).split()), "arch")
        raise ParamsError(f"{where}.{key}: {error} ({spec.describe()})") from None
