"""The architecture registry: every `arch` name a run can give, and `build_backbone`.

Every backbone maps images `[B, 3, H, W]` to a list of feature maps, one per stage
(`stage1`, `stage2`, ... ; the contract is `bowflow.backbone.Backbone`). This module names
the architectures and builds them; it registers, in one place at the bottom, the builders of
the modules that define them, so importing it is enough for every name to resolve:
- bowflow/convnets.py: `convnet`, `resnet`, `wrn` (sized by `width` and `depth`) and the
  CIFAR distillation benchmark's fixed-size `resnet20`, `resnet32`, `resnet56`,
  `resnet110`, `resnet8x4`, `resnet32x4`, `wrn_40_2`, `wrn_16_2`, `wrn_40_1`, `vgg8`, `vgg13`;
- bowflow/vit.py: `vit`, `vit_p2` (sized) and `vit_tiny`, `vit_small`, `vit_tiny_p2`;
- bowflow/timm_backbones.py: the family `timm/<model>` (`timm/resnet18`,
  `timm/convnext_atto`, `timm/vit_tiny_patch16_224`), any timm model, fixed in size by its
  name (width and depth 0), built without downloading weights.

A fixed-size architecture takes `width` and `depth` 0 (the architecture's own) or equal to
its own values (`OWN_SIZES`); anything else is a ValueError (`check_size`).

Imports go one way: the architecture modules import `bowflow.backbone` only, never this
registry (tests/test_import_rules.py fails on any import cycle in bowflow/). To add an
architecture, write its builder in an architecture module and register it at the bottom of
this file (`register`, `register_named`, `register_family`).

`Backbone` and `count_parameters` are re-exported from bowflow/backbone.py for callers that
import them from here.
"""
from __future__ import annotations

from collections.abc import Callable

from bowflow import convnets, timm_backbones, vit
from bowflow.backbone import Backbone, count_parameters

__all__ = ["ARCHITECTURES", "FAMILIES", "OWN_SIZES", "Backbone", "build_backbone", "check_arch",
           "check_size", "count_parameters", "family_of", "register", "register_family",
           "register_named"]

ARCHITECTURES: dict[str, Callable[..., Backbone]] = {}   # name -> builder(width, depth)


def register(name: str):
    """Decorator: register a builder `(width, depth) -> Backbone` as the arch `name`."""
    def wrap(builder):
        ARCHITECTURES[name] = builder
        return builder
    return wrap


# family -> builder(model name, width, depth): archs spelt '<family>/<model>' ('timm/resnet18')
FAMILIES: dict[str, Callable[..., Backbone]] = {}


def register_family(family: str):
    """Register a builder `(model, width, depth) -> Backbone` for archs '<family>/<model>'."""
    def wrap(builder):
        FAMILIES[family] = builder
        return builder
    return wrap


def family_of(arch: str) -> str:
    """'timm/resnet18' -> 'timm'; '' for an arch of ARCHITECTURES ('resnet')."""
    family, slash, model = arch.partition("/")
    return family if slash and model and family in FAMILIES else ""


def check_arch(arch: str) -> None:
    """ValueError naming `arch` unless it is registered or spelt '<family>/<model>' (the
    family's builder checks the model name when it builds)."""
    if arch not in ARCHITECTURES and not family_of(arch):
        families = ", ".join(f"'{f}/<model>'" for f in sorted(FAMILIES))
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)} or {families}, got '{arch}'")


def build_backbone(arch: str, width: int, depth: int = 0) -> Backbone:
    """The backbone `arch` of `width` and `depth` (0: a fixed-size arch's own), freshly
    initialised from torch's RNG; it maps images [B, 3, H, W] to stage maps
    [B, C_i, H / r_i, W / r_i] and a pooled feature [B, out_channels]. ValueError naming
    the known archs for an unknown one, or for a size the arch does not take."""
    family = family_of(arch)
    if family:
        check_size(arch, width, depth)
        return FAMILIES[family](arch.partition("/")[2], width=width, depth=depth)
    if arch not in ARCHITECTURES:
        families = ", ".join(f"'{f}/<model>'" for f in sorted(FAMILIES))
        raise ValueError(f"unknown arch '{arch}': expected one of {sorted(ARCHITECTURES)} or {families}")
    return ARCHITECTURES[arch](width=width, depth=depth)


OWN_SIZES: dict[str, tuple[int, int]] = {}   # named architecture -> its own (width, depth)


def register_named(name: str, width: int, depth: int, build: Callable[[], Backbone]) -> None:
    """Register a fixed-size architecture: `build()` makes it; params give it `width` and
    `depth` 0 (the architecture's own) or its own values, checked by `check_size`."""
    OWN_SIZES[name] = (width, depth)

    def builder(width: int = 0, depth: int = 0) -> Backbone:
        check_size(name, width, depth)
        return build()
    ARCHITECTURES[name] = builder


def check_size(arch: str, width: int, depth: int) -> None:
    """A named architecture takes width/depth 0 or its own values, a family's ('timm/...')
    0: ValueError otherwise. Architectures sized by width/depth (convnet, resnet, wrn) check
    them when built."""
    if family_of(arch):
        for key, value in (("width", width), ("depth", depth)):
            if value:
                raise ValueError(f"{key} must be 0 for arch '{arch}' (its name fixes its size), got {value}")
        return
    if arch not in OWN_SIZES:
        return
    own = dict(zip(("width", "depth"), OWN_SIZES[arch]))
    for key, value in (("width", width), ("depth", depth)):
        if value not in (0, own[key]):
            raise ValueError(f"{key} must be 0 (the architecture's own) or {own[key]} for arch "
                             f"'{arch}' (its own width {own['width']}, depth {own['depth']}), "
                             f"got {value}")


# Every architecture, registered here and only here (the order is the listing order of
# ARCHITECTURES; builders are untouched, so seeded inits are what each module makes).
for _sized, _named in ((convnets.SIZED_CONVNETS, convnets.NAMED_CONVNETS), (vit.SIZED_VITS, vit.NAMED_VITS)):
    for _name, _builder in _sized.items():
        register(_name)(_builder)
    for _name, (_width, _depth, _build) in _named.items():
        register_named(_name, _width, _depth, _build)
register_family("timm")(timm_backbones.timm_backbone)
del _sized, _named, _name, _builder, _width, _depth, _build
