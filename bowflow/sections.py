"""The params sections of the stages that train no method (data, vocab, evaluate, report),
and what the prepare stage checks of the data against the params. Imports no method code,
so editing a method reruns none of these stages (`bowflow.config` validates a whole
params.yaml, methods included, for the check_params stage)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bowflow.checks import check_fields, param
from bowflow.data.specs import DIGITS_CLASSES, SOURCES


class Section:
    """A params section: its fields' constraints (`bowflow.checks.param`) are checked by
    `validate()`; a section's own `validate()` calls it first and adds what relates fields."""

    def validate(self) -> None:
        check_fields(self)


@dataclass
class DataParams(Section):
    source: str = param("digits", " | ".join(SOURCES), choices=tuple(SOURCES))
    root: str = param("", "folder (or .tar.gz) of the images, or torchvision root")
    download: bool = param(False, "let torchvision download into root")
    image_size: int = param(16, "pixels; every image is resized to it", above=0)
    test_fraction: float = param(0.25, "test share when the source has no split", above=0, below=1)
    novel_classes: list[str] = param(["5", "6", "7", "8", "9"], "class names held out for few-shot")
    ssl_classes: str = param("base", "classes self-supervised stages see: base | all", choices=("base", "all"))
    ssl_max_images: int = param(0, "subsample SSL training images (0 = all)", low=0)
    max_bad_fraction: float = param(0.01, "tolerated share of unreadable images", low=0, high=1)
    unlabelled: str = param(
        "",
        "folder (or .tar.gz) of images without labels, any depth, for the "
        "self-supervised stages (pretrain:, generations:: vocabularies and "
        "students); '' = none. Evaluation, teachers: and distill: read the "
        "labelled source (source/root) only",
    )
    unlabelled_use: str = param(
        "replace",
        "replace: the SSL stages train on data.unlabelled's images "
        "only (as solo-learn/lightly train on an unlabelled folder), "
        "the labelled train split then serves evaluation alone; add: "
        "on them after the labelled rows of ssl_classes. ssl_max_images "
        "caps the pool either way",
        choices=("replace", "add"),
    )

    def validate(self) -> None:
        super().validate()
        if self.source == "imagefolder" and not self.root:
            raise ValueError("root must name the image folder when source is 'imagefolder'")
        if self.unlabelled != self.unlabelled.strip():
            raise ValueError(f"unlabelled: '{self.unlabelled}' starts or ends with a space: expected a path")
        if self.image_size < 8:  # after image_size > 0, whose message is its own
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}")
        if len(self.novel_classes) < 2:
            raise ValueError(f"novel_classes needs at least 2 class names, got {self.novel_classes}")
        repeated = sorted({c for c in self.novel_classes if self.novel_classes.count(c) > 1})
        if repeated:
            raise ValueError(f"novel_classes lists {repeated} more than once")
        if self.source == "digits":
            unknown = [c for c in self.novel_classes if c not in DIGITS_CLASSES]
            if unknown:
                raise ValueError(
                    f"novel_classes {unknown} are not digits classes: expected names among {DIGITS_CLASSES}"
                )
            if len(set(self.novel_classes)) >= len(DIGITS_CLASSES):
                raise ValueError("novel_classes name every digits class: expected at least 1 left as base")


@dataclass
class VocabParams(Section):
    layer: str = param(
        "last", "teacher stage whose map is quantised: 'last' (as the BoWNet paper and params.yaml) or 'stageN'"
    )
    size: int = param(256, "K, the number of visual words", above=0)
    samples: int = param(50000, "local features sampled for k-means", above=0)
    iters: int = param(20, "k-means iterations", above=0)
    drop_border: int = param(0, "map cells dropped on each side", low=0)
    batch_size: int = param(256, "images per teacher forward pass", above=0)

    def validate(self) -> None:
        super().validate()
        if not (self.layer == "last" or self.layer.startswith("stage")):
            raise ValueError(f"layer must be 'last' or 'stageN', got '{self.layer}'")
        if self.size > self.samples:
            raise ValueError(
                f"size (K={self.size}) must not exceed samples ({self.samples}): "
                f"k-means needs at least one sampled feature per word"
            )


