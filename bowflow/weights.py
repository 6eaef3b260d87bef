"""Pretrained weights as a run: an entry of `pretrain:` or `teachers:` with `method: import`
that loads a local weights file instead of training.

    pretrain:
      published:
        method: import
        weights: weights/resnet18.pth      # a path from the project root; DVC tracks the file
        format: torchvision                # auto | bowflow | torchvision | timm
        arch: timm/resnet18                # a state_dict's architecture ('' for a bowflow model.pt)

Formats
- `bowflow`: a `model.pt` as the pipeline writes it (`bowflow.models.save_model`): its own
  arch, width, depth, arch_params, input mean/std and, for a supervised run, its
  classifier. `arch`, `width`, `depth`, `arch_params` may be left empty/0/{} (read from the
  file; a file without arch_params has none) or must equal the file's.
- `timm`: a timm `state_dict` (`torch.save(model.state_dict())`, a `.safetensors` file, or
  a checkpoint dict holding one under `state_dict`/`model`; a `module.` prefix of DDP is
  dropped) of `arch: timm/<model>`. The classifier's keys (timm's `pretrained_cfg
  ['classifier']`: `fc` of a ResNet, `head.fc` of a ConvNeXt, `head` of a ViT) are the
  teacher's classifier; the rest must be exactly the backbone's keys and shapes.
- `torchvision`: a torchvision `state_dict`, read as a timm one: it loads where torchvision's
  keys are timm's (the ResNet family: resnet18/34/50/101/152, wide_resnet50_2, resnext50_32x4d
  with `arch: timm/<same name>`); for other models the error names the first key that differs.
  Input mean/std default to ImageNet's.
- `auto`: `bowflow` when the file is a bowflow model record, else a state_dict read as `timm`.

Checks (at check_params, reading the file, and again at the start of the stage before any
other work): a missing key, an unexpected key or a shape that differs from the arch's is a
ValueError naming the key and the file. A `teachers:` import needs a classifier (its logits
are what distillation reads); the stage checks its outputs against the prepared classes.

Input normalisation (`normalize`): `auto` uses the file's own mean/std (bowflow), ImageNet's
(torchvision) or the timm model's published ones (timm); `data` fits them on the training
images, as a trained run does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bowflow.checks import check_fields, param

if TYPE_CHECKING:
    from bowflow.networks import BackboneSpec

IMPORT = "import"  # the `method:` of an imported run
IMPORT_SECTIONS = ("pretrain", "teachers")  # the sections whose entries may import
FORMATS = ("auto", "bowflow", "torchvision", "timm")
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@dataclass
class ImportParams:
    """An imported run's section (params.yaml entry with `method: import`)."""

    method: str = param(IMPORT, "'import': load a weights file, train nothing", choices=(IMPORT,))
    weights: str = param(
        "",
        "the weights file, a path from the project root (a dependency of the "
        "run's stage: editing it reruns the run and what reads it)",
    )
    format: str = param(
        "auto",
        "bowflow (a model.pt of this pipeline) | timm | torchvision (a "
        "state_dict of arch) | auto (bowflow if the file is one, else a "
        "state_dict)",
        choices=FORMATS,
    )
    arch: str = param(
        "", "the architecture of a state_dict (timm/<model>, e.g. timm/resnet18); '' for a bowflow model.pt (its own)"
    )
    width: int = param(0, "as arch's width (bowflow model.pt: 0 = the file's)", low=0)
    depth: int = param(0, "as arch's depth (bowflow model.pt: 0 = the file's)", low=0)
    arch_params: dict[str, Any] = param(
        {}, "as a trained run's arch_params, the arch's declared settings (bowflow model.pt: {} = the file's)"
    )
    normalize: str = param(
        "auto",
        "input mean/std: auto (the file's own; ImageNet's for torchvision; "
        "the timm model's) | data (fitted on the training images)",
        choices=("auto", "data"),
    )

    batch_size = 0  # trains nothing: asks no batch of the data (read by check_params' data needs)

    def validate(self) -> None:
        check_fields(self)
        if not self.weights:
            raise ValueError("weights must name the file to import (a path from the project root)")
        if self.format in ("torchvision", "timm") and not self.arch.startswith("timm/"):
            raise ValueError(
                f"arch must be a timm model ('timm/<model>', e.g. timm/resnet18) to read a "
                f"{self.format} state_dict, got '{self.arch}'"
            )
        if self.arch:
            from bowflow.networks import check_arch_params

            check_arch_params(self.arch, self.arch_params)
        elif self.arch_params:
            raise ValueError(
                "arch_params: given without an arch: leave it {} to take a bowflow model.pt's own, or name the arch"
            )

    @property
    def backbone_spec(self) -> BackboneSpec:
        """Which backbone the run builds (arch, width, depth, arch_params)."""
        from bowflow.networks import BackboneSpec

        return BackboneSpec.of(self)


