"""Tests for the data sources (bowflow.data.sources, image_folder, scan, decode, resize):
digits, image folders and tarballs, bad input, the process pool."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bowflow.data import decode
from bowflow.data.sources import load_source

REAL_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Keep tarball extractions inside the test's temporary folder."""
    monkeypatch.setenv("BOWFLOW_CACHE", str(tmp_path / "cache"))


def _save(path: Path, size=(16, 16), mode="RGB", color=(200, 30, 30), fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)


def _split_tree(root: Path) -> Path:
    """train/{cat,dog,empty} + test/{cat,dog,empty}: 2 usable classes, 1 corrupt file, 1 odd size."""
    _save(root / "train/cat/a.png")
    _save(root / "train/cat/b.jpg")
    _save(root / "train/cat/c.PNG")
    _save(root / "train/cat/gray.png", mode="L", color=90)
    _save(root / "train/cat/wide.png", size=(24, 12))  # resized (crop + resize)
    (root / "train/cat/broken.jpg").write_bytes(b"not an image at all")
    (root / "train/cat/notes.txt").write_text("ignored")
    _save(root / "train/dog/a.png", color=(10, 10, 240))
    _save(root / "train/dog/b.png", color=(10, 10, 240))
    _save(root / "train/dog/p.png", mode="P", color=3)  # palette
    _save(root / "train/dog/t.png", mode="RGBA", color=(0, 0, 0, 0))  # fully transparent
    (root / "train/empty").mkdir(parents=True)
    _save(root / "test/cat/a.png")
    _save(root / "test/cat/b.jpg")
    _save(root / "test/dog/a.png", color=(10, 10, 240))
    (root / "test/empty").mkdir(parents=True)
    return root


def _class_tree(root: Path, classes=("a", "b", "c"), per_class=10) -> Path:
    for k, name in enumerate(classes):
        for i in range(per_class):
            _save(root / name / f"{i:03d}.png", color=(20 * k, 7 * i, 100))
    return root


# --------------------------------------------------------------------------------------
# digits


def test_digits_counts_split_and_shape():
    train, test, report = load_source("digits", image_size=16, test_fraction=0.2, seed=0)
    assert len(train) + len(test) == 1797
    assert train.class_names == test.class_names == [str(i) for i in range(10)]
    assert train.images.shape[1:] == (16, 16, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64 and train.paths[0] == ""
    assert np.array_equal(train.images[..., 0], train.images[..., 2])  # gray replicated
    assert train.images.max() == 255
    # Stratified: each class contributes round(n_c * 0.2) test images.
    per_class = np.bincount(np.concatenate([train.labels, test.labels]), minlength=10)
    assert np.array_equal(np.bincount(test.labels, minlength=10), np.floor(per_class * 0.2 + 0.5))
    assert report["found"] == 1797 and report["resized"] == 1797
    assert report["loaded"] == {"train": len(train), "test": len(test)}


def test_digits_deterministic_per_seed():
    a_train, _, _ = load_source("digits", image_size=8, test_fraction=0.25, seed=3)
    b_train, _, report = load_source("digits", image_size=8, test_fraction=0.25, seed=3)
    c_train, _, _ = load_source("digits", image_size=8, test_fraction=0.25, seed=4)
    assert np.array_equal(a_train.images, b_train.images)
    assert np.array_equal(a_train.labels, b_train.labels)
    assert not np.array_equal(a_train.images, c_train.images)
    assert report["resized"] == 0


# --------------------------------------------------------------------------------------
# imagefolder


def test_imagefolder_train_test_layout(tmp_path, capsys):
    root = _split_tree(tmp_path / "data")
    train, test, report = load_source("imagefolder", str(root), image_size=16, max_bad_fraction=0.5)
    assert train.class_names == test.class_names == ["cat", "dog"]  # "empty" dropped
    assert np.bincount(train.labels).tolist() == [5, 4]  # broken.jpg skipped
    assert np.bincount(test.labels).tolist() == [2, 1]
    assert train.images.shape == (9, 16, 16, 3)
    assert report["found"] == 13 and report["resized"] == 1
    assert report["skipped"][0]["path"] == "train/cat/broken.jpg"
    assert "broken.jpg" in capsys.readouterr().err
    warnings = "\n".join(report["warnings"])
    assert "empty" in warnings and "dropped" in warnings
    gray = train.images[train.paths.index("train/cat/gray.png")]
    assert (gray == 90).all()  # L -> RGB
    clear = train.images[train.paths.index("train/dog/t.png")]
    assert (clear == 255).all()  # alpha over white
    assert train.paths[:2] == ["train/cat/a.png", "train/cat/b.jpg"]


def test_imagefolder_too_many_bad_files(tmp_path):
    root = _split_tree(tmp_path / "data")
    with pytest.raises(ValueError, match=r"1 of 13 .*broken\.jpg"):
        load_source("imagefolder", str(root), image_size=16, max_bad_fraction=0.05)


def test_imagefolder_class_missing_from_test_is_kept(tmp_path):
    root = _split_tree(tmp_path / "data")
    for f in (root / "test/dog").iterdir():
        f.unlink()
    train, test, report = load_source("imagefolder", str(root), image_size=16, max_bad_fraction=0.5)
    assert train.class_names == ["cat", "dog"] and np.bincount(test.labels).tolist() == [2]
    assert any("'dog'" in w and "none in test" in w for w in report["warnings"])


def test_imagefolder_class_folders_split(tmp_path):
    root = _class_tree(tmp_path / "flat")
    train, test, report = load_source("imagefolder", str(root), image_size=8, test_fraction=0.3, seed=1)
    assert train.class_names == ["a", "b", "c"]
    assert np.bincount(test.labels).tolist() == [3, 3, 3]
    assert len(train) == 21 and report["resized"] == 30
    again, _, _ = load_source("imagefolder", str(root), image_size=8, test_fraction=0.3, seed=1)
    assert again.paths == train.paths and train.paths[0].startswith("a/")


def test_imagefolder_process_pool_matches_serial(tmp_path, monkeypatch):
    root = _class_tree(tmp_path / "flat", per_class=6)
    serial, _, _ = load_source("imagefolder", str(root), image_size=8, test_fraction=0.5)
    monkeypatch.setattr(decode, "_MIN_FILES_FOR_POOL", 0)
    monkeypatch.setattr(decode, "_DECODE_CHUNK", 4)
    pooled, _, _ = load_source("imagefolder", str(root), image_size=8, test_fraction=0.5)
    assert np.array_equal(serial.images, pooled.images) and serial.paths == pooled.paths


def test_imagefolder_tarball(tmp_path):
    root = _split_tree(tmp_path / "tree" / "mydata")
    tarball = tmp_path / "mydata.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(root, arcname="mydata")  # one top-level folder
    from_dir = load_source("imagefolder", str(root), image_size=16, max_bad_fraction=0.5)
    from_tar = load_source("imagefolder", str(tarball), image_size=16, max_bad_fraction=0.5)
    for a, b in zip(from_dir[:2], from_tar[:2]):
        assert np.array_equal(a.images, b.images) and a.paths == b.paths
    extracted = Path(from_tar[2]["extracted_to"])
    assert extracted.name == "mydata" and extracted.is_relative_to(tmp_path / "cache")
    entries = list((tmp_path / "cache" / "extracted").iterdir())
    load_source("imagefolder", str(tarball), image_size=16, max_bad_fraction=0.5)  # cached
    assert list((tmp_path / "cache" / "extracted").iterdir()) == entries and len(entries) == 1


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ValueError, match="data.root"):
        load_source("imagefolder", "")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_source("imagefolder", str(tmp_path / "nowhere"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no class folders"):
        load_source("imagefolder", str(tmp_path / "flat"))
    (tmp_path / "flat" / "cls").mkdir()
    (tmp_path / "flat" / "cls" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        load_source("imagefolder", str(tmp_path / "flat"))


@pytest.mark.parametrize("size", [0, -4, 3.5, "32", True])
def test_bad_image_size(size):
    with pytest.raises(ValueError, match="image_size"):
        load_source("digits", image_size=size)


def test_unknown_source_lists_valid_ones():
    with pytest.raises(ValueError, match="imagefolder.*cifar10"):
        load_source("mnist")


def test_cifar10_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.download: true") as info:
        load_source("cifar10", str(tmp_path / "empty"), download=False)
    assert str(tmp_path / "empty") in str(info.value) and "data.root" in str(info.value)


# --------------------------------------------------------------------------------------
# Real data (optional): a slice of the CIFAR-10 JPEG tarball beside the repository


@pytest.mark.skipif(not REAL_TARBALL.is_file(), reason=f"{REAL_TARBALL} not present")
def test_real_cifar10_tarball_slice(tmp_path):
    """Stream the first 20 test images of the first two classes out of the real tarball."""
    root = tmp_path / "slice"
    taken: dict[str, int] = {}
    with tarfile.open(REAL_TARBALL, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile():
                continue
            assert len(parts) == 4 and parts[0] == "cifar10-jpeg" and parts[1] in ("train", "test")
            cls = parts[2]
            if cls not in taken and len(taken) == 2:
                break
            if taken.get(cls, 0) < 20:
                taken[cls] = taken.get(cls, 0) + 1
                (root / cls).mkdir(parents=True, exist_ok=True)
                (root / cls / parts[3]).write_bytes(tar.extractfile(member).read())
    train, test, report = load_source("imagefolder", str(root), image_size=32, test_fraction=0.25)
    assert train.class_names == sorted(taken) and len(train) + len(test) == 40
    assert report["resized"] == 0 and report["skipped"] == []