@dataclass
class EvalParams(Section):
    layer: str = param("last", "stage whose pooled features are evaluated")
    batch_size: int = param(256, above=0)
    linear_epochs: int = param(100, "epochs of the linear probe", above=0)
    knn_k: int = param(20, "neighbours for k-NN", above=0)
    knn_temperature: float = param(0.07, "vote weight exp(sim / T)", above=0)
    few_shot_way: int = param(5, "novel classes per episode", low=2)
    few_shot_shots: list[int] = param([1, 5, 10, 50])
    few_shot_queries: int = param(15, "query images per class and episode", above=0)
    few_shot_episodes: int = param(1000, "episodes per shot count", above=0)

    def validate(self) -> None:
        super().validate()
        if not self.few_shot_shots or min(self.few_shot_shots) < 1:
            raise ValueError(f"few_shot_shots must be positive integers, got {self.few_shot_shots}")

    def check_against(self, manifest: dict, where: str = "the prepared data") -> None:
        """Shots and ways against the prepared novel classes (needs the prepared manifest).
        The message starts with the key at fault (`few_shot_way:` or `few_shot_shots:`)."""
        check_few_shot(
            self.few_shot_way,
            max(self.few_shot_shots),
            self.few_shot_queries,
            manifest["novel_classes"],
            manifest["counts"],
            where,
        )


def check_few_shot(
    way: int, shots: int, queries: int, novel: list[str], counts: dict[str, dict[str, int]], where: str
) -> None:
    """ValueError unless every `way`-way episode can draw `shots` support + `queries` query
    images of each novel class from the images evaluation gives it: both splits of each
    novel class (`novel_counts`). counts: {split: {class name: images}}; `where` names the
    data in the message."""
    if way > len(novel):
        raise ValueError(
            f"few_shot_way: {way}-way episodes need as many novel classes, but {where} has {len(novel)} ({novel})"
        )
    need = shots + queries
    have = novel_counts({"novel_classes": novel, "counts": counts})
    short = {c: n for c, n in have.items() if n < need}
    if short:
        raise ValueError(
            f"few_shot_shots: {shots} support (its largest) + {queries} queries "
            f"(evaluate.few_shot_queries) per class need {need} images of each novel class "
            f"(train and test splits together, as the episodes draw them), but "
            + ", ".join(f"class '{c}' has {n}" for c, n in short.items())
            + f" in {where}"
        )


def novel_counts(manifest: dict) -> dict[str, int]:
    """Images per novel class over both splits (novel classes are never trained on)."""
    counts = manifest["counts"]
    return {c: sum(counts[split].get(c, 0) for split in counts) for c in manifest["novel_classes"]}


@dataclass
class FineTuneParams(Section):
    """Semi-supervised fine-tuning (stages/finetune.py, bowflow/finetune.py): an optional
    section; with it, every run (pretrain, generation, teacher, distillation) is also
    fine-tuned, whole network and a new linear head, on each labelled fraction. Defaults are
    SimCLR's protocol (appendix B.5 of https://arxiv.org/abs/2002.05709), which OBoW, BYOL
    and SwAV report."""

    fractions: list[float] = param(
        [0.01, 0.1],
        "labelled fractions of the training images, each fine-tuned on separately from the run's weights (1% and 10%)",
        above=0,
        high=1,
    )
    epochs: list[int] = param(
        [60, 30],
        "epochs for each fraction, in the order of fractions (SimCLR: 60 with 1% of the labels, 30 with 10%)",
        above=0,
    )
    batch_size: int = param(256, "images per step (SimCLR: 4096; the subset's size when smaller)", above=0)
    lr: float = param(
        0.05,
        "learning rate per 256 images, scaled by batch / 256 (SimCLR: 0.05, "
        "Nesterov SGD, cosine to 0, no warm-up, no weight decay)",
        above=0,
    )
    crop_scale_min: float = param(
        0.2,
        "smallest random crop, as a fraction of the image area "
        "(SimCLR's Inception crop: 0.08; 0.2 as every bowflow view "
        "of small images)",
        above=0,
        high=1,
    )

    def validate(self) -> None:
        super().validate()
        if not self.fractions:
            raise ValueError("fractions must list at least one fraction in (0, 1], got []")
        if len(self.epochs) != len(self.fractions):
            raise ValueError(
                f"epochs must give one count per fraction ({len(self.fractions)}: {self.fractions}), got {self.epochs}"
            )
        if len(set(self.fractions)) != len(self.fractions):
            raise ValueError(f"fractions lists a fraction more than once: {self.fractions}")


