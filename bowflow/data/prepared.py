"""Reading the prepared data back: all that the stages after prepare import of bowflow.data,
so that an edit to a source, the decoder or the writer reruns only prepare (and the stages
whose input its output changes).

Prepared layout (written by `bowflow.data.write.write_prepared`):

    <dir>/train.parquet, test.parquet   columns: pixels (binary, H*W*3 bytes, HWC),
                                        label (int32), class_name (dictionary string),
                                        path (string); metadata: format (FORMAT),
                                        height, width, channels, class_names (JSON)
    <dir>/unlabelled.parquet            only with data.unlabelled: its images, label -1,
                                        no class name (self-supervised stages only)
    <dir>/manifest.json                 classes, base/novel split, counts, hash, report,
                                        and the data parameters (`source`)

Readers: `load_prepared` (one split -> uint8 images [N, 3, H, W], int64 labels [N], class
names), `read_manifest`, and the rows a stage trains on: `load_ssl_split` /
`load_ssl_images` (the images self-supervised stages train on: the labelled rows
`ssl_rows` allows and/or the unlabelled images, by data.unlabelled_use) and
`load_labelled_split` (every class, for supervised teachers and distillation).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from bowflow.io import read_json

SPLITS = ("train", "test")
UNLABELLED = "unlabelled"  # the table of data.unlabelled's images
FORMAT = "bowflow-prepared-v1"


def read_manifest(prepared_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(prepared_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest.json in '{prepared_dir}': run the prepare stage first")
    return read_json(path)


def load_prepared(prepared_dir: str | os.PathLike, split: str) -> dict[str, Any]:
    """Read one prepared split -> {images: uint8 [N, 3, H, W], labels: int64 [N], class_names}.

    Pixels are decoded chunk by chunk straight from the Parquet binary column's data
    buffer (one np.frombuffer per chunk, no per-row Python work) into a preallocated
    channels-first array.
    """
    import torch

    if split not in SPLITS + (UNLABELLED,):
        raise ValueError(f"split must be one of {SPLITS + (UNLABELLED,)}, got {split!r}")
    path = Path(prepared_dir) / f"{split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no {split}.parquet in '{prepared_dir}': run the prepare stage first")
    table = pq.read_table(path, columns=["pixels", "label"])
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a {FORMAT} table (format={meta.get('format')!r})")
    h, w, c = int(meta["height"]), int(meta["width"]), int(meta["channels"])
    row_bytes = h * w * c

    images = np.empty((table.num_rows, c, h, w), dtype=np.uint8)  # [N, 3, H, W]
    start = 0
    for chunk in table.column("pixels").chunks:
        m = len(chunk)
        if m == 0:
            continue
        if chunk.null_count:
            raise ValueError(f"'{path}': null pixels")
        _, offset_buf, data_buf = chunk.buffers()
        offsets = np.frombuffer(offset_buf, dtype=np.int32)[chunk.offset : chunk.offset + m + 1]
        if not np.all(np.diff(offsets) == row_bytes):
            raise ValueError(f"'{path}': every pixels value must hold {row_bytes} bytes")
        data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]]
        images[start : start + m] = data.reshape(m, h, w, c).transpose(0, 3, 1, 2)
        start += m
    labels = table.column("label").to_numpy().astype(np.int64)
    return {
        "images": torch.from_numpy(images),
        "labels": torch.from_numpy(labels),
        "class_names": json.loads(meta["class_names"]),
    }


def ssl_rows(labels: torch.Tensor, manifest: dict) -> torch.Tensor:
    """Rows of the train split that self-supervised stages may use, in a fixed order.

    The data parameters recorded in the manifest decide: `ssl_classes` is 'base' (the
    few-shot protocol: novel classes are never seen) or 'all'; `ssl_max_images` > 0 keeps
    a seeded random subset.
    """
    source = manifest["source"]
    names = manifest["class_names"]
    allowed = manifest["base_classes"] if source["ssl_classes"] == "base" else names
    allowed_ids = torch.tensor([names.index(c) for c in allowed])
    rows = torch.nonzero(torch.isin(labels, allowed_ids)).flatten()
    return rows[capped_rows(len(rows), manifest)]


def capped_rows(n: int, manifest: dict) -> torch.Tensor:
    """Positions kept of an SSL pool of n images: all, or with `ssl_max_images` > 0 a
    seeded random subset of that many, in their order."""
    source = manifest["source"]
    limit = source["ssl_max_images"]
    if 0 < limit < n:
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(source["seed"]))[:limit]
        return keep.sort().values
    return torch.arange(n)


def ssl_pool(manifest: dict) -> str:
    """What self-supervised stages train on: 'labelled' (train rows of data.ssl_classes),
    'unlabelled' (data.unlabelled's images only) or 'both' (data.unlabelled_use: add)."""
    if not manifest.get("totals", {}).get(UNLABELLED):
        return "labelled"
    return "both" if manifest["source"].get("unlabelled_use") == "add" else UNLABELLED


def load_ssl_split(prepared: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """-> (uint8 images [N_ssl, 3, H, W], labels [N_ssl] int64, manifest): the images
    self-supervised stages train on (`ssl_pool`): the train-split rows `ssl_rows` allows,
    or the unlabelled images (label -1), or the first then the second, capped at
    ssl_max_images as one pool."""
    manifest = read_manifest(prepared)
    pool = ssl_pool(manifest)
    if pool == "labelled":
        train = load_prepared(prepared, "train")
        rows = ssl_rows(train["labels"], manifest)
        return train["images"][rows].contiguous(), train["labels"][rows].contiguous(), manifest
    parts = [load_prepared(prepared, UNLABELLED)]
    if pool == "both":
        train = load_prepared(prepared, "train")
        rows = ssl_rows(train["labels"], {**manifest, "source": {**manifest["source"], "ssl_max_images": 0}})
        parts.insert(0, {"images": train["images"][rows], "labels": train["labels"][rows]})
    images = torch.cat([p["images"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    keep = capped_rows(len(labels), manifest)
    return images[keep].contiguous(), labels[keep].contiguous(), manifest


def load_labelled_split(
    prepared: str | Path, split: str = "train", max_images: int = 0
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """-> (uint8 images [N, 3, H, W], labels [N] int64, manifest): the rows of `split`, all
    classes (supervised teachers and distillation train on train and score on test);
    `max_images` > 0 keeps a subset drawn with the data seed (the same for every run)."""
    data = load_prepared(prepared, split)
    manifest = read_manifest(prepared)
    images, labels = data["images"], data["labels"]
    if 0 < max_images < len(labels):
        generator = torch.Generator().manual_seed(manifest["source"]["seed"])
        rows = torch.randperm(len(labels), generator=generator)[:max_images].sort().values
        images, labels = images[rows].contiguous(), labels[rows].contiguous()
    return images, labels, manifest


def load_ssl_images(prepared: str | Path) -> tuple[torch.Tensor, dict]:
    """-> (uint8 images [N_ssl, 3, H, W], manifest)."""
    images, _, manifest = load_ssl_split(prepared)
    return images, manifest
