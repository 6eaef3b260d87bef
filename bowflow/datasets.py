"""The "prepare" stage library: data source -> ImageSets -> Parquet tables -> tensors.

Sources (see `load_source`):

    digits       scikit-learn's 1797 8x8 digits, embedded, no download (the default)
    imagefolder  a folder or a .tar.gz of one folder per class, with or without
                 train/ and test/ folders above them (the CIFAR-10 JPEG tarball layout)
    cifar10, cifar100, svhn, stl10
                 torchvision datasets, official train/test splits

Every image comes out as uint8 RGB, size x size, channels last: [N, H, W, 3].

Image policy (imagefolder; the array sources use the same resize):
    - grayscale, palette, CMYK, ... are converted to RGB; images with transparency
      are composited onto a white background first;
    - an image that is not size x size is centre-cropped to a square (side = its
      shorter edge) and resized with PIL bilinear filtering. Cropping keeps the aspect
      ratio (no stretching) at the cost of the borders of non-square images;
    - a large JPEG is decoded at a reduced scale (libjpeg "draft" mode), never below
      twice the target size, before the bilinear resize: much faster for photos;
    - hidden files and folders (".name", "__MACOSX") are ignored; non-image files in
      class folders and unreadable images are skipped and listed in the report;
    - class and file names are kept as text: NFC-normalised (so a folder name written
      in NFD, as macOS does, matches the same name typed in params.yaml), bytes that are
      not UTF-8 shown as backslash escapes.

Bad input (a root that is missing or not a folder/tarball, a corrupt tarball, too few
classes, unknown novel classes, too many unreadable files...) raises `DataError`, whose
message names the parameter (`data.root`, `data.novel_classes`, ...) or the file and what
was expected; `stages.prepare` prints it as one line, without a traceback. Files that
can be skipped (unreadable, truncated or empty images, non-image files inside class
folders) are listed by name in the report's `skipped` entry, with the reason.

Prepared layout (see `write_prepared`):

    <out_dir>/train.parquet, test.parquet   columns: pixels (binary, H*W*3 bytes, HWC),
                                            label (int32), class_name (dictionary string),
                                            path (string)
    <out_dir>/manifest.json                 classes, base/novel split, counts, hash, report
"""
from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing as mp
import numbers
import os
import shutil
import sys
import tarfile
import tempfile
import time
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from bowflow.io import atomic_path, read_json, write_json

SOURCES = ("digits", "imagefolder", "cifar10", "cifar100", "svhn", "stl10")   # the one list; config imports it
DIGITS_CLASSES = [str(i) for i in range(10)]
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
RESIZE_POLICY = "centre crop to square (shorter edge), then PIL bilinear resize"
FORMAT = "bowflow-prepared-v1"

_DECODE_CHUNK = 256         # files per pool task (and per progress-bar update)
_MIN_FILES_FOR_POOL = 1000  # below this, decoding in-process is faster than starting workers
_MAX_LISTED = 5             # bad files named in an error message / printed as warnings
_PARQUET_GROUP_BYTES = 64 << 20


class DataError(ValueError):
    """Bad data or data parameters; the message names the key or file and what was expected."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data root (or the files a source needs) does not exist."""