# The kinds of labelled source a `transfer:` source can name: the single-label sources of
# `data:` (bowflow.data.sources, linear probe top-1) and the multi-label box sources
# (bowflow.data.boxes: VOC-style, per-class linear SVMs, mAP).
TRANSFER_SINGLE = tuple(SOURCES)
TRANSFER_MULTI = ("voc", "shapes")
SINGLE_LABEL, MULTI_LABEL = "single_label", "multi_label"  # a prepared transfer source's `task`


@dataclass
class TransferSourceParams(Section):
    """One labelled source of `transfer.sources` (stages/prepare_transfer.py,
    bowflow/data/transfer.py): prepared once, for every run and seed, into its own tables."""

    source: str = param(
        "",
        "the kind of source: single-label "
        + " | ".join(TRANSFER_SINGLE)
        + " (linear probe, top-1); multi-label "
        + " | ".join(TRANSFER_MULTI)
        + " (VOC07 per-class linear SVMs, mAP)",
        choices=TRANSFER_SINGLE + TRANSFER_MULTI,
    )
    root: str = param(
        "",
        "folder (or .tar.gz) of the images, torchvision root, or a VOC year folder "
        "(VOCdevkit/VOC2007; several joined by '+' train on their train splits together)",
    )
    download: bool = param(False, "let torchvision download into root")
    image_size: int = param(
        16, "pixels; every image is resized to it (the runs' data.image_size is the natural choice)"
    )
    test_fraction: float = param(
        0.25, "test share when the source has no split (digits, a flat image folder)", above=0, below=1
    )
    max_bad_fraction: float = param(0.01, "tolerated share of unreadable images", low=0, high=1)
    train_split: str = param("trainval", "voc: the ImageSets/Main split trained on (VOC07: trainval)")
    test_split: str = param("test", "voc: the split scored (VOC07: test)")
    n_train: int = param(1000, "shapes: generated training images", above=0)
    n_test: int = param(500, "shapes: generated test images", above=0)

    @property
    def multi_label(self) -> bool:
        return self.source in TRANSFER_MULTI

    def validate(self) -> None:
        super().validate()
        minimum = 12 if self.source == "shapes" else 8  # a shapes glyph is 10 px
        if self.image_size < minimum:
            raise ValueError(
                f"image_size must be >= {minimum} pixels for source '{self.source}', got {self.image_size}"
            )
        if self.source not in ("digits", "shapes") and not self.root.strip():
            raise ValueError(
                f"root must name the data of source '{self.source}' (a folder, tarball or VOC year folder)"
            )


@dataclass
class TransferParams(Section):
    """Linear transfer (stages/transfer.py, bowflow/transfer.py): an optional top-level
    section; with it, every run (pretrain, generation, teacher, distillation, imported) is
    also scored on each labelled source of `sources`, its backbone frozen: a single-label
    source by the linear probe of the evaluate stage (top-1), a multi-label one by the
    VOC07 protocol of Goyal et al. 2019 as OBoW runs it (one linear SVM per class, cost by
    3-fold cross-validation, mAP). A section of its own, not a key of `evaluate:`, so that
    adding it to a finished project reruns only its stages and the report
    (docs/fidelity/transfer.md)."""

    sources: dict[str, Any] = param(
        {},
        "NAME: a source (TransferSourceParams keys; check_params turns each into one); each is "
        "prepared once, as data/transfer/NAME/",
    )
    layer: str = param("last", "stage whose pooled features are transferred (as evaluate.layer)")
    batch_size: int = param(256, "images per forward pass of the frozen backbone", above=0)
    linear_epochs: int = param(100, "single-label: epochs of the linear probe (as evaluate.linear_epochs)", above=0)
    svm_costs: list[float] = param(
        [0.05, 0.1, 0.3, 0.5, 1.0, 3.0, 5.0],
        "multi-label: SVM costs C tried per class (OBoW's list; 0.5^4 .. 0.5^19 are always added, "
        "as the benchmark's parse_cost_list does)",
        above=0,
    )
    svm_folds: int = param(
        3, "multi-label: cross-validation folds choosing each class's cost (the benchmark: 3)", low=2
    )
    svm_positive_weight: float = param(
        2.0, "multi-label: class weight of the positives, negatives 1 (the benchmark: {1: 2, -1: 1})", above=0
    )
    svm_max_iter: int = param(2000, "multi-label: LinearSVC iterations (the benchmark: 2000)", above=0)

    def validate(self) -> None:
        super().validate()
        if not self.sources:
            raise ValueError("sources must name at least one source (NAME: {source: ..., ...})")
        if not (self.layer == "last" or self.layer.startswith("stage")):
            raise ValueError(f"layer must be 'last' or 'stageN', got '{self.layer}'")
        if not self.svm_costs:
            raise ValueError("svm_costs must list at least one cost > 0, got []")


