"""Preparing a transfer source (params `transfer.sources.NAME`, stages/prepare_transfer.py):
read it once, with the prepare stage's loaders and their checks for bad files, and write its
own tables under data/transfer/NAME/.

    single-label (digits, imagefolder, cifar10/100, svhn, stl10): `load_source`, then
        `write_prepared` -> train.parquet, test.parquet, manifest.json (every class a base
        class, none novel), in the layout `bowflow.data.prepared` reads back;
    multi-label (voc, shapes): `load_box_source` -> train.boxes.parquet, test.boxes.parquet
        (`write_boxes`) and manifest.json (classes, images and positives per class, hash).

Both manifests carry `task` ("single_label" | "multi_label") and the source's params under
`source`; the manifest is written last, so it marks a complete preparation. Nothing here
depends on a run or a seed of training: every transfer stage of every run reads the same
tables.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bowflow.data.boxes import BoxSet, load_box_source, multi_label_targets, write_boxes
from bowflow.data.sources import load_source
from bowflow.data.specs import DataError
from bowflow.data.write import write_prepared
from bowflow.io import write_json
from bowflow.sections import MULTI_LABEL, SINGLE_LABEL, TransferSourceParams

BOX_FILES = {"train": "train.boxes.parquet", "test": "test.boxes.parquet"}


def prepare_transfer_source(out_dir: str | os.PathLike, name: str, spec: TransferSourceParams, seed: int) -> dict:
    """Read source `spec` and write its tables and manifest.json under `out_dir`; -> the manifest.

    `seed` draws the test split of a source without one (digits, a flat image folder) and
    the generated shapes. Bad data raises DataError whose message starts with
    `transfer.sources.NAME` (the key) or names the file."""
    where = f"transfer.sources.{name}"
    info = {**asdict(spec), "seed": seed, "name": name}
    try:
        if spec.multi_label:
            train, test = load_box_source(
                spec.source,
                spec.root,
                spec.image_size,
                seed,
                train_split=spec.train_split,
                test_split=spec.test_split,
                n_train=spec.n_train,
                n_test=spec.n_test,
            )
            return write_multi_label(out_dir, train, test, {**info, "task": MULTI_LABEL}, where)
        train_set, test_set, report = load_source(
            spec.source, spec.root, spec.image_size, spec.test_fraction, seed, spec.download, spec.max_bad_fraction
        )
    except DataError as error:  # the loaders name `data.KEY`: this source's keys are transfer's
        raise DataError(f"{where}: {str(error).replace('data.', f'{where}.')}") from None
    classes = list(train_set.class_names)
    return write_prepared(out_dir, train_set, test_set, classes, [], report, {**info, "task": SINGLE_LABEL})


def write_multi_label(
    out_dir: str | os.PathLike, train: BoxSet, test: BoxSet, source: dict[str, Any], where: str
) -> dict:
    """Write the two box tables and the manifest, after checking that every class has an image
    where it is present (target 1, `multi_label_targets`) in each split: a class without
    positives has no SVM to train or no AP to score."""
    if train.class_names != test.class_names:
        raise DataError(
            f"{where}: the train classes {train.class_names} differ from the test classes {test.class_names}"
        )
    counts = {}
    for split, boxes in (("train", train), ("test", test)):
        targets = multi_label_targets(boxes)  # int8 [N, C]
        positives = (targets == 1).sum(0)
        empty = [c for c, n in zip(boxes.class_names, positives.tolist()) if n == 0]
        if empty:
            raise DataError(
                f"{where}: classes {empty} have no image with a (non-difficult) object in the {split} "
                f"split: every class needs positives to train and score its SVM"
            )
        counts[split] = {
            "images": len(boxes),
            "positives": dict(zip(boxes.class_names, positives.tolist())),
            "difficult_only": dict(zip(boxes.class_names, (targets == 0).sum(0).tolist())),
        }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, boxes in (("train", train), ("test", test)):
        write_boxes(out / BOX_FILES[split], boxes)
    manifest = {
        "task": MULTI_LABEL,
        "source": source,
        "image_size": list(train.images.shape[1:]),
        "class_names": list(train.class_names),
        "counts": counts,
        "totals": {"train": len(train), "test": len(test)},
        "content_hash": boxes_hash(train, test),
        "files": dict(BOX_FILES),
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def boxes_hash(*sets: BoxSet) -> str:
    """sha256 over each set's pixels and VOC07 targets (what the protocol reads of it)."""
    h = hashlib.sha256()
    for s in sets:
        h.update(f"{s.images.shape}".encode())
        h.update(np.ascontiguousarray(s.images).reshape(-1))  # type: ignore[arg-type]  # an ndarray is a buffer
        h.update(np.ascontiguousarray(multi_label_targets(s)).tobytes())
    return "sha256:" + h.hexdigest()