@dataclass
class ImageSet:
    """One split of a dataset, held in memory.

    images:      uint8 [N, H, W, 3], RGB, channels last
    labels:      int64 [N], indices into class_names
    class_names: the dataset's full, sorted class list (the same for train and test)
    paths:       N source file names relative to the data root ("" for in-memory sources)
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    paths: list[str]

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {self.images.dtype} {self.images.shape}")
        if self.images.shape[0] != n or len(self.paths) != n:
            raise ValueError(f"{self.images.shape[0]} images, {n} labels, {len(self.paths)} paths")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)})")

    def __len__(self) -> int:
        return len(self.labels)


# --------------------------------------------------------------------------------------
# Entry point


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
        raise DataError(f"data.root: source {source!r} needs a data root: set `data.root` to a folder "
                        f"(or, for imagefolder, a .tar.gz)")
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
        _check_fraction("test_fraction", test_fraction, open_interval=True)
        train, test = _load_digits(int(image_size), test_fraction, seed, report)
    elif source == "imagefolder":
        _check_fraction("max_bad_fraction", max_bad_fraction, open_interval=False)
        train, test = _load_imagefolder(Path(root), int(image_size), test_fraction, seed,
                                        max_bad_fraction, report, novel_classes)
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


def _check_fraction(name: str, value: Any, open_interval: bool) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        ok = 0 < value < 1 if open_interval else 0 <= value <= 1
    if not ok:
        bounds = "strictly between 0 and 1" if open_interval else "between 0 and 1"
        raise DataError(f"data.{name}: expected a number {bounds}, got {value!r}")


def _warn(report: dict[str, Any], message: str) -> None:
    """Record a warning in the report and print it to stderr (unless report["quiet"])."""
    report["warnings"].append(message)
    if not report.get("quiet"):
        print(f"warning: {message}", file=sys.stderr)


def _warn_missing_classes(train: ImageSet, test: ImageSet, report: dict[str, Any]) -> None:
    """Warn about classes present in one split only (they are kept)."""
    k = len(train.class_names)
    n_train = np.bincount(train.labels, minlength=k)
    n_test = np.bincount(test.labels, minlength=k)
    for name, a, b in zip(train.class_names, n_train, n_test):
        if a and not b:
            _warn(report, f"class {name!r} has {a} train images but none in test; kept")
        elif b and not a:
            _warn(report, f"class {name!r} has {b} test images but none in train; kept, "
                          "but no model will see it during training")


# --------------------------------------------------------------------------------------
# Shared helpers: splitting and resizing


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices per class: round(n_c * test_fraction) test rows for a class of n_c.

    Each class with at least 2 rows gets at least 1 test row and keeps at least 1
    training row. Deterministic for a given seed. labels: int [N].
    Returns (train_idx, test_idx), both sorted int64 arrays that partition range(N).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test_parts = [np.zeros(0, dtype=np.int64)]
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n = len(rows)
        n_test = int(np.floor(n * test_fraction + 0.5))
        n_test = min(max(n_test, 1 if n >= 2 else 0), n - 1)
        test_parts.append(rng.permutation(rows)[:n_test])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test_parts)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _fit_square(im: Image.Image, size: int) -> Image.Image:
    """Centre-crop `im` to a square of its shorter edge and bilinear-resize it to size^2."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 [N, h, w] or [N, h, w, 3] to [N, size, size, (3)] with `_fit_square`."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size) + images.shape[3:], dtype=np.uint8)
    for i in tqdm(range(len(images)), desc="resize", unit="img", mininterval=0.5,
                  disable=len(images) < 5000):
        out[i] = np.asarray(_fit_square(Image.fromarray(images[i]), size))
    return out