@dataclass
class DetectionParams(Section):
    """Detection fine-tuning (stages/prepare_detection.py, stages/detect.py,
    bowflow/detection.py): an optional section; with it, the box source is prepared once and
    every run (pretrain, generation, teacher, distillation) is also fine-tuned as the backbone
    of a Faster R-CNN and scored by COCO AP50, AP75 and AP on the test split. The recipe's
    defaults are MoCo's / OBoW's VOC protocol (detectron2 R50-C4, 24k iterations of 16 images,
    OBoW's lr 0.01; docs/fidelity/detection.md); the source's are the embedded generated
    shapes at 32 px, so `steps` and the sampling sizes want a CPU's values (params.yaml's
    commented example)."""

    source: str = param(
        "shapes",
        "shapes: seeded generated glyph images with boxes (no download); voc: PASCAL VOC year folder(s)",
        choices=("shapes", "voc"),
    )
    root: str = param(
        "",
        "voc: a VOC year folder (ImageSets/Main, Annotations, JPEGImages), or several joined by '+' "
        "whose train splits are concatenated (VOC07+12: 'VOCdevkit/VOC2007+VOCdevkit/VOC2012'; the "
        "test split is the first's); shapes: unused",
    )
    train_split: str = param("trainval", "voc: the ImageSets/Main list trained on (VOC07+12: trainval)")
    test_split: str = param("test", "voc: the ImageSets/Main list scored (VOC07: test)")
    train_images: int = param(1000, "shapes: generated training images", above=0)
    test_images: int = param(500, "shapes: generated test images", above=0)
    image_size: int = param(32, "pixels: every image is resized whole to image_size^2 and its boxes with it", low=12)
    head: str = param(
        "c4",
        "c4: the network's last stage is the box head on RoIs of the one before (the reference's "
        "R50-C4); fpn: a feature pyramid over the stage maps, a 2-layer MLP box head",
        choices=("c4", "fpn"),
    )
    train_sizes: list[int] = param(
        [],
        "shorter sides (px) the detector resizes training images to, one drawn per batch (reference: "
        "480..800 on ~375 px VOC images); [] = image_size",
        above=0,
    )
    test_size: int = param(0, "shorter side (px) at test (reference: 800); 0 = image_size", low=0)
    anchor_sizes: list[float] = param(
        [],
        "anchor sizes (px at the detector's input), aspect ratios 0.5/1/2; [] = the reference's in "
        "feature strides (C4: 2..32 strides, detectron2's 32..512 px at stride 16; FPN: 8 per level)",
        above=0,
    )
    roi_size: int = param(14, "C4 head: RoIAlign cells per side (detectron2: 14, 7 after res5)", above=0)
    fpn_channels: int = param(256, "FPN head: pyramid channels (detectron2 / torchvision: 256)", above=0)
    mlp_dim: int = param(1024, "FPN head: hidden units of the 2-layer box head (torchvision: 1024)", above=0)
    proposals: int = param(
        2000, "RPN proposals kept per image after NMS in training (detectron2: 2000; test: half)", above=0
    )
    roi_batch: int = param(512, "RoIs sampled per image for the box loss, 25% positive (detectron2: 512)", above=0)
    steps: int = param(24000, "SGD iterations (MoCo / OBoW: 24,000 of 16 images)", above=0)
    batch_size: int = param(16, "images per iteration (MoCo / OBoW: 16)", above=0)
    lr: float = param(
        0.01,
        "learning rate per 16 images, scaled by batch_size / 16 (OBoW: 0.01, MoCo: 0.02); momentum "
        "0.9, warm-up, x0.1 at 75% and 92% of the steps (18k, 22k of 24k)",
        above=0,
    )
    weight_decay: float = param(0.0001, "SGD weight decay, none on norm layers (detectron2: 1e-4)", low=0)
    warmup_steps: int = param(100, "linear warm-up from lr x 0.001 (detectron2: 100)", low=0)
    precise_bn_steps: int = param(
        200, "training batches recomputing BatchNorm statistics before the test (detectron2 PreciseBN: 200)", low=0
    )

    def validate(self) -> None:
        super().validate()
        if self.source == "voc" and not self.root.strip():
            raise ValueError("root must name a VOC year folder (or several joined by '+') when source is 'voc'")
        if self.source == "voc" and self.train_split == self.test_split and "+" not in self.root:
            raise ValueError(
                f"test_split must differ from train_split ({self.train_split!r}): the test images "
                f"would be training images"
            )


