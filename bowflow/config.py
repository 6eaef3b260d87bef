"""The schema of params.yaml and its validation.

Each section is a dataclass; stages parse their section from command-line flags with
`bowflow.cli.parse_section`, and `validate_params` checks a whole params.yaml up front
(unknown keys, wrong types, impossible values, generation parents) so that a mistake
stops the pipeline with a message naming the key before any work starts.

    python -m bowflow.config params.yaml     # check a params file (make run does this)
"""
from __future__ import annotations

import dataclasses
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bowflow.methods import get_method
from bowflow.methods.base import fraction, positive

@dataclass
class DataParams:
    source: str = field(default="digits", metadata={"help": "digits | imagefolder | cifar10 | cifar100 | stl10 | svhn"})
    root: str = field(default="", metadata={"help": "folder (or .tar.gz) of the images, or torchvision root"})
    download: bool = field(default=False, metadata={"help": "let torchvision download into root"})
    image_size: int = field(default=16, metadata={"help": "pixels; every image is resized to it"})
    test_fraction: float = field(default=0.25, metadata={"help": "test share when the source has no split"})
    novel_classes: list[str] = field(default_factory=lambda: ["5", "6", "7", "8", "9"],
                                     metadata={"help": "class names held out for few-shot"})
    ssl_classes: str = field(default="base", metadata={"help": "classes self-supervised stages see: base | all"})
    ssl_max_images: int = field(default=0, metadata={"help": "subsample SSL training images (0 = all)"})
    max_bad_fraction: float = field(default=0.01, metadata={"help": "tolerated share of unreadable images"})

    def validate(self) -> None:
        sources = ("digits", "imagefolder", "cifar10", "cifar100", "stl10", "svhn")
        if self.source not in sources:
            raise ValueError(f"source must be one of {list(sources)}, got '{self.source}'")
        if self.source == "imagefolder" and not self.root:
            raise ValueError("root must name the image folder when source is 'imagefolder'")
        positive("image_size", self.image_size)
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if len(self.novel_classes) < 2:
            raise ValueError(f"novel_classes needs at least 2 class names, got {self.novel_classes}")
        if self.ssl_classes not in ("base", "all"):
            raise ValueError(f"ssl_classes must be 'base' or 'all', got '{self.ssl_classes}'")
        positive("ssl_max_images", self.ssl_max_images, allow_zero=True)
        fraction("max_bad_fraction", self.max_bad_fraction)


@dataclass
class VocabParams:
    layer: str = field(default="stage2", metadata={"help": "teacher stage whose map is quantised"})
    size: int = field(default=256, metadata={"help": "K, the number of visual words"})
    samples: int = field(default=50000, metadata={"help": "local features sampled for k-means"})
    iters: int = field(default=20, metadata={"help": "k-means iterations"})
    drop_border: int = field(default=0, metadata={"help": "map cells dropped on each side"})
    batch_size: int = field(default=256, metadata={"help": "images per teacher forward pass"})

    def validate(self) -> None:
        for name in ("size", "samples", "iters", "batch_size"):
            positive(name, getattr(self, name))
        positive("drop_border", self.drop_border, allow_zero=True)
        if not (self.layer == "last" or self.layer.startswith("stage")):
            raise ValueError(f"layer must be 'last' or 'stageN', got '{self.layer}'")
        if self.size > self.samples:
            raise ValueError(f"size (K={self.size}) must not exceed samples ({self.samples}): "
                             f"k-means needs at least one sampled feature per word")


