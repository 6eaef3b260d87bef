"""timm models as `Backbone`s: `arch: timm/<model>` (timm/resnet18, timm/convnext_atto,
timm/efficientnet_b0, timm/vit_tiny_patch16_224, ...), any model of `timm.list_models()`
that has `forward_intermediates` (timm's feature-extraction API).

How a timm model meets the stage-map contract of `bowflow.backbone.Backbone`:
- its stages are timm's feature stages (`model.feature_info`, what `features_only=True`
  returns): `stage<i>` is the i-th, a map [B, C_i, H / r_i, W / r_i] with timm's `num_chs`
  and `reduction` (a ResNet's first is its stem output `act1` at 1/2, as in timm; a ViT's
  are its blocks, patch tokens on the patch grid [B, D, H / p, W / p]). Maps are the raw
  stage outputs (`forward_intermediates(..., norm=False)`), so the vocabulary, evaluation of
  a middle stage and the distillation hints read them as they read our convnets';
- the pooled feature (`forward`, `pooled(x, 'last')`, `distill_features`) is timm's own
  pre-logits feature, `forward_head(forward_features(x), pre_logits=True)` [B, num_features]:
  average pooling plus whatever the model puts after it (ConvNeXt's LayerNorm; a ViT's
  final norm and CLS token; EfficientNet's 1x1 conv head, so `out_channels` may exceed the
  last stage's channels). A middle stage pools by averaging its map.

The network is `timm.create_model(model, pretrained=False, num_classes=0)`: nothing is
downloaded (import published weights as a run instead: `method: import`, bowflow/weights.py),
and the state_dict keys are timm's own under `model.` (`model.conv1.weight`), so a timm
or torchvision state_dict of the same model loads into it. ViTs are built with
`dynamic_img_size=True` (position embeddings resized to the image's patch grid); `patch`
is their patch size, which data.image_size must be a multiple of (check_params checks).
Width and depth are fixed by the name: params give 0. Declared settings (`TimmParams`, a
run's `arch_params`): `drop_path`, passed as timm's `drop_path_rate` (stochastic depth, per
block rising linearly to it in timm's ViTs, ConvNeXts, ResNets...) only when above 0, so a
run without it builds exactly `create_model`'s default network. bowflow/networks.py
registers `timm_backbone` as the builder of the `timm` family, with `TimmParams`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn as nn

from bowflow.backbone import Backbone
from bowflow.checks import param


@dataclass(frozen=True)
class TimmParams:
    """The settings a `timm/<model>` arch takes beyond its name (a run's `arch_params`)."""

    drop_path: float = param(
        0.0,
        "timm's drop_path_rate: stochastic depth, the last block's "
        "probability of dropping a residual branch per sample in "
        "training (DINO trains ViT-S with 0.1). 0 (off): timm's default "
        "model, every existing run's network",
        low=0,
        below=1,
    )


class TimmBackbone(Backbone):
    """A timm model (no classifier) with its feature stages as named stages."""

    def __init__(self, name: str, drop_path: float = 0.0):
        nn.Module.__init__(self)
        self.model: Any = create(name, drop_path)  # a timm model: its attributes are timm's (untyped)
        info = cast(Any, self.model.feature_info)
        info = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        self.timm_name = name
        self.channels = [int(f["num_chs"]) for f in info]
        self.reductions = [int(f["reduction"]) for f in info]
        self.stage_modules = [f["module"] for f in info]  # timm's names: 'layer1', 'stages.0', ...
        # placeholders, one per stage: `stages` has the stage count the contract reads
        # (len(backbone.stages)); the layers themselves are inside `model`
        self.stem = nn.Identity()
        self.stages = nn.ModuleList(nn.Identity() for _ in info)
        self.head_norm = nn.Identity()
        patch = getattr(getattr(self.model, "patch_embed", None), "patch_size", None)
        if patch is not None:
            self.patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)

    @property
    def out_channels(self) -> int:
        """Channels of the pooled feature: timm's `num_features`."""
        return int(self.model.num_features)

    def feature_maps(self, x: torch.Tensor, upto: int | None = None, final_norm: bool = True) -> list[torch.Tensor]:
        """x [B, 3, H, W] -> raw stage maps [B, C_i, H / r_i, W / r_i] for stages 0..upto
        (default all), computing no later stage. `final_norm` has no effect: timm's final
        norm acts on the pooled feature (see the module docstring)."""
        last = len(self.stages) - 1 if upto is None else upto
        return list(
            self.model.forward_intermediates(x, indices=list(range(last + 1)), intermediates_only=True, stop_early=True)
        )

    def distill_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x [B, 3, H, W] -> (every stage's raw map [B, C_i, h_i, w_i], pooled pre-logits
        feature [B, num_features]) in one pass."""
        final, maps = self.model.forward_intermediates(x, indices=list(range(len(self.stages))))
        return list(maps), self.model.forward_head(final, pre_logits=True)

    def pooled(self, x: torch.Tensor, layer: str = "last") -> torch.Tensor:
        """x -> [B, C]: timm's pre-logits feature for 'last' (or the last stage's name), the
        averaged map of a middle stage."""
        index = self.stage_index(layer)
        if index == len(self.stages) - 1:
            return self.forward(x)
        return self.feature_map(x, layer).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> timm's pooled pre-logits feature [B, num_features]."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def create(name: str, drop_path: float = 0.0) -> nn.Module:
    """timm.create_model(name) without weights or classifier (`drop_path_rate=drop_path` when
    above 0); ValueError naming the model when timm has no such model, it lacks
    forward_intermediates, or it takes no drop_path_rate."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(
            f"arch 'timm/{name}': timm {timm.__version__} has no model '{name}'"
            + (f" (similar: {close})" if close else "")
        )
    options: dict[str, Any] = {"drop_path_rate": drop_path} if drop_path else {}
    try:  # ViTs: position embeddings resized to any patch grid
        model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **options)
    except TypeError:
        try:
            model = timm.create_model(name, pretrained=False, num_classes=0, **options)
        except TypeError as error:
            if not options:
                raise
            raise ValueError(
                f"arch 'timm/{name}': the timm model takes no drop_path_rate (arch_params.drop_path): {error}"
            ) from None
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(
            f"arch 'timm/{name}': the timm model has no forward_intermediates, so its "
            f"stage maps cannot be read; pick another model"
        )
    return model


def timm_backbone(name: str, width: int = 0, depth: int = 0, drop_path: float = 0.0) -> TimmBackbone:
    """The builder of archs 'timm/<name>' (width and depth are 0: checked by the registry;
    `drop_path` as `TimmParams`)."""
    return TimmBackbone(name, drop_path)


def pretrained_mean_std(name: str) -> tuple[list[float], list[float]]:
    """The input mean/std timm's published weights for `name` expect (ImageNet's for most)."""
    import timm

    cfg = timm.get_pretrained_cfg(name) if hasattr(timm, "get_pretrained_cfg") else None
    if cfg is None:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
    mean = getattr(cfg, "mean", None) or (0.485, 0.456, 0.406)
    std = getattr(cfg, "std", None) or (0.229, 0.224, 0.225)
    return [float(m) for m in mean], [float(s) for s in std]
