"""The data sources and their registry: `load_source(source, ...) -> (train, test, report)`.

    digits       scikit-learn's 1797 8x8 digits, embedded, no download (the default)
    imagefolder  a folder or a .tar.gz of one folder per class, with or without
                 train/ and test/ folders above them (`bowflow.data.image_folder`)
    cifar10, cifar100, svhn, stl10
                 torchvision datasets, official train/test splits, rows in class order
                 (the order within a class kept), as an image folder's rows are (class
                 folders, then file names): a class-folder tree written from the set in
                 its order prepares to the same tables (tests/test_data_unlabelled.py)

Every image comes out as uint8 RGB, size x size, channels last: [N, H, W, 3], resized by
the policy of `bowflow.data.resize`. The names are `bowflow.data.specs.SOURCES`, which
config validates against; a new source is a loader here returning train/test `ImageSet`s,
named in SOURCES and dispatched by `load_source`.
"""

from __future__ import annotations

import numbers
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bowflow.data.image_folder import load_imagefolder
from bowflow.data.image_set import ImageSet
from bowflow.data.prepared import SPLITS
from bowflow.data.resize import RESIZE_POLICY, note_sizes, resize_images
from bowflow.data.specs import DIGITS_CLASSES, SOURCES, DataError, DataNotFoundError, check_fraction, warn
from bowflow.data.splits import stratified_split


def load_source(
    source: str = "digits",
    root: str | os.PathLike = "data",
    image_size: int = 32,
    test_fraction: float = 0.2,
    seed: int = 0,
    download: bool = False,
    max_bad_fraction: float = 0.01,
    novel_classes: Sequence[str] | None = None,
) -> tuple[ImageSet, ImageSet, dict[str, Any]]:
    """Load `source` as (train, test, report), every image resized to image_size^2.

    test_fraction and seed only matter where the source has no fixed split (digits, an
    image folder without train/ and test/). download and root only matter for the
    torchvision sources (root also names the imagefolder folder or tarball).

    The report is a JSON-able dict: source, root, layout, image_size, found (image
    files), loaded (per split), skipped [{path, reason}], resized (count),
    resize_policy, source_sizes ({"WxH": count}, top 10), warnings [str], and timing
    {seconds, images_per_second[, decode_images_per_second]} (the only part that changes
    between identical runs).

    novel_classes, when given, are checked against the image folder's class folders right
    after the (cheap) scan, so a misspelt class stops before any image is decoded.
    Bad input raises `DataError` naming the parameter or file.
    """
    if source not in SOURCES:
        raise DataError(f"data.source: unknown data source {source!r}; expected one of: {', '.join(SOURCES)}")
    _check_image_size(image_size)
    if source != "digits" and not str(root).strip():
        raise DataError(
            f"data.root: source {source!r} needs a data root: set `data.root` to a folder "
            f"(or, for imagefolder, a .tar.gz)"
        )
    report: dict[str, Any] = {
        "source": source,
        "root": None if source == "digits" else str(root),
        "layout": None,
        "image_size": int(image_size),
        "found": 0,
        "loaded": {},
        "skipped": [],
        "resized": 0,
        "resize_policy": RESIZE_POLICY,
        "source_sizes": {},
        "warnings": [],
        "timing": {},
    }
    start = time.perf_counter()
    if source == "digits":
        check_fraction("test_fraction", test_fraction, open_interval=True)
        train, test = _load_digits(int(image_size), test_fraction, seed, report)
    elif source == "imagefolder":
        check_fraction("max_bad_fraction", max_bad_fraction, open_interval=False)
        train, test = load_imagefolder(
            Path(root), int(image_size), test_fraction, seed, max_bad_fraction, report, novel_classes
        )
    else:
        train, test = _load_torchvision(source, Path(root), int(image_size), download, report)
    seconds = time.perf_counter() - start
    n = len(train) + len(test)
    report["loaded"] = {"train": len(train), "test": len(test)}
    report["timing"].update(seconds=round(seconds, 3), images_per_second=round(n / max(seconds, 1e-9), 1))
    _warn_missing_classes(train, test, report)
    return train, test, report


def _check_image_size(image_size: Any) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size <= 0:
        raise DataError(f"data.image_size: expected a positive integer, got {image_size!r}")


def _warn_missing_classes(train: ImageSet, test: ImageSet, report: dict[str, Any]) -> None:
    """Warn about classes present in one split only (they are kept)."""
    k = len(train.class_names)
    n_train = np.bincount(train.labels, minlength=k)
    n_test = np.bincount(test.labels, minlength=k)
    for name, a, b in zip(train.class_names, n_train, n_test):
        if a and not b:
            warn(report, f"class {name!r} has {a} train images but none in test; kept")
        elif b and not a:
            warn(
                report,
                f"class {name!r} has {b} test images but none in train; kept, but no model will see it during training",
            )


def _load_digits(image_size: int, test_fraction: float, seed: int, report: dict[str, Any]) -> tuple[ImageSet, ImageSet]:
    """scikit-learn digits: [1797, 8, 8] values 0..16 -> uint8, resized, 3 channels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [N, 8, 8]
    gray = resize_images(gray, image_size)  # [N, S, S]
    images = np.repeat(gray[..., None], 3, axis=-1)  # [N, S, S, 3]
    labels = digits.target.astype(np.int64)
    class_names = list(DIGITS_CLASSES)
    report["layout"] = "embedded, split by test_fraction"
    report["found"] = len(labels)
    note_sizes(report, [(8, 8)] * len(labels), image_size)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    paths = [""] * len(labels)
    return (
        ImageSet(images[train_idx], labels[train_idx], class_names, [paths[i] for i in train_idx]),
        ImageSet(images[test_idx], labels[test_idx], class_names, [paths[i] for i in test_idx]),
    )


def _load_torchvision(
    source: str, root: Path, image_size: int, download: bool, report: dict[str, Any]
) -> tuple[ImageSet, ImageSet]:
    """Official train/test splits of a torchvision dataset, as [N, S, S, 3] uint8, rows
    sorted by class (stable), as `load_imagefolder` lists a class-folder tree."""
    from torchvision import datasets

    def build(split: str):
        train = split == "train"
        if source == "cifar10":
            return datasets.CIFAR10(str(root), train=train, download=download)
        if source == "cifar100":
            return datasets.CIFAR100(str(root), train=train, download=download)
        if source == "svhn":
            return datasets.SVHN(str(root), split=split, download=download)
        return datasets.STL10(str(root), split=split, download=download)

    report["layout"] = "official train/test split"
    sets = []
    for split in SPLITS:
        try:
            ds = build(split)
        except RuntimeError as e:
            if download:
                raise DataError(
                    f"data.root: {source} could not be downloaded into or read from "
                    f"'{root}' ({e}); expected a writable folder, online"
                ) from e
            raise DataNotFoundError(
                f"data.root: {source}: no usable copy under data root '{root}' ({e}). Set `data.download: true` "
                f"to download it there, or point `data.root` at a folder holding a local copy."
            ) from e
        except OSError as e:  # network failures surface as URLError, an OSError
            raise DataError(f"data.download: {source}: downloading into '{root}' failed: {e}") from e
        if source in ("cifar10", "cifar100"):
            images = np.asarray(ds.data, dtype=np.uint8)  # [N, 32, 32, 3]
            labels = np.asarray(ds.targets, dtype=np.int64)
            class_names = list(ds.classes)
        else:
            images = np.ascontiguousarray(np.asarray(ds.data, np.uint8).transpose(0, 2, 3, 1))
            labels = np.asarray(ds.labels, dtype=np.int64)
            class_names = list(ds.classes) if source == "stl10" else [str(i) for i in range(10)]
        order = np.argsort(labels, kind="stable")
        images, labels = images[order], labels[order]
        report["found"] += len(labels)
        note_sizes(report, [(images.shape[2], images.shape[1])] * len(labels), image_size)
        images = resize_images(images, image_size)
        sets.append(ImageSet(images, labels, class_names, [""] * len(labels)))
    return sets[0], sets[1]
