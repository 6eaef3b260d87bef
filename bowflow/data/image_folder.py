"""The imagefolder source: a folder, or a .tar.gz/.tgz/.tar of one, holding one folder per
class, with or without train/ and test/ folders above them (the CIFAR-10 JPEG tarball
layout) -> (train, test) `ImageSet`s, images uint8 [N, S, S, 3].

A tarball is extracted once into the cache (`extract_tarball`: $BOWFLOW_CACHE, else
~/.cache/bowflow). The tree is listed by `bowflow.data.scan`, decoded by
`bowflow.data.decode` and, without train/ and test/ folders, split per class by
`bowflow.data.splits.stratified_split`. Unreadable images are skipped and listed in the
report (the first _MAX_LISTED also as warnings); more than max_bad_fraction of them is a
`DataError`. A class with no readable image in any split is dropped (and warned about).

`load_unlabelled` reads an unlabelled folder or tarball (`data.unlabelled`: images at any
depth, no classes) for the self-supervised stages, with the same extraction, decoding and
unreadable-file checks.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bowflow.data.decode import decode_files
from bowflow.data.image_set import ImageSet
from bowflow.data.resize import note_sizes
from bowflow.data.scan import (
    SPLIT_FOLDERS,
    check_novel_classes,
    class_counts,
    scan_images,
    scan_tree,
    single_top_folder,
    text_name,
)
from bowflow.data.specs import TARBALL_SUFFIXES, DataError, DataNotFoundError, check_fraction, warn
from bowflow.data.splits import stratified_split

_MAX_LISTED = 5  # bad files named in an error message / printed as warnings


def cache_dir() -> Path:
    """Where tarballs are extracted: $BOWFLOW_CACHE, else ~/.cache/bowflow."""
    return Path(os.environ.get("BOWFLOW_CACHE") or Path.home() / ".cache" / "bowflow")


def extract_tarball(tarball: Path, key: str = "data.root") -> Path:
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
                detail = " ".join(str(e).split())  # one line, even for tarfile's list of methods
                raise DataError(
                    f"{key}: '{tarball}' is not a readable tar archive "
                    f"({type(e).__name__}: {detail}); expected a complete .tar.gz, .tgz or "
                    f".tar of image folders"
                ) from None
            try:
                os.rename(tmp, final)
            except OSError:  # another process got there first
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return single_top_folder(final) or final


def _is_tarball(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(TARBALL_SUFFIXES)


def _skip_unreadable(
    shown: list[str], errors: list[str | None], data_root: Path, max_bad_fraction: float, report: dict[str, Any]
) -> np.ndarray:
    """Unreadable files: list them all in report["skipped"], warn about the first ones,
    DataError naming them if more than max_bad_fraction. -> bool [N], True = readable."""
    bad = [{"path": p, "reason": e} for p, e in zip(shown, errors) if e is not None]
    report["skipped"] = sorted(report["skipped"] + bad, key=lambda b: b["path"])
    if len(bad) > max_bad_fraction * len(shown):
        listed = "; ".join(f"{data_root / b['path']} ({b['reason']})" for b in bad[:_MAX_LISTED])
        raise DataError(
            f"data.max_bad_fraction: {len(bad)} of {len(shown)} image files under '{data_root}' are "
            f"unreadable, more than max_bad_fraction={max_bad_fraction} allows. First ones: {listed}"
        )
    for b in bad[:_MAX_LISTED]:
        warn(report, f"skipped unreadable image '{data_root / b['path']}': {b['reason']}")
    if len(bad) > _MAX_LISTED:
        warn(report, f"skipped {len(bad) - _MAX_LISTED} more unreadable images (see the report)")
    return np.array([e is None for e in errors], dtype=bool)


def _decode(data_root: Path, rel_paths: list[str], image_size: int, report: dict[str, Any]):
    """decode_files on paths relative to data_root, timed into the report."""
    start = time.perf_counter()
    pixels, sizes, errors, workers = decode_files([os.path.join(data_root, rel) for rel in rel_paths], image_size)
    seconds = time.perf_counter() - start
    report["timing"]["decode_images_per_second"] = round(len(rel_paths) / max(seconds, 1e-9), 1)
    print(
        f"decoded {len(rel_paths)} images in {seconds:.1f} s "
        f"({len(rel_paths) / max(seconds, 1e-9):.0f} images/s, {workers} worker(s))",
        file=sys.stderr,
    )
    return pixels, sizes, errors


def unlabelled_report(root: str) -> dict[str, Any]:
    """The report `load_unlabelled` fills (the prepared manifest keeps it as report.unlabelled)."""
    return {
        "root": root,
        "found": 0,
        "loaded": 0,
        "skipped": [],
        "resized": 0,
        "source_sizes": {},
        "warnings": [],
        "timing": {},
    }


def load_unlabelled(
    root: Path, image_size: int, max_bad_fraction: float, report: dict[str, Any]
) -> tuple[np.ndarray, list[str]]:
    """An unlabelled folder, or tarball of one (`data.unlabelled`): every image file at any
    depth -> (uint8 [N, S, S, 3] of the readable ones, their paths relative to the folder).
    The same checks as an image folder: hidden names ignored, other files listed as
    skipped, unreadable images skipped and listed, more than max_bad_fraction of them a
    DataError naming the first files. `report`: see `unlabelled_report`."""
    if not root.exists():
        raise DataNotFoundError(
            f"data.unlabelled: '{root}' does not exist: expected a folder of images (any depth) or a .tar.gz of one"
        )
    if _is_tarball(root):
        data_root = extract_tarball(root, "data.unlabelled")
        report["extracted_to"] = str(data_root)
    elif root.is_dir():
        data_root = root
    else:
        raise DataError(
            f"data.unlabelled: '{root}' is a file but not a tarball: expected a folder of "
            f"images or a {', '.join(TARBALL_SUFFIXES)} of one"
        )
    rel_paths = scan_images(data_root, report)
    report["found"] = len(rel_paths)
    pixels, sizes, errors = _decode(data_root, rel_paths, image_size, report)
    ok = _skip_unreadable([text_name(p) for p in rel_paths], errors, data_root, max_bad_fraction, report)
    note_sizes(report, [s for s in sizes if s is not None], image_size)
    rows = np.flatnonzero(ok)
    if len(rows) == 0:
        raise DataError(f"data.unlabelled: no readable images under '{data_root}'")
    report["loaded"] = len(rows)
    return pixels[rows], [text_name(rel_paths[i]) for i in rows]


def load_imagefolder(
    root: Path,
    image_size: int,
    test_fraction: float,
    seed: int,
    max_bad_fraction: float,
    report: dict[str, Any],
    novel_classes: Sequence[str] | None = None,
) -> tuple[ImageSet, ImageSet]:
    """Image-folder tree (or tarball of one) -> (train, test) ImageSets."""
    if not root.exists():
        raise DataNotFoundError(
            f"data.root: '{root}' does not exist: expected a folder of class folders, or a .tar.gz of one"
        )
    if _is_tarball(root):
        data_root = extract_tarball(root)
        report["extracted_to"] = str(data_root)
    elif root.is_dir():
        data_root = root
        inner = single_top_folder(root)
        if inner is not None and inner.name not in SPLIT_FOLDERS:
            warn(
                report, f"'{root}' holds only the folder '{text_name(inner.name)}': reading the class folders inside it"
            )
            data_root = inner
    else:
        hint = " (unpack it, or repack it as .tar.gz)" if root.suffix.lower() == ".zip" else ""
        raise DataError(
            f"data.root: '{root}' is a file but not a tarball{hint}: expected a folder of "
            f"class folders or a {', '.join(TARBALL_SUFFIXES)} of one"
        )

    entries, class_dirs = scan_tree(data_root, report)
    if novel_classes is not None:
        check_novel_classes(novel_classes, class_counts(entries, class_dirs), data_root)
    if entries[0][0] == "all":
        check_fraction("test_fraction", test_fraction, open_interval=True)
    rel_paths = [rel for _, _, rel in entries]
    report["found"] = len(entries)

    pixels, sizes, errors = _decode(data_root, rel_paths, image_size, report)

    shown = [text_name(p) for p in rel_paths]
    ok = _skip_unreadable(shown, errors, data_root, max_bad_fraction, report)
    note_sizes(report, [s for s in sizes if s is not None], image_size)

    # Classes: sorted names with at least one readable image in some split.
    by_split_class: dict[tuple[str, str], int] = {}
    for (split, name, _), good in zip(entries, ok):
        by_split_class[(split, name)] = by_split_class.get((split, name), 0) + int(good)
    for (split, name), n in by_split_class.items():
        if n == 0:
            where = name if split == "all" else f"{split}/{name}"
            warn(report, f"class folder '{where}' under '{data_root}' has no readable images: skipped")
    class_names = sorted({name for (_, name), n in by_split_class.items() if n})
    report["dropped_classes"] = [name for name in class_dirs if name not in class_names]
    for name in report["dropped_classes"]:
        warn(report, f"class {name!r} has no readable images in any split: dropped")
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
