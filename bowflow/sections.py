"""The params sections of the stages that train no method (data, vocab, evaluate, report),
and what the prepare stage checks of the data against the params. Imports no method code,
so editing a method reruns none of these stages (`bowflow.config` validates a whole
params.yaml, methods included, for the check_params stage)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bowflow.checks import fraction, positive
from bowflow.data.specs import DIGITS_CLASSES, SOURCES


@dataclass
class DataParams:
    source: str = field(default="digits", metadata={"help": " | ".join(SOURCES)})
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
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {list(SOURCES)}, got '{self.source}'")
        if self.source == "imagefolder" and not self.root:
            raise ValueError("root must name the image folder when source is 'imagefolder'")
        positive("image_size", self.image_size)
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if len(self.novel_classes) < 2:
            raise ValueError(f"novel_classes needs at least 2 class names, got {self.novel_classes}")
        repeated = sorted({c for c in self.novel_classes if self.novel_classes.count(c) > 1})
        if repeated:
            raise ValueError(f"novel_classes lists {repeated} more than once")
        if self.source == "digits":
            unknown = [c for c in self.novel_classes if c not in DIGITS_CLASSES]
            if unknown:
                raise ValueError(f"novel_classes {unknown} are not digits classes: expected names "
                                 f"among {DIGITS_CLASSES}")
            if len(set(self.novel_classes)) >= len(DIGITS_CLASSES):
                raise ValueError("novel_classes name every digits class: expected at least 1 left as base")
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

    def check_against(self, manifest: dict, where: str = "the prepared data") -> None:
        """Shots and ways against the prepared novel classes (needs the prepared manifest).
        The message starts with the key at fault (`few_shot_way:` or `few_shot_shots:`)."""
        check_few_shot(self.few_shot_way, max(self.few_shot_shots), self.few_shot_queries,
                       manifest["novel_classes"], manifest["counts"], where)


def check_few_shot(way: int, shots: int, queries: int, novel: list[str],
                   counts: dict[str, dict[str, int]], where: str) -> None:
    """ValueError unless every `way`-way episode can draw `shots` support + `queries` query
    images of each novel class from the images evaluation gives it: both splits of each
    novel class (`novel_counts`). counts: {split: {class name: images}}; `where` names the
    data in the message."""
    if way > len(novel):
        raise ValueError(f"few_shot_way: {way}-way episodes need as many novel classes, but {where} "
                         f"has {len(novel)} ({novel})")
    need = shots + queries
    have = novel_counts({"novel_classes": novel, "counts": counts})
    short = {c: n for c, n in have.items() if n < need}
    if short:
        raise ValueError(f"few_shot_shots: {shots} support (its largest) + {queries} queries "
                         f"(evaluate.few_shot_queries) per class need {need} images of each novel class "
                         f"(train and test splits together, as the episodes draw them), but "
                         + ", ".join(f"class '{c}' has {n}" for c, n in short.items()) + f" in {where}")


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


class ParamsError(ValueError):
    pass


def check_data_needs(needs: dict, counts: dict[str, dict[str, int]], base: list[str], novel: list[str],
                     ssl_classes: str, ssl_max_images: int, where: str) -> None:
    """ParamsError naming the key when the data cannot give what `needs` (`data_needs`)
    asks: few-shot episodes over the novel classes, and each pool's largest batch at most
    the images that pool trains on. counts: {split: {class name: images}} (the prepared
    manifest's `counts`); base/novel: the class lists; ssl_classes and ssl_max_images: the
    data section's (they decide the SSL rows, as `data.prepared.ssl_rows` does); `where` names
    the data in the message."""
    few = needs["few_shot"]
    try:
        check_few_shot(few["way"], few["shots"], few["queries"], novel, counts, where)
    except ValueError as error:
        raise ParamsError(f"evaluate.{error}") from None
    train = counts["train"]
    ssl = sum(train.get(c, 0) for c in (base if ssl_classes == "base" else list(base) + list(novel)))
    pools = [("ssl_batch", min(ssl, ssl_max_images) if ssl_max_images > 0 else ssl,
              f"the train split's {ssl_classes} classes, data.ssl_classes"
              + (", at most data.ssl_max_images" if ssl_max_images > 0 else "")),
             ("labelled_batch", sum(train.values()), "every image of the train split")]
    for pool, images, what in pools:
        batch = needs.get(pool)
        if batch and batch["size"] > images:
            raise ParamsError(f"{batch['key']}: {batch['size']} images per step, but the run trains on "
                              f"only {images} images ({what}) of {where}: expected a batch_size <= {images}")


def read_data_needs(path: str | Path) -> dict:
    """The data needs in the stamp check_params writes (`main --stamp`)."""
    try:
        return json.loads(Path(path).read_text())["data_needs"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ParamsError(f"{path}: no data needs in it ({type(error).__name__}: {error}): expected the "
                          f"stamp `python -m bowflow.config params.yaml --stamp {path}` writes "
                          f"(rerun the check_params stage)") from None


def load_yaml(path: str | Path) -> Any:
    """Load YAML the way DVC does (YAML 1.2, so 5e-4 is a float, anchors allowed)."""
    from ruamel.yaml import YAML
    return YAML(typ="safe").load(Path(path).read_text())