@dataclass
class EvalParams:
    layer: str = field(default="last", metadata={"help": "stage whose pooled features are evaluated"})
    batch_size: int = 256
    linear_epochs: int = field(default=100, metadata={"help": "epochs of the linear probe"})
    knn_k: int = field(default=20, metadata={"help": "neighbours for k-NN"})
    knn_temperature: float = field(default=0.07, metadata={"help": "vote weight exp(sim / T)"})
    few_shot_way: int = field(default=5, metadata={"help": "novel classes per episode"})
    few_shot_shots: list[int] = field(default_factory=lambda: [1, 5, 10, 50])
    few_shot_queries: int = field(default=15, metadata={"help": "query images per class and episode"})
    few_shot_episodes: int = field(default=1000, metadata={"help": "episodes per shot count"})

    def validate(self) -> None:
        for name in ("batch_size", "linear_epochs", "knn_k", "knn_temperature", "few_shot_way",
                     "few_shot_queries", "few_shot_episodes"):
            positive(name, getattr(self, name))
        if not self.few_shot_shots or min(self.few_shot_shots) < 1:
            raise ValueError(f"few_shot_shots must be positive integers, got {self.few_shot_shots}")
        if self.few_shot_way < 2:
            raise ValueError(f"few_shot_way must be >= 2, got {self.few_shot_way}")

    def check_against(self, manifest: dict) -> None:
        """Shots and ways against the prepared novel classes (needs the prepared manifest)."""
        novel = manifest["novel_classes"]
        if self.few_shot_way > len(novel):
            raise ValueError(f"few_shot_way={self.few_shot_way} but only {len(novel)} novel classes")
        need = max(self.few_shot_shots) + self.few_shot_queries
        counts = novel_counts(manifest)
        short = {c: n for c, n in counts.items() if n < need}
        if short:
            raise ValueError(f"few_shot_shots max {max(self.few_shot_shots)} + few_shot_queries "
                             f"{self.few_shot_queries} needs {need} images per novel class, but "
                             + ", ".join(f"'{c}' has {n}" for c, n in short.items()))


def novel_counts(manifest: dict) -> dict[str, int]:
    """Images per novel class over both splits (novel classes are never trained on)."""
    counts = manifest["counts"]
    return {c: sum(counts[split].get(c, 0) for split in counts) for c in manifest["novel_classes"]}


@dataclass
class ReportParams:
    words_shown: int = field(default=8, metadata={"help": "visual words pictured in the report"})
    patches_per_word: int = field(default=8, metadata={"help": "image patches per pictured word"})

    def validate(self) -> None:
        positive("words_shown", self.words_shown)
        positive("patches_per_word", self.patches_per_word)


# ---------------------------------------------------------------------------- params.yaml
class ParamsError(ValueError):
    pass


TOP_LEVEL = {"seed": int, "device": str, "data": DataParams, "pretrain": dict,
             "generations": dict, "evaluate": EvalParams, "report": ReportParams}
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")   # becomes data/models/<name>/


def check_run_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not RUN_NAME.match(name):
        raise ParamsError(f"{where}: run names must be letters, digits, '_', '.' or '-' "
                          f"(they name folders), got {name!r}")


def check_pretrain(pretrain: Any) -> dict:
    """Each entry of `pretrain:` is a named run: a method and its parameters."""
    if not isinstance(pretrain, dict) or not pretrain:
        raise ParamsError("pretrain: expected a non-empty mapping run name -> {method: ..., ...}")
    checked = {}
    for name, section in pretrain.items():
        check_run_name(name, f"pretrain.{name}")
        where = f"pretrain.{name}"
        checked[name] = check_section(method_params(section, where), section, where)
        needs = get_method(section["method"]).stage_inputs
        if needs:
            raise ParamsError(f"{where}.method: '{section['method']}' needs {list(needs)} from its own "
                              f"stages; it cannot be a pretrain run (BoWNet belongs in generations:)")
    return checked


def check_section(cls: type, values: Any, where: str) -> Any:
    """Check keys and types of one section against dataclass `cls`; return an instance."""
    if not isinstance(values, dict):
        raise ParamsError(f"{where}: expected a mapping of {cls.__name__} keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ParamsError(f"{where}.{unknown[0]}: unknown key (expected one of {names})")
    for key, value in values.items():
        check_type(f"{where}.{key}", value, hints[key])
    try:
        section = cls(**values)
        section.validate()
    except ValueError as error:
        raise ParamsError(f"{where}: {error}") from None
    return section


def check_type(where: str, value: Any, kind: Any) -> None:
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        (item,) = typing.get_args(kind)[:1]
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list of {item.__name__}, got {value!r}")
        for i, v in enumerate(value):
            check_type(f"{where}[{i}]", v, item)
        return
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, kind))
    if not ok:
        raise ParamsError(f"{where}: expected {kind.__name__}, got {value!r}")


