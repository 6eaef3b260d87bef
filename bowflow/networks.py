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

Each architecture (and each family) is registered with the dataclass of its own settings
beyond width and depth (`ARCH_PARAMS`; fields made with `bowflow.checks.param`, e.g.
`vit.ViTParams.drop_path`; `NoArchParams`, empty, for those without). A run gives them as
its `arch_params` mapping, checked by `check_arch_params` (an unknown key names the ones
the arch takes; a value outside its bounds is the field's `param()` message), and the
builder gets them as keyword arguments. Which backbone a run builds is one typed object,
`BackboneSpec` (arch, width, depth, arch_params): `build_backbone` builds it, model.pt
records it (`record`, `from_record`), check_params builds it on the meta device.

Imports go one way: the architecture modules import `bowflow.backbone` (and
`bowflow.checks` for `param`) only, never this registry (tests/test_import_rules.py fails on
any import cycle in bowflow/). To add an architecture, write its builder (and, if it takes
settings, their dataclass) in an architecture module and register it at the bottom of this
file (`register`, `register_named`, `register_family`, each with `params=`).

`Backbone` and `count_parameters` are re-exported from bowflow/backbone.py for callers that
import them from here.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bowflow import convnets, timm_backbones, vit
from bowflow.backbone import Backbone, NoArchParams, count_parameters
from bowflow.checks import check_value, constraints

__all__ = [
    "ARCHITECTURES",
    "ARCH_PARAMS",
    "FAMILIES",
    "OWN_SIZES",
    "Backbone",
    "BackboneSpec",
    "NoArchParams",
    "arch_params_class",
    "build_backbone",
    "check_arch",
    "check_arch_params",
    "check_size",
    "count_parameters",
    "family_of",
    "register",
    "register_family",
    "register_named",
]

ARCHITECTURES: dict[str, Callable[..., Backbone]] = {}  # name -> builder(width, depth, **settings)
# arch name or family -> the dataclass of its declared settings (a run's `arch_params`)
ARCH_PARAMS: dict[str, type] = {}


def register(name: str, params: type = NoArchParams):
    """Decorator: register a builder `(width, depth, **settings) -> Backbone` as the arch
    `name`, whose settings (`arch_params`) are the fields of dataclass `params`."""

    def wrap(builder):
        ARCHITECTURES[name] = builder
        ARCH_PARAMS[name] = params
        return builder

    return wrap


# family -> builder(model name, width, depth, **settings): archs spelt '<family>/<model>'
FAMILIES: dict[str, Callable[..., Backbone]] = {}


def register_family(family: str, params: type = NoArchParams):
    """Register a builder `(model, width, depth, **settings) -> Backbone` for archs
    '<family>/<model>', whose settings are the fields of dataclass `params`."""

    def wrap(builder):
        FAMILIES[family] = builder
        ARCH_PARAMS[family] = params
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


def arch_params_class(arch: str) -> type:
    """The dataclass of `arch`'s declared settings (its family's for '<family>/<model>');
    ValueError for an unknown arch (`check_arch`)."""
    check_arch(arch)
    return ARCH_PARAMS[family_of(arch) or arch]


def check_arch_params(arch: str, values: Any) -> Any:
    """A run's `arch_params` mapping checked against `arch`'s declared settings -> an instance
    of its dataclass. ValueError starting with the key at fault: 'arch_params.drop_pth:
    unknown, 'vit_p2' takes: drop_path', 'arch_params.drop_path: expected float, got 'x'',
    'arch_params.drop_path: drop_path must be in [0, 1), got 1.5' (the field's `param()`
    bounds)."""
    cls = arch_params_class(arch)
    if not isinstance(values, Mapping):
        raise ValueError(f"arch_params: expected a mapping of '{arch}''s settings, got {values!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            takes = f"takes: {', '.join(names)}" if names else "takes none (arch_params must be {})"
            raise ValueError(f"arch_params.{key}: unknown, '{arch}' {takes}")
    hints = typing.get_type_hints(cls)
    given = {}
    for key, value in values.items():
        kind = hints[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = (
            isinstance(value, bool)
            if kind is bool
            else number
            if kind is float
            else number and isinstance(value, int)
            if kind is int
            else isinstance(value, kind)
        )
        if not ok:
            raise ValueError(f"arch_params.{key}: expected {kind.__name__}, got {value!r}")
        given[key] = float(value) if kind is float else value
    bounds = constraints(cls)
    for key, value in given.items():
        if key in bounds:
            try:
                check_value(key, value, bounds[key])
            except ValueError as error:
                raise ValueError(f"arch_params.{key}: {error}") from None
    return cls(**given)


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone a run builds: its `arch`, `width`, `depth` (0: a fixed-size arch's own)
    and `arch_params` (the arch's declared settings given by the run; {}: every default).
    What `build_backbone` builds, model.pt records and check_params checks."""

    arch: str
    width: int = 0
    depth: int = 0
    arch_params: Mapping[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:  # arch_params is a mapping: hashed by its items
        return hash((self.arch, self.width, self.depth, tuple(sorted(self.arch_params.items()))))

    @classmethod
    def of(cls, run: Any) -> BackboneSpec:
        """The backbone of a run section (anything with arch, width, depth and, if it has
        them, arch_params)."""
        return cls(run.arch, run.width, run.depth, dict(getattr(run, "arch_params", None) or {}))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> BackboneSpec:
        """The backbone a model file records (`record`); a file written before arch_params
        existed has none: every default."""
        return cls(record["arch"], record["width"], record["depth"], dict(record.get("arch_params") or {}))

    def record(self, omit_empty: bool = False) -> dict[str, Any]:
        """{arch, width, depth, arch_params}: what model.pt stores; `omit_empty` leaves out an
        empty arch_params (the training metrics, unchanged for runs without settings)."""
        out: dict[str, Any] = {"arch": self.arch, "width": self.width, "depth": self.depth}
        if self.arch_params or not omit_empty:
            out["arch_params"] = dict(self.arch_params)
        return out

    def describe(self) -> str:
        """ "arch 'vit_p2', width 64, depth 2, arch_params {'drop_path': 0.1}" for messages
        (no arch_params part when empty)."""
        settings = f", arch_params {dict(self.arch_params)}" if self.arch_params else ""
        return f"arch '{self.arch}', width {self.width}, depth {self.depth}{settings}"

    def settings(self) -> Any:
        """The checked instance of the arch's settings dataclass (`check_arch_params`)."""
        return check_arch_params(self.arch, self.arch_params)


def build_backbone(spec: BackboneSpec | str, width: int = 0, depth: int = 0) -> Backbone:
    """The backbone `spec` describes, freshly initialised from torch's RNG; it maps images
    [B, 3, H, W] to stage maps [B, C_i, H / r_i, W / r_i] and a pooled feature
    [B, out_channels]. `build_backbone("resnet", 64, 18)` is shorthand for a spec without
    settings. ValueError naming the known archs for an unknown one, for a size the arch
    does not take, or for settings it does not declare (`check_arch_params`)."""
    if isinstance(spec, str):
        spec = BackboneSpec(spec, width, depth)
    arch, width, depth = spec.arch, spec.width, spec.depth
    if arch not in ARCHITECTURES and not family_of(arch):
        families = ", ".join(f"'{f}/<model>'" for f in sorted(FAMILIES))
        raise ValueError(f"unknown arch '{arch}': expected one of {sorted(ARCHITECTURES)} or {families}")
    # only the settings the run gives: an arch's builder keeps its own defaults for the rest
    settings = dataclasses.asdict(spec.settings())
    given = {k: v for k, v in settings.items() if k in spec.arch_params}
    family = family_of(arch)
    if family:
        check_size(arch, width, depth)
        return FAMILIES[family](arch.partition("/")[2], width=width, depth=depth, **given)
    return ARCHITECTURES[arch](width=width, depth=depth, **given)


OWN_SIZES: dict[str, tuple[int, int]] = {}  # named architecture -> its own (width, depth)


def register_named(
    name: str, width: int, depth: int, build: Callable[..., Backbone], params: type = NoArchParams
) -> None:
    """Register a fixed-size architecture: `build(**settings)` makes it; params give it
    `width` and `depth` 0 (the architecture's own) or its own values, checked by
    `check_size`, and settings declared by dataclass `params`."""
    OWN_SIZES[name] = (width, depth)

    def builder(width: int = 0, depth: int = 0, **settings: Any) -> Backbone:
        check_size(name, width, depth)
        return build(**settings)

    ARCHITECTURES[name] = builder
    ARCH_PARAMS[name] = params


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
            raise ValueError(
                f"{key} must be 0 (the architecture's own) or {own[key]} for arch "
                f"'{arch}' (its own width {own['width']}, depth {own['depth']}), "
                f"got {value}"
            )


# Every architecture, registered here and only here (the order is the listing order of
# ARCHITECTURES; builders are untouched, so seeded inits are what each module makes).
# Each with the dataclass of its declared settings (`arch_params`): none for the convnets.
for _sized, _named, _params in (
    (convnets.SIZED_CONVNETS, convnets.NAMED_CONVNETS, NoArchParams),
    (vit.SIZED_VITS, vit.NAMED_VITS, vit.ViTParams),
):
    for _name, _builder in _sized.items():
        register(_name, _params)(_builder)
    for _name, (_width, _depth, _build) in _named.items():
        register_named(_name, _width, _depth, _build, _params)
register_family("timm", timm_backbones.TimmParams)(timm_backbones.timm_backbone)
del _sized, _named, _params, _name, _builder, _width, _depth, _build