def _note_sizes(report: dict[str, Any], sizes: Sequence[tuple[int, int]], image_size: int) -> None:
    """Count images whose source size is not image_size^2 and keep a size histogram."""
    counts: dict[str, int] = {}
    for w, h in sizes:
        key = f"{w}x{h}"
        counts[key] = counts.get(key, 0) + 1
    report["resized"] += sum(n for key, n in counts.items() if key != f"{image_size}x{image_size}")
    for key, n in counts.items():
        report["source_sizes"][key] = report["source_sizes"].get(key, 0) + n
    top = sorted(report["source_sizes"].items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    report["source_sizes"] = dict(top)


# --------------------------------------------------------------------------------------
# digits (embedded)


def _load_digits(image_size: int, test_fraction: float, seed: int,
                 report: dict[str, Any]) -> tuple[ImageSet, ImageSet]:
    """scikit-learn digits: [1797, 8, 8] values 0..16 -> uint8, resized, 3 channels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)   # [N, 8, 8]
    gray = resize_images(gray, image_size)                               # [N, S, S]
    images = np.repeat(gray[..., None], 3, axis=-1)                      # [N, S, S, 3]
    labels = digits.target.astype(np.int64)
    class_names = list(DIGITS_CLASSES)
    report["layout"] = "embedded, split by test_fraction"
    report["found"] = len(labels)
    _note_sizes(report, [(8, 8)] * len(labels), image_size)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    paths = [""] * len(labels)
    return (ImageSet(images[train_idx], labels[train_idx], class_names, [paths[i] for i in train_idx]),
            ImageSet(images[test_idx], labels[test_idx], class_names, [paths[i] for i in test_idx]))


# --------------------------------------------------------------------------------------
# torchvision datasets


def _load_torchvision(source: str, root: Path, image_size: int, download: bool,
                      report: dict[str, Any]) -> tuple[ImageSet, ImageSet]:
    """Official train/test splits of a torchvision dataset, as [N, S, S, 3] uint8."""
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
                raise DataError(f"data.root: {source} could not be downloaded into or read from "
                                f"'{root}' ({e}); expected a writable folder, online") from e
            raise DataNotFoundError(
                f"data.root: {source}: no usable copy under data root '{root}' ({e}). Set `data.download: true` "
                f"to download it there, or point `data.root` at a folder holding a local copy."
            ) from e
        except OSError as e:  # network failures surface as URLError, an OSError
            raise DataError(f"data.download: {source}: downloading into '{root}' failed: {e}") from e
        if source in ("cifar10", "cifar100"):
            images = np.asarray(ds.data, dtype=np.uint8)                          # [N, 32, 32, 3]
            labels = np.asarray(ds.targets, dtype=np.int64)
            class_names = list(ds.classes)
        else:
            images = np.ascontiguousarray(np.asarray(ds.data, np.uint8).transpose(0, 2, 3, 1))
            labels = np.asarray(ds.labels, dtype=np.int64)
            class_names = list(ds.classes) if source == "stl10" else [str(i) for i in range(10)]
        report["found"] += len(labels)
        _note_sizes(report, [(images.shape[2], images.shape[1])] * len(labels), image_size)
        images = resize_images(images, image_size)
        sets.append(ImageSet(images, labels, class_names, [""] * len(labels)))
    return sets[0], sets[1]


# --------------------------------------------------------------------------------------
# imagefolder: locate the tree


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _shown(name: str) -> str:
    """A file or folder name as text: NFC-normalised, undecodable bytes as backslash escapes.

    Names come from the file system as str with surrogate escapes for bytes that are not
    UTF-8; those cannot go into Parquet or JSON as they are.
    """
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return unicodedata.normalize("NFC", text)


def cache_dir() -> Path:
    """Where tarballs are extracted: $BOWFLOW_CACHE, else ~/.cache/bowflow."""
    return Path(os.environ.get("BOWFLOW_CACHE") or Path.home() / ".cache" / "bowflow")


def extract_tarball(tarball: Path) -> Path:
    """Extract `tarball` once into the cache and return the folder holding the data.

    The cache entry is keyed by the tarball's name, size and mtime, so a changed file is
    extracted afresh. Extraction goes to a temporary folder renamed into place, so an
    interrupted run (or a corrupt archive, reported as `DataError`) leaves no
    half-extracted entry. If the archive holds a single top-level folder with
    sub-folders, that folder is returned.
    """
    st = tarball.stat()
    stem = tarball.name
    for suffix in TARBALL_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    parent = cache_dir() / "extracted"
    final = parent / f"{stem}-{st.st_size}-{st.st_mtime_ns}"
    if not final.is_dir():
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".tmp", dir=parent))
        try:
            print(f"extracting {tarball} to {final} (once)", file=sys.stderr)
            try:
                with tarfile.open(tarball) as tar:
                    members = tqdm(tar, desc="extract", unit="file", mininterval=0.5)
                    if hasattr(tarfile, "data_filter"):  # rejects absolute paths and links out
                        tar.extractall(tmp, members=members, filter="data")
                    else:
                        tar.extractall(tmp, members=members)
            except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
                detail = " ".join(str(e).split())   # one line, even for tarfile's list of methods
                raise DataError(f"data.root: '{tarball}' is not a readable tar archive "
                                f"({type(e).__name__}: {detail}); expected a complete .tar.gz, .tgz or "
                                f".tar of class folders") from None
            try:
                os.rename(tmp, final)
            except OSError:  # another process got there first
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _single_top_folder(final) or final


def _single_top_folder(folder: Path) -> Path | None:
    """The only entry of `folder` when that is a folder holding sub-folders, else None."""
    entries = [p for p in folder.iterdir() if not _is_hidden(p.name)]
    if len(entries) == 1 and entries[0].is_dir() and _subdirs(entries[0]):
        return entries[0]
    return None


def _is_tarball(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(TARBALL_SUFFIXES)


def _class_files(folder: Path, data_root: Path) -> tuple[list[str], list[str]]:
    """Files anywhere under `folder` as sorted POSIX paths relative to `data_root`:
    (image files, other files). Hidden names are skipped.

    Plain strings, not Path objects: this runs on 60,000 files.
    """
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        rel_dir = Path(dirpath).relative_to(data_root).as_posix()
        for name in sorted(filenames):
            if not _is_hidden(name):
                (images if name.lower().endswith(IMAGE_EXTENSIONS) else others).append(f"{rel_dir}/{name}")
    return images, others


def _loose_images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir()
               if p.is_file() and not _is_hidden(p.name) and p.name.lower().endswith(IMAGE_EXTENSIONS))


def _scan_tree(data_root: Path, report: dict[str, Any]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """List (split, class, path relative to data_root) per image, and all class names.

    split is "train" or "test" for the train/test layout, "all" when the caller must split.
    Class names are the folder names as text (see `_shown`); paths keep the raw names.
    Non-image files inside class folders go to report["skipped"] (not counted as bad).
    """
    folders = _subdirs(data_root)
    names = [p.name for p in folders]
    if not folders:
        raise DataError(
            f"data.root: no class folders under '{data_root}': expected train/ and test/ folders "
            f"holding one folder per class, or one folder per class")
    if "train" in names and "test" in names:
        report["layout"] = "train/ and test/ folders"
        splits = {"train": data_root / "train", "test": data_root / "test"}
        others = [n for n in names if n not in splits]
        if others:
            _warn(report, f"ignoring folder(s) {[_shown(n) for n in others]} under '{data_root}' "
                          "(only train/ and test/ are read)")
    elif "train" in names:
        _warn(report, f"'{data_root}' has train/ but no test/: splitting train/ by test_fraction")
        report["layout"] = "train/ folder, split by test_fraction"
        splits = {"all": data_root / "train"}
    else:
        report["layout"] = "class folders, split by test_fraction"
        splits = {"all": data_root}

    entries = []
    not_images: list[str] = []
    class_names: set[str] = set()
    for split, split_dir in splits.items():
        class_dirs = _subdirs(split_dir)
        if not class_dirs:
            raise DataError(f"data.root: no class folders under '{split_dir}': expected one folder per class")
        loose = _loose_images(split_dir)
        if loose:
            _warn(report, f"ignoring {loose} image file(s) directly in '{split_dir}': "
                          "images must sit in one folder per class")
        for class_dir in class_dirs:
            name = _shown(class_dir.name)
            class_names.add(name)
            files, others = _class_files(class_dir, data_root)
            not_images += others
            if not files:
                _warn(report, f"empty class folder '{class_dir}' (no image files): skipped")
            entries += [(split, name, f) for f in files]
    if not_images:
        report["skipped"] += [{"path": _shown(p), "reason": "not an image file (expected one of "
                                                             f"{', '.join(IMAGE_EXTENSIONS)})"}
                              for p in not_images]
        _warn(report, f"skipped {len(not_images)} non-image file(s) in class folders, e.g. "
                      f"'{_shown(not_images[0])}' (listed in the report)")
    if not entries:
        raise DataError(f"data.root: no image files ({', '.join(IMAGE_EXTENSIONS)}) found under "
                        f"'{data_root}'")
    return entries, sorted(class_names)


def _class_counts(entries: list[tuple[str, str, str]], class_names: list[str]) -> dict[str, int]:
    """Image files per class name, both splits together (0 for an empty class folder)."""
    counts = dict.fromkeys(class_names, 0)
    for _, name, _ in entries:
        counts[name] += 1
    return counts


def check_novel_classes(novel_classes: Sequence[str], counts: dict[str, int], data_root: Path) -> None:
    """Before decoding: enough classes with image files, and every novel class has some.

    counts: image files per class folder name (see `count_class_images`).
    """
    with_images = sorted(name for name, n in counts.items() if n)
    if len(with_images) < 3:
        raise DataError(f"data.root: only {len(with_images)} class folder(s) with images under "
                        f"'{data_root}' ({with_images}): expected at least 3, 1 base class and "
                        f"the 2 or more novel classes of data.novel_classes")
    novel = [unicodedata.normalize("NFC", c) if isinstance(c, str) else c for c in novel_classes]
    unknown = [c for c in novel if c not in counts]
    if unknown:
        raise DataError(f"data.novel_classes: {unknown} not found under '{data_root}': expected "
                        f"names of its class folders {sorted(counts)}")
    empty = [c for c in novel if not counts[c]]
    if empty:
        raise DataError(f"data.novel_classes: class folder(s) {empty} under '{data_root}' hold no "
                        f"image files: expected images of every novel class")


def count_class_images(root: str | os.PathLike) -> tuple[Path, dict[str, int]] | None:
    """(folder read, image files per class over both splits) of an image-folder root,
    without decoding anything; None when root is not a folder (a tarball is only opened
    by the prepare stage). Lets the check_params stage check class names and few-shot
    sizes before any work. Raises DataError when the folder holds no class folders.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    inner = _single_top_folder(root)
    data_root = inner if inner is not None and inner.name not in SPLITS else root
    report = {"warnings": [], "skipped": [], "quiet": True}
    entries, class_names = _scan_tree(data_root, report)
    return data_root, _class_counts(entries, class_names)


# --------------------------------------------------------------------------------------
# imagefolder: decode


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels are composited onto white.

    16-bit grayscale (I;16*, and 16-bit PNGs that older Pillow opens as mode I) keeps the
    high byte; 32-bit float images are taken to lie in [0, 1].
    """
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode == "I":
        im = Image.fromarray((np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8))
    elif im.mode == "F":
        im = Image.fromarray(np.round(np.clip(np.asarray(im, dtype=np.float64), 0, 1) * 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _decode_image(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read one image file -> (uint8 [size, size, 3], its source (width, height))."""
    with Image.open(path) as im:
        source_size = im.size
        if im.format == "JPEG":
            im.draft(None, (2 * size, 2 * size))  # DCT-domain downscale, never below 2x target
        im.load()
        return np.asarray(_fit_square(_to_rgb(im), size), dtype=np.uint8), source_size


def _unreadable_reason(path: str, error: Exception) -> str:
    """Why a file could not be decoded, in words (no absolute paths)."""
    try:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    if isinstance(error, PermissionError):
        return "permission denied (not readable by this user)"
    if isinstance(error, FileNotFoundError):
        return "file not found (a broken link?)"
    if isinstance(error, UnidentifiedImageError):
        return "not an image PIL can read (wrong extension or damaged header)"
    return f"{type(error).__name__}: {error}"


def _decode_chunk(task: tuple[list[str], int]) -> tuple[np.ndarray, list, list]:
    """Decode a list of files -> (uint8 [n, S, S, 3] with zeros for failures, sizes, errors)."""
    paths, size = task
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    sizes: list[tuple[int, int] | None] = []
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            out[i], source_size = _decode_image(path, size)
            sizes.append(source_size)
            errors.append(None)
        except Exception as e:  # any failure means "unreadable": report it, move on
            sizes.append(None)
            errors.append(_unreadable_reason(path, e))
    return out, sizes, errors


def _num_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _decode_files(files: list[str], size: int) -> tuple[np.ndarray, list, list, int]:
    """Decode all files with a process pool -> (uint8 [N, S, S, 3], sizes, errors, workers).

    Failed rows stay zero and have an error string. Work goes out in chunks of
    _DECODE_CHUNK files; results come back in order. On Linux the pool forks (cheap
    start, nothing to re-import); elsewhere it uses the platform default.
    """
    tasks = [(files[i:i + _DECODE_CHUNK], size)
             for i in range(0, len(files), _DECODE_CHUNK)]
    workers = min(_num_workers(), len(tasks))
    if len(files) < _MIN_FILES_FOR_POOL:
        workers = 1
    pixels = np.empty((len(files), size, size, 3), dtype=np.uint8)
    sizes: list = []
    errors: list = []

    def collect(results) -> None:
        with tqdm(total=len(files), desc="decode", unit="img", mininterval=0.5) as bar:
            for out, chunk_sizes, chunk_errors in results:
                pixels[len(sizes):len(sizes) + len(out)] = out
                sizes.extend(chunk_sizes)
                errors.extend(chunk_errors)
                bar.update(len(out))

    if workers <= 1:
        collect(map(_decode_chunk, tasks))
    else:
        ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context()
        with ctx.Pool(workers) as pool:
            collect(pool.imap(_decode_chunk, tasks))
    return pixels, sizes, errors, workers


def _load_imagefolder(root: Path, image_size: int, test_fraction: float, seed: int,
                      max_bad_fraction: float, report: dict[str, Any],
                      novel_classes: Sequence[str] | None = None) -> tuple[ImageSet, ImageSet]:
    """Image-folder tree (or tarball of one) -> (train, test) ImageSets."""
    if not root.exists():
        raise DataNotFoundError(f"data.root: '{root}' does not exist: expected a folder of class "
                                f"folders, or a .tar.gz of one")
    if _is_tarball(root):
        data_root = extract_tarball(root)
        report["extracted_to"] = str(data_root)
    elif root.is_dir():
        data_root = root
        inner = _single_top_folder(root)
        if inner is not None and inner.name not in SPLITS:
            _warn(report, f"'{root}' holds only the folder '{_shown(inner.name)}': reading the class "
                          f"folders inside it")
            data_root = inner
    else:
        hint = " (unpack it, or repack it as .tar.gz)" if root.suffix.lower() == ".zip" else ""
        raise DataError(f"data.root: '{root}' is a file but not a tarball{hint}: expected a folder of "
                        f"class folders or a {', '.join(TARBALL_SUFFIXES)} of one")

    entries, class_dirs = _scan_tree(data_root, report)
    if novel_classes is not None:
        check_novel_classes(novel_classes, _class_counts(entries, class_dirs), data_root)
    if entries[0][0] == "all":
        _check_fraction("test_fraction", test_fraction, open_interval=True)
    rel_paths = [rel for _, _, rel in entries]
    report["found"] = len(entries)

    start = time.perf_counter()
    pixels, sizes, errors, workers = _decode_files([os.path.join(data_root, rel) for rel in rel_paths],
                                                   image_size)
    seconds = time.perf_counter() - start
    report["timing"]["decode_images_per_second"] = round(len(entries) / max(seconds, 1e-9), 1)
    print(f"decoded {len(entries)} images in {seconds:.1f} s "
          f"({len(entries) / max(seconds, 1e-9):.0f} images/s, {workers} worker(s))", file=sys.stderr)

    # Unreadable files: list them all, fail if there are too many.
    shown = [_shown(p) for p in rel_paths]
    bad = [{"path": p, "reason": e} for p, e in zip(shown, errors) if e is not None]
    report["skipped"] = sorted(report["skipped"] + bad, key=lambda b: b["path"])
    if len(bad) > max_bad_fraction * len(entries):
        listed = "; ".join(f"{b['path']} ({b['reason']})" for b in bad[:_MAX_LISTED])
        raise DataError(
            f"data.max_bad_fraction: {len(bad)} of {len(entries)} image files under '{data_root}' are "
            f"unreadable, more than max_bad_fraction={max_bad_fraction} allows. First ones: {listed}")
    for b in bad[:_MAX_LISTED]:
        _warn(report, f"skipped unreadable image '{data_root / b['path']}': {b['reason']}")
    if len(bad) > _MAX_LISTED:
        _warn(report, f"skipped {len(bad) - _MAX_LISTED} more unreadable images (see the report)")
    ok = np.array([e is None for e in errors], dtype=bool)
    _note_sizes(report, [s for s in sizes if s is not None], image_size)

    # Classes: sorted names with at least one readable image in some split.
    by_split_class: dict[tuple[str, str], int] = {}
    for (split, name, _), good in zip(entries, ok):
        by_split_class[(split, name)] = by_split_class.get((split, name), 0) + int(good)
    for (split, name), n in by_split_class.items():
        if n == 0:
            where = name if split == "all" else f"{split}/{name}"
            _warn(report, f"class folder '{where}' under '{data_root}' has no readable images: skipped")
    class_names = sorted({name for (_, name), n in by_split_class.items() if n})
    report["dropped_classes"] = [name for name in class_dirs if name not in class_names]
    for name in report["dropped_classes"]:
        _warn(report, f"class {name!r} has no readable images in any split: dropped")
    if not class_names:
        raise DataError(f"data.root: no readable images under '{data_root}'")

    index = {name: i for i, name in enumerate(class_names)}
    split_of = np.array([split for split, _, _ in entries])
    labels = np.array([index.get(name, -1) for _, name, _ in entries], dtype=np.int64)
    if entries[0][0] == "all":
        rows = np.flatnonzero(ok)
        train_pos, test_pos = stratified_split(labels[rows], test_fraction, seed)
        train_rows, test_rows = rows[train_pos], rows[test_pos]
    else:
        train_rows = np.flatnonzero(ok & (split_of == "train"))
        test_rows = np.flatnonzero(ok & (split_of == "test"))
    if len(train_rows) == 0:
        raise DataError(f"data.root: no readable training images under '{data_root}'")

    def take(rows: np.ndarray) -> ImageSet:
        return ImageSet(pixels[rows], labels[rows], class_names, [shown[i] for i in rows])

    return take(train_rows), take(test_rows)


# --------------------------------------------------------------------------------------
# Class selection


def base_novel_split(class_names: list[str], novel_classes: list[str]) -> tuple[list[str], list[str]]:
    """Split class_names into (base, novel), both in class_names order.

    novel_classes are class names (strings). At least 2 novel classes and 1 base class.
    """
    wrong_type = [c for c in novel_classes if not isinstance(c, str)]
    if wrong_type:
        raise DataError(f"novel classes must be given by name (strings), got {wrong_type}; "
                        f"e.g. {[str(c) for c in wrong_type]}")
    novel_classes = [unicodedata.normalize("NFC", c) for c in novel_classes]
    unknown = [c for c in novel_classes if c not in class_names]
    if unknown:
        raise DataError(f"unknown novel class(es) {unknown}; available classes: {list(class_names)}")
    duplicates = sorted({c for c in novel_classes if list(novel_classes).count(c) > 1})
    if duplicates:
        raise DataError(f"novel classes listed more than once: {duplicates}")
    novel = [c for c in class_names if c in novel_classes]
    base = [c for c in class_names if c not in novel_classes]
    if len(novel) < 2:
        raise DataError(f"need at least 2 novel classes, got {novel}")
    if not base:
        raise DataError(f"novel classes {novel} leave no base class; at least 1 is needed")
    return base, novel


def subset_classes(images, labels, class_names: list[str], keep: list[str]):
    """Rows of (images [N, ...], labels [N]) whose class is in `keep`.

    Works on numpy arrays or torch tensors. Labels are unchanged: they still index the
    full class_names list. Returns (images [M, ...], labels [M]).
    """
    unknown = [c for c in keep if c not in class_names]
    if unknown:
        raise ValueError(f"unknown class(es) {unknown}; available classes: {list(class_names)}")
    keep_idx = [class_names.index(c) for c in keep]
    if isinstance(labels, np.ndarray):
        mask = np.isin(labels, keep_idx)
    else:
        import torch

        mask = torch.isin(labels, torch.tensor(keep_idx, dtype=labels.dtype, device=labels.device))
    return images[mask], labels[mask]


# --------------------------------------------------------------------------------------
# Parquet tables and manifest


def content_hash(train: ImageSet, test: ImageSet) -> str:
    """sha256 over, for train then test: the shape, the pixel bytes (HWC), the labels (int64 LE)."""
    h = hashlib.sha256()
    for s in (train, test):
        h.update(f"{s.images.shape}".encode())
        h.update(np.ascontiguousarray(s.images).reshape(-1))
        h.update(np.ascontiguousarray(s.labels, dtype="<i8").tobytes())
    return "sha256:" + h.hexdigest()


def _schema(height: int, width: int, class_names: list[str]) -> pa.Schema:
    meta = {"format": FORMAT, "height": str(height), "width": str(width), "channels": "3",
            "class_names": json.dumps(class_names)}
    return pa.schema(
        [("pixels", pa.binary()), ("label", pa.int32()),
         ("class_name", pa.dictionary(pa.int32(), pa.string())), ("path", pa.string())],
        metadata=meta)


def _write_split(path: Path, s: ImageSet) -> None:
    """One split -> Parquet, in row groups of about _PARQUET_GROUP_BYTES, written atomically."""
    n, h, w, c = s.images.shape
    row_bytes = h * w * c
    flat = np.ascontiguousarray(s.images).reshape(-1)          # [N * H * W * 3]
    schema = _schema(h, w, s.class_names)
    names = pa.array(s.class_names, pa.string())
    rows_per_group = max(1, _PARQUET_GROUP_BYTES // row_bytes)
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=["class_name"]) as writer:
            for a in range(0, n, rows_per_group):
                b = min(a + rows_per_group, n)
                offsets = np.arange(b - a + 1, dtype=np.int32) * row_bytes
                pixels = pa.Array.from_buffers(
                    pa.binary(), b - a,
                    [None, pa.py_buffer(offsets), pa.py_buffer(flat[a * row_bytes:b * row_bytes])])
                labels = s.labels[a:b].astype(np.int32)
                columns = [pixels, pa.array(labels),
                           pa.DictionaryArray.from_arrays(pa.array(labels), names),
                           pa.array(s.paths[a:b], pa.string())]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def write_prepared(out_dir: str | os.PathLike, train: ImageSet, test: ImageSet, base: list[str],
                   novel: list[str], report: dict[str, Any], source_info: dict[str, Any]) -> dict[str, Any]:
    """Write train.parquet, test.parquet, then manifest.json (last, so it marks completion).

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
    for split, s in zip(SPLITS, (train, test)):
        _write_split(out_dir / f"{split}.parquet", s)

    k = len(class_names)
    counts = {split: dict(zip(class_names, np.bincount(s.labels, minlength=k).tolist()))
              for split, s in zip(SPLITS, (train, test))}
    h, w, _ = train.images.shape[1:]
    manifest = {
        "format": FORMAT,
        "source": source_info,
        "image_size": [int(h), int(w), 3],
        "class_names": class_names,
        "base_classes": list(base),
        "novel_classes": list(novel),
        "counts": counts,
        "totals": {"train": len(train), "test": len(test)},
        "content_hash": content_hash(train, test),
        "files": {split: f"{split}.parquet" for split in SPLITS},
        "report": {key: value for key, value in report.items() if key != "timing"},
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


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

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(prepared_dir) / f"{split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no {split}.parquet in '{prepared_dir}': run the prepare stage first")
    table = pq.read_table(path, columns=["pixels", "label"])
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a {FORMAT} table (format={meta.get('format')!r})")
    h, w, c = int(meta["height"]), int(meta["width"]), int(meta["channels"])
    row_bytes = h * w * c

    images = np.empty((table.num_rows, c, h, w), dtype=np.uint8)   # [N, 3, H, W]
    start = 0
    for chunk in table.column("pixels").chunks:
        m = len(chunk)
        if m == 0:
            continue
        if chunk.null_count:
            raise ValueError(f"'{path}': null pixels")
        _, offset_buf, data_buf = chunk.buffers()
        offsets = np.frombuffer(offset_buf, dtype=np.int32)[chunk.offset:chunk.offset + m + 1]
        if not np.all(np.diff(offsets) == row_bytes):
            raise ValueError(f"'{path}': every pixels value must hold {row_bytes} bytes")
        data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0]:offsets[-1]]
        images[start:start + m] = data.reshape(m, h, w, c).transpose(0, 3, 1, 2)
        start += m
    labels = table.column("label").to_numpy().astype(np.int64)
    return {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels),
            "class_names": json.loads(meta["class_names"])}


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
    limit = source["ssl_max_images"]
    if 0 < limit < len(rows):
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(source["seed"]))[:limit]
        rows = rows[keep.sort().values]
    return rows


def load_ssl_split(prepared: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """-> (uint8 images [N_ssl, 3, H, W], labels [N_ssl] int64, manifest): the train-split
    rows self-supervised stages may use (`ssl_rows`)."""
    manifest = read_manifest(prepared)
    train = load_prepared(prepared, "train")
    rows = ssl_rows(train["labels"], manifest)
    return train["images"][rows].contiguous(), train["labels"][rows].contiguous(), manifest


def load_labelled_split(prepared: str | Path, split: str = "train", max_images: int = 0
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