@dataclass
class ReportParams(Section):
    words_shown: int = param(8, "visual words pictured in the report", above=0)
    patches_per_word: int = param(8, "image patches per pictured word", above=0)


@dataclass
class ResourceParams(Section):
    """What one kind of stage asks for: torchrun processes for a training stage (rendered into
    its dvc.yaml command through bin/launch), and the Snakemake rule resources a cluster
    executor (SLURM) requests for each of its jobs."""

    processes: int = param(
        1, "torchrun processes of a training stage (1 = one plain python process); with gpus > 0, one per GPU", above=0
    )
    gpus: int = param(0, "GPUs per job (SLURM --gpus); 0 = CPU only", low=0)
    threads: int = param(2, "CPU cores per job (Snakemake threads, SLURM --cpus-per-task)", above=0)
    mem_mb: int = param(8000, "memory per job in MB (SLURM --mem)", above=0)
    runtime: int = param(120, "wall-time limit per job in minutes (SLURM --time)", above=0)

    def validate(self) -> None:
        super().validate()
        if self.gpus and self.processes != self.gpus:
            raise ValueError(
                f"processes must equal gpus (one torchrun process per GPU), got "
                f"processes {self.processes} and gpus {self.gpus}"
            )


# resources: keys: the four training stages of dvc.yaml (each may run under torchrun) and
# `other` (check_params, prepare, vocab, evaluate_pretrain, evaluate_student, report: one
# process each).
RESOURCE_KINDS = ("pretrain", "student", "teacher", "distill", "other")


class ParamsError(ValueError):
    pass


def check_data_needs(
    needs: dict,
    counts: dict[str, dict[str, int]],
    base: list[str],
    novel: list[str],
    ssl_classes: str,
    ssl_max_images: int,
    where: str,
    unlabelled: int = 0,
    unlabelled_use: str = "replace",
) -> None:
    """ParamsError naming the key when the data cannot give what `needs` (`data_needs`)
    asks: few-shot episodes over the novel classes, and each pool's largest batch at most
    the images that pool trains on. counts: {split: {class name: images}} (the prepared
    manifest's `counts`); base/novel: the class lists; ssl_classes and ssl_max_images: the
    data section's (they decide the SSL rows, as `data.prepared.ssl_rows` does); `where` names
    the data in the message. unlabelled: images of data.unlabelled (0 = none), replacing or
    added to the SSL pool by unlabelled_use (`data.prepared.ssl_pool`)."""
    few = needs["few_shot"]
    try:
        check_few_shot(few["way"], few["shots"], few["queries"], novel, counts, where)
    except ValueError as error:
        raise ParamsError(f"evaluate.{error}") from None
    train = counts["train"]
    ssl = sum(train.get(c, 0) for c in (base if ssl_classes == "base" else list(base) + list(novel)))
    what = f"the train split's {ssl_classes} classes, data.ssl_classes"
    if unlabelled:
        ssl, what = (
            (ssl + unlabelled, f"{what}, and the unlabelled images of data.unlabelled")
            if unlabelled_use == "add"
            else (unlabelled, "the unlabelled images of data.unlabelled")
        )
    pools = [
        (
            "ssl_batch",
            min(ssl, ssl_max_images) if ssl_max_images > 0 else ssl,
            what + (", at most data.ssl_max_images" if ssl_max_images > 0 else ""),
        ),
        ("labelled_batch", sum(train.values()), "every image of the train split"),
    ]
    for pool, images, what in pools:
        batch = needs.get(pool)
        if batch and batch["size"] > images:
            raise ParamsError(
                f"{batch['key']}: {batch['size']} images per step, but the run trains on "
                f"only {images} images ({what}) of {where}: expected a batch_size <= {images}"
            )


def read_data_needs(path: str | Path) -> dict:
    """The data needs in the stamp check_params writes (`main --stamp`)."""
    try:
        return json.loads(Path(path).read_text())["data_needs"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ParamsError(
            f"{path}: no data needs in it ({type(error).__name__}: {error}): expected the "
            f"stamp `python -m bowflow.config params.yaml --stamp {path}` writes "
            f"(rerun the check_params stage)"
        ) from None


def load_yaml(path: str | Path) -> Any:
    """Load YAML the way DVC does (YAML 1.2, so 5e-4 is a float, anchors allowed)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(Path(path).read_text())