def import_runs(params: dict) -> dict[str, dict[str, str]]:
    """{section: {run name: weights path}} of the `method: import` entries of a loaded
    params.yaml (sections pretrain:, teachers:). Pure: workflow/pipeline.py reads it."""
    out = {}
    for section in IMPORT_SECTIONS:
        entries = params.get(section) or {}
        found = (
            {
                name: str(entry.get("weights", ""))
                for name, entry in entries.items()
                if isinstance(entry, dict) and entry.get("method") == IMPORT
            }
            if isinstance(entries, dict)
            else {}
        )
        if found:
            out[section] = found
    return out


def pipeline_layout(params: dict) -> list[str]:
    """What dvc.yaml spells out from params.yaml besides its seeds: for each section with an
    import, every entry as 'section.name' (trained) or 'section.name=weights' (imported), in
    params order. [] without imports. workflow/pipeline.py gives it to check_params
    (`--pipeline-layout`), which compares it with params.yaml's."""
    imports, out = import_runs(params), []
    for section, found in imports.items():
        for name in params[section]:
            out.append(f"{section}.{name}" + (f"={found[name]}" if name in found else ""))
    return out


# ---------------------------------------------------------------------------- the file


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_file(path: str | Path) -> Any:
    """The object a weights file holds (a `.safetensors` file: its tensors). ValueError
    naming the file when it is missing or unreadable."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{path}: no such file"
            + (" (it is a folder)" if path.is_dir() else "")
            + ": expected a weights file (.pt, .pth, .safetensors)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a bowflow model.pt may hold more than tensors
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"{path}: not a readable weights file ({type(error).__name__}: {error})") from None


def is_bowflow_record(obj: Any) -> bool:
    return isinstance(obj, dict) and {"arch", "state_dict", "mean", "std"} <= set(obj)


def unwrap_state_dict(obj: Any, path: Path) -> dict:
    """A state_dict from a file's object: itself, or under 'state_dict' / 'model' /
    'model_state_dict' (training checkpoints); DDP's 'module.' prefix dropped."""
    import torch

    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: expected a state_dict (a mapping of names to tensors), got "
            f"{type(obj).__name__}" + (f" with keys {list(obj)[:6]}" if isinstance(obj, dict) else "")
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


@dataclass
class Imported:
    """A checked weights file: what the stage writes as the run's model.pt."""

    params: ImportParams  # arch, width, depth, arch_params resolved (a bowflow file's own)
    state_dict: dict  # the backbone's keys -> tensors
    classifier: dict | None  # {'weight': [K, C], 'bias': [K]} or None
    mean: list[float] | None  # the format's input mean/std (None: fit on the data)
    std: list[float] | None
    format: str  # bowflow | torchvision | timm (auto resolved)


def read_import(params: ImportParams, arch_state: Any = None) -> Imported:
    """Read and check `params.weights` against its architecture; ValueError naming the file
    and the first bad key. `arch_state(spec: BackboneSpec) -> {key: tensor}` gives the
    backbone's expected keys and shapes (default: a network built on the meta device)."""
    path = Path(params.weights)
    obj = read_file(path)
    fmt = params.format
    if fmt == "auto":
        fmt = "bowflow" if is_bowflow_record(obj) else "timm"
    if fmt == "bowflow":
        if not is_bowflow_record(obj):
            raise ValueError(
                f"{path}: not a bowflow model.pt (no 'arch'/'state_dict'/'mean'/'std' record): "
                f"for a torchvision or timm state_dict set format and arch"
            )
        from bowflow.networks import BackboneSpec

        own_spec = BackboneSpec.from_record(obj)  # a file without arch_params: none
        for key, own in own_spec.record().items():
            given = getattr(params, key)
            if given not in ("", 0, {}) and given != own:
                raise ValueError(
                    f"{key}: {path} holds a {own_spec.arch} ({own_spec.describe()}), not "
                    f"{key} {given!r}: leave arch/width/depth/arch_params empty to take "
                    f"the file's"
                )
        params = replace(params, **own_spec.record())
        state, classifier = dict(obj["state_dict"]), obj.get("classifier")
        mean, std = obj["mean"], obj["std"]
    else:
        state = unwrap_state_dict(obj, path)
        head = classifier_name(params.arch)
        classifier = {k[len(head) + 1 :]: v for k, v in state.items() if head and k.startswith(head + ".")}
        classifier = classifier if set(classifier) >= {"weight", "bias"} else None
        state = {"model." + k: v for k, v in state.items() if not (head and k.startswith(head + "."))}
        if fmt == "torchvision":
            mean, std = IMAGENET
        else:
            from bowflow.timm_backbones import pretrained_mean_std

            mean, std = pretrained_mean_std(params.arch.partition("/")[2])
    expected = (arch_state or meta_state)(params.backbone_spec)
    check_keys(state, expected, path, params.arch, strip="model." if fmt != "bowflow" else "")
    if params.normalize == "data":
        mean = std = None
    return Imported(params, state, classifier, mean, std, fmt)


def meta_state(spec: BackboneSpec) -> dict:
    """The state_dict keys and shapes of a backbone, built on the meta device."""
    import torch

    from bowflow.networks import build_backbone

    with torch.device("meta"):
        return build_backbone(spec).state_dict()


def classifier_name(arch: str) -> str:
    """The module name of a timm model's classifier ('fc', 'head.fc', 'head'); '' if none."""
    if not arch.startswith("timm/"):
        return ""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch.partition("/")[2])
    name = getattr(cfg, "classifier", None) if cfg is not None else None
    return name if isinstance(name, str) else ""


def check_keys(state: dict, expected: dict, path: Path, arch: str, strip: str = "") -> None:
    """Every key of `expected` in `state` with its shape, and nothing else: ValueError naming
    the first key (as the file spells it: `strip` removed) and the file otherwise."""

    def named(key: str) -> str:
        return key[len(strip) :] if strip and key.startswith(strip) else key

    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(
            f"{path}: missing key '{named(missing[0])}' of arch '{arch}'"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; the file has {len(state)} keys, e.g. {[named(k) for k in list(state)[:3]]}: "
            f"is it a state_dict of another architecture?"
        )
    extra = [k for k in state if k not in expected]
    if extra:
        raise ValueError(
            f"{path}: unexpected key '{named(extra[0])}'"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            + f": arch '{arch}' has no such parameter or buffer"
        )
    for key, want in expected.items():
        got = tuple(state[key].shape)
        if got != tuple(want.shape):
            raise ValueError(
                f"{path}: key '{named(key)}' has shape {list(got)}, but arch '{arch}' expects {list(want.shape)}"
            )


def check_teacher(imported: Imported, path: str | Path, num_classes: int | None = None) -> None:
    """A teachers: import needs a classifier matching the backbone (and `num_classes`
    outputs when given): ValueError naming the key and file otherwise."""
    head = classifier_name(imported.params.arch) or "classifier"
    if imported.classifier is None:
        raise ValueError(
            f"{path}: missing key '{head}.weight': a teachers: entry needs the model's "
            f"classifier (its logits are what distillation reads); import a backbone "
            f"alone as a pretrain: entry"
        )
    weight = imported.classifier["weight"]
    if num_classes is not None and weight.shape[0] != num_classes:
        raise ValueError(
            f"{path}: key '{head}.weight' has {weight.shape[0]} outputs, but the prepared "
            f"data have {num_classes} classes"
        )