def check_generations(generations: Any, pretrain: dict) -> dict:
    """Every generation names an existing parent: a pretrain run or a generation defined
    above it (so the chain has no cycle), and no name is used twice."""
    if not isinstance(generations, dict):
        raise ParamsError("generations: expected a mapping name -> {parent, vocab, student} ({} for none)")
    checked, known = {}, set(pretrain)
    for name, item in generations.items():
        where = f"generations.{name}"
        check_run_name(name, where)
        if name in pretrain:
            raise ParamsError(f"{where}: '{name}' is already a pretrain run's name; pick another")
        if not isinstance(item, dict) or set(item) != {"parent", "vocab", "student"}:
            got = sorted(item) if isinstance(item, dict) else item
            raise ParamsError(f"{where}: expected exactly the keys ['parent', 'student', 'vocab'], got {got}")
        if item["parent"] not in known:
            raise ParamsError(f"{where}.parent: '{item['parent']}' is not a pretrain run or a "
                              f"generation defined above it (known: {sorted(known)})")
        vocab = check_section(VocabParams, item["vocab"], f"{where}.vocab")
        student = check_section(method_params(item["student"], f"{where}.student"), item["student"],
                                f"{where}.student")
        if "codes" not in get_method(student.method).stage_inputs:
            raise ParamsError(f"{where}.student.method: '{student.method}' does not learn from a "
                              f"vocabulary's BoW codes; a generation's student must (e.g. bownet)")
        checked[name] = {"parent": item["parent"], "vocab": vocab, "student": student}
        known.add(name)
    return checked


def method_params(section: Any, where: str) -> type:
    if not isinstance(section, dict) or "method" not in section:
        raise ParamsError(f"{where}.method: missing (expected a registered method name)")
    try:
        return get_method(section["method"]).Params
    except ValueError as error:
        raise ParamsError(f"{where}.method: {error}") from None


def validate_params(params: dict, manifest: dict | None = None) -> dict:
    """Check a loaded params.yaml; raise ParamsError naming the first bad key.

    With the manifest of prepared data made from the same `data` section, the few-shot
    settings are also checked against the novel classes' sizes.
    """
    if not isinstance(params, dict):
        raise ParamsError("params.yaml: expected a mapping at the top level")
    unknown = sorted(set(params) - set(TOP_LEVEL))
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown top-level key (expected {sorted(TOP_LEVEL)})")
    missing = sorted(set(TOP_LEVEL) - set(params))
    if missing:
        raise ParamsError(f"{missing[0]}: missing top-level key")
    check_type("seed", params["seed"], int)
    check_type("device", params["device"], str)
    if not (params["device"] in ("auto", "cpu") or params["device"].startswith("cuda")):
        raise ParamsError(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got '{params['device']}'")
    pretrain = check_pretrain(params["pretrain"])
    checked = {"data": check_section(DataParams, params["data"], "data"),
               "pretrain": pretrain,
               "generations": check_generations(params["generations"], pretrain),
               "evaluate": check_section(EvalParams, params["evaluate"], "evaluate"),
               "report": check_section(ReportParams, params["report"], "report")}
    for name, gen in checked["generations"].items():
        parent = pretrain.get(gen["parent"]) or checked["generations"][gen["parent"]]["student"]
        try:
            gen["student"].check_parent(parent)
        except ValueError as error:
            raise ParamsError(f"generations.{name}.student: {error}") from None
    recorded = (manifest or {}).get("source", {})
    if manifest is not None and all(recorded.get(k) == v for k, v in params["data"].items()):
        try:
            checked["evaluate"].check_against(manifest)
        except ValueError as error:
            raise ParamsError(f"evaluate: {error}") from None
    return checked


def load_yaml(path: str | Path) -> Any:
    """Load YAML the way DVC does (YAML 1.2, so 5e-4 is a float, anchors allowed)."""
    from ruamel.yaml import YAML
    return YAML(typ="safe").load(Path(path).read_text())


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Check a params.yaml before any work.")
    parser.add_argument("params", type=Path, nargs="?", default=Path("params.yaml"))
    parser.add_argument("--manifest", type=Path, default=Path("data/prepared/manifest.json"),
                        help="prepared manifest, to check shots against novel class sizes if present")
    parser.add_argument("--stamp", type=Path, help="file to write when the params are valid")
    args = parser.parse_args(argv)
    manifest = load_yaml(args.manifest) if args.manifest.exists() else None
    try:
        validate_params(load_yaml(args.params), manifest)
    except ParamsError as error:
        print(f"{args.params}: {error}", file=sys.stderr)
        return 2
    if args.stamp:
        from bowflow.io import write_text
        write_text(args.stamp, "params valid\n")   # constant content: downstream stays cached
    print(f"{args.params}: ok", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
