"""Writing the prepared data: train and test `ImageSet`s -> {train,test}.parquet and
manifest.json, in the layout `bowflow.data.prepared` describes and reads back.

Each image is one binary value of H*W*3 bytes (HWC), in zstd-compressed row groups of
about _PARQUET_GROUP_BYTES, written atomically. The manifest comes last, so it marks a
complete preparation, and leaves out the report's timing, so that the same preparation
writes byte-identical files.

Images of an unlabelled folder (`data.unlabelled`), when given, go to unlabelled.parquet
(label -1, no class name), read only by the self-supervised stages (`prepared.load_ssl_split`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bowflow.data.image_set import ImageSet
from bowflow.data.prepared import FORMAT, SPLITS, UNLABELLED
from bowflow.io import atomic_path, write_json

_PARQUET_GROUP_BYTES = 64 << 20


def content_hash(train: ImageSet, test: ImageSet, unlabelled: ImageSet | None = None) -> str:
    """sha256 over, for train, test (then the unlabelled images, when given): the shape, the
    pixel bytes (HWC), the labels (int64 LE)."""
    h = hashlib.sha256()
    for s in (train, test) if unlabelled is None else (train, test, unlabelled):
        h.update(f"{s.images.shape}".encode())
        h.update(np.ascontiguousarray(s.images).reshape(-1))  # type: ignore[arg-type]  # an ndarray is a buffer
        h.update(np.ascontiguousarray(s.labels, dtype="<i8").tobytes())
    return "sha256:" + h.hexdigest()


def _schema(height: int, width: int, class_names: list[str]) -> pa.Schema:
    meta = {
        "format": FORMAT,
        "height": str(height),
        "width": str(width),
        "channels": "3",
        "class_names": json.dumps(class_names),
    }
    return pa.schema(
        [
            ("pixels", pa.binary()),
            ("label", pa.int32()),
            ("class_name", pa.dictionary(pa.int32(), pa.string())),
            ("path", pa.string()),
        ],
        metadata=meta,
    )


def _write_split(path: Path, s: ImageSet) -> None:
    """One split -> Parquet, in row groups of about _PARQUET_GROUP_BYTES, written atomically."""
    n, h, w, c = s.images.shape
    row_bytes = h * w * c
    flat = np.ascontiguousarray(s.images).reshape(-1)  # [N * H * W * 3]
    schema = _schema(h, w, s.class_names)
    names = pa.array(s.class_names, pa.string())
    rows_per_group = max(1, _PARQUET_GROUP_BYTES // row_bytes)
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=["class_name"]) as writer:
            for a in range(0, n, rows_per_group):
                b = min(a + rows_per_group, n)
                offsets = np.arange(b - a + 1, dtype=np.int32) * row_bytes
                pixels = pa.Array.from_buffers(
                    pa.binary(), b - a, [None, pa.py_buffer(offsets), pa.py_buffer(flat[a * row_bytes : b * row_bytes])]
                )
                labels = s.labels[a:b].astype(np.int32)
                columns = [
                    pixels,
                    pa.array(labels),
                    pa.DictionaryArray.from_arrays(pa.array(labels, mask=labels < 0), names),
                    pa.array(s.paths[a:b], pa.string()),
                ]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def unlabelled_set(images: np.ndarray, paths: list[str]) -> ImageSet:
    """Unlabelled images (uint8 [N, H, W, 3]) as an ImageSet with label -1 and no classes."""
    set_ = ImageSet(images[:0], np.zeros(0, np.int64), [], [])  # validates the pixel layout
    set_.images, set_.labels, set_.paths = images, np.full(len(images), -1, np.int64), list(paths)
    return set_


def write_prepared(
    out_dir: str | os.PathLike,
    train: ImageSet,
    test: ImageSet,
    base: list[str],
    novel: list[str],
    report: dict[str, Any],
    source_info: dict[str, Any],
    unlabelled: ImageSet | None = None,
) -> dict[str, Any]:
    """Write train.parquet, test.parquet (unlabelled.parquet when `unlabelled` images are
    given, see `unlabelled_set`), then manifest.json (last, so it marks completion).

    Returns the manifest. The report's `timing` entry is left out of the manifest so that
    rerunning the same preparation writes byte-identical files.
    """
    if train.class_names != test.class_names:
        raise ValueError("train and test must share one class_names list")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(f"train images {train.images.shape[1:]} vs test images {test.images.shape[1:]}")
    class_names = list(train.class_names)
    if sorted(base + novel) != sorted(class_names) or set(base) & set(novel):
        raise ValueError(f"base {base} and novel {novel} must partition the classes {class_names}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if unlabelled is not None and unlabelled.images.shape[1:] != train.images.shape[1:]:
        raise ValueError(f"unlabelled images {unlabelled.images.shape[1:]} vs train images {train.images.shape[1:]}")
    for split, s in zip(SPLITS, (train, test)):
        _write_split(out_dir / f"{split}.parquet", s)
    stale = out_dir / f"{UNLABELLED}.parquet"
    if unlabelled is not None:
        _write_split(stale, unlabelled)
    else:
        stale.unlink(missing_ok=True)

    k = len(class_names)
    counts = {
        split: dict(zip(class_names, np.bincount(s.labels, minlength=k).tolist()))
        for split, s in zip(SPLITS, (train, test))
    }
    h, w, _ = train.images.shape[1:]
    manifest = {
        "format": FORMAT,
        "source": source_info,
        "image_size": [int(h), int(w), 3],
        "class_names": class_names,
        "base_classes": list(base),
        "novel_classes": list(novel),
        "counts": counts,
        "totals": {
            "train": len(train),
            "test": len(test),
            **({UNLABELLED: len(unlabelled)} if unlabelled is not None else {}),
        },
        "content_hash": content_hash(train, test, unlabelled),
        "files": {split: f"{split}.parquet" for split in SPLITS + ((UNLABELLED,) if unlabelled is not None else ())},
        "report": {key: value for key, value in report.items() if key != "timing"},
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest
