"""Tests for the prepared data: bowflow.data.write -> Parquet tables and manifest ->
bowflow.data.prepared (round trip, stable manifest, row groups, an empty split)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bowflow.data import write
from bowflow.data.image_set import ImageSet
from bowflow.data.prepared import load_prepared, read_manifest
from bowflow.data.sources import load_source
from bowflow.data.splits import base_novel_split
from bowflow.data.write import write_prepared


def test_parquet_round_trip_and_stable_manifest(tmp_path):
    train, test, report = load_source("digits", image_size=12, test_fraction=0.2, seed=0)
    base, novel = base_novel_split(train.class_names, ["9", "7"])
    manifests = [
        write_prepared(tmp_path / d, train, test, base, novel, report, {"name": "digits"}) for d in ("one", "two")
    ]
    assert manifests[0] == manifests[1]
    assert (tmp_path / "one/manifest.json").read_bytes() == (tmp_path / "two/manifest.json").read_bytes()
    m = read_manifest(tmp_path / "one")
    assert m["image_size"] == [12, 12, 3] and m["novel_classes"] == ["7", "9"]
    assert m["totals"] == {"train": len(train), "test": len(test)}
    assert sum(m["counts"]["test"].values()) == len(test)
    assert m["content_hash"].startswith("sha256:") and "timing" not in m["report"]
    for split, s in (("train", train), ("test", test)):
        d = load_prepared(tmp_path / "one", split)
        assert d["images"].dtype == torch.uint8 and d["images"].is_contiguous()
        assert d["images"].shape == (len(s), 3, 12, 12)
        assert np.array_equal(d["images"].permute(0, 2, 3, 1).numpy(), s.images)
        assert d["labels"].dtype == torch.int64 and np.array_equal(d["labels"].numpy(), s.labels)
        assert d["class_names"] == s.class_names


def test_parquet_many_row_groups_and_empty_split(tmp_path, monkeypatch):
    monkeypatch.setattr(write, "_PARQUET_GROUP_BYTES", 1000)  # ~1 image per group
    rng = np.random.default_rng(0)
    names = ["x", "y", "z"]
    train = ImageSet(
        rng.integers(0, 256, (7, 10, 10, 3), dtype=np.uint8),
        np.array([0, 1, 2, 0, 1, 2, 0]),
        names,
        [f"f{i}" for i in range(7)],
    )
    test = ImageSet(np.zeros((0, 10, 10, 3), np.uint8), np.zeros(0, np.int64), names, [])
    m = write_prepared(tmp_path, train, test, ["x"], ["y", "z"], {"warnings": []}, {})
    assert m["counts"]["test"] == {"x": 0, "y": 0, "z": 0}
    d = load_prepared(tmp_path, "train")
    assert np.array_equal(d["images"].permute(0, 2, 3, 1).numpy(), train.images)
    assert load_prepared(tmp_path, "test")["images"].shape == (0, 3, 10, 10)
    with pytest.raises(ValueError, match="split"):
        load_prepared(tmp_path, "val")
