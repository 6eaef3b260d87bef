"""Listing an image-folder tree without decoding anything: which image files lie in which
class folder of which split. Cheap, so the check_params stage (`bowflow.config`) uses it
too, to count each class's images before any work (`count_class_images`,
`check_novel_classes`).

Layouts: train/ and test/ folders holding one folder per class, or one folder per class
(the caller splits); either may sit inside one top-level folder (`single_top_folder`).
    - hidden files and folders (".name", "__MACOSX") are ignored; non-image files in class
      folders are listed in the report's `skipped` entry with the reason;
    - class and file names are kept as text (`text_name`): NFC-normalised (so a folder
      name written in NFD, as macOS does, matches the same name typed in params.yaml),
      bytes that are not UTF-8 shown as backslash escapes.

`scan_tree` returns one entry (split, class name, path relative to the data root) per
image file, split being "train", "test", or "all" when the caller must split.
`scan_images` lists an unlabelled folder (`data.unlabelled`): every image file at any
depth, no classes; `count_images` counts them for the check_params stage.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bowflow.data.specs import DataError, warn

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_FOLDERS = ("train", "test")  # the split folders of the train/test layout


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))


def text_name(name: str) -> str:
    """A file or folder name as text: NFC-normalised, undecodable bytes as backslash escapes.

    Names come from the file system as str with surrogate escapes for bytes that are not
    UTF-8; those cannot go into Parquet or JSON as they are.
    """
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return unicodedata.normalize("NFC", text)


def single_top_folder(folder: Path) -> Path | None:
    """The only entry of `folder` when that is a folder holding sub-folders, else None."""
    entries = [p for p in folder.iterdir() if not _is_hidden(p.name)]
    if len(entries) == 1 and entries[0].is_dir() and _subdirs(entries[0]):
        return entries[0]
    return None


def _class_files(folder: Path, data_root: Path) -> tuple[list[str], list[str]]:
    """Files anywhere under `folder` as sorted POSIX paths relative to `data_root`:
    (image files, other files). Hidden names are skipped.

    Plain strings, not Path objects: this runs on 60,000 files.
    """
    images: list[str] = []
    others: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        rel_dir = Path(dirpath).relative_to(data_root).as_posix()
        for name in sorted(filenames):
            if not _is_hidden(name):
                (images if name.lower().endswith(IMAGE_EXTENSIONS) else others).append(f"{rel_dir}/{name}")
    return images, others


def _loose_images(folder: Path) -> int:
    return sum(
        1
        for p in folder.iterdir()
        if p.is_file() and not _is_hidden(p.name) and p.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def scan_tree(data_root: Path, report: dict[str, Any]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """List (split, class, path relative to data_root) per image, and all class names.

    split is "train" or "test" for the train/test layout, "all" when the caller must split.
    Class names are the folder names as text (see `text_name`); paths keep the raw names.
    Non-image files inside class folders go to report["skipped"] (not counted as bad).
    """
    folders = _subdirs(data_root)
    names = [p.name for p in folders]
    if not folders:
        raise DataError(
            f"data.root: no class folders under '{data_root}': expected train/ and test/ folders "
            f"holding one folder per class, or one folder per class"
        )
    if "train" in names and "test" in names:
        report["layout"] = "train/ and test/ folders"
        splits = {"train": data_root / "train", "test": data_root / "test"}
        others = [n for n in names if n not in splits]
        if others:
            warn(
                report,
                f"ignoring folder(s) {[text_name(n) for n in others]} under '{data_root}' "
                "(only train/ and test/ are read)",
            )
    elif "train" in names:
        warn(report, f"'{data_root}' has train/ but no test/: splitting train/ by test_fraction")
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
            warn(
                report,
                f"ignoring {loose} image file(s) directly in '{split_dir}': images must sit in one folder per class",
            )
        for class_dir in class_dirs:
            name = text_name(class_dir.name)
            class_names.add(name)
            files, others = _class_files(class_dir, data_root)
            not_images += others
            if not files:
                warn(report, f"empty class folder '{class_dir}' (no image files): skipped")
            entries += [(split, name, f) for f in files]
    if not_images:
        skip_non_images(report, not_images, "in class folders")
    if not entries:
        raise DataError(f"data.root: no image files ({', '.join(IMAGE_EXTENSIONS)}) found under '{data_root}'")
    return entries, sorted(class_names)


def skip_non_images(report: dict[str, Any], paths: list[str], where: str) -> None:
    """List `paths` (files that are no images) in report["skipped"] with the reason, and warn
    once, naming `where` they were ("in class folders", "under '<root>'") and the first."""
    report["skipped"] += [
        {"path": text_name(p), "reason": f"not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})"}
        for p in paths
    ]
    warn(report, f"skipped {len(paths)} non-image file(s) {where}, e.g. '{text_name(paths[0])}' (listed in the report)")


def class_counts(entries: list[tuple[str, str, str]], class_names: list[str]) -> dict[str, int]:
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
        raise DataError(
            f"data.root: only {len(with_images)} class folder(s) with images under "
            f"'{data_root}' ({with_images}): expected at least 3, 1 base class and "
            f"the 2 or more novel classes of data.novel_classes"
        )
    novel = [unicodedata.normalize("NFC", c) if isinstance(c, str) else c for c in novel_classes]
    unknown = [c for c in novel if c not in counts]
    if unknown:
        raise DataError(
            f"data.novel_classes: {unknown} not found under '{data_root}': expected "
            f"names of its class folders {sorted(counts)}"
        )
    empty = [c for c in novel if not counts[c]]
    if empty:
        raise DataError(
            f"data.novel_classes: class folder(s) {empty} under '{data_root}' hold no "
            f"image files: expected images of every novel class"
        )


def count_class_images(root: str | os.PathLike) -> tuple[Path, dict[str, int]] | None:
    """(folder read, image files per class over both splits) of an image-folder root,
    without decoding anything; None when root is not a folder (a tarball is only opened
    by the prepare stage). Lets the check_params stage check class names and few-shot
    sizes before any work. Raises DataError when the folder holds no class folders.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    inner = single_top_folder(root)
    data_root = inner if inner is not None and inner.name not in SPLIT_FOLDERS else root
    report = {"warnings": [], "skipped": [], "quiet": True}
    entries, class_names = scan_tree(data_root, report)
    return data_root, class_counts(entries, class_names)


def scan_images(data_root: Path, report: dict[str, Any], key: str = "data.unlabelled") -> list[str]:
    """Every image file at any depth under `data_root` (an unlabelled folder: no classes), as
    sorted POSIX paths relative to it. Hidden names are ignored; other files go to
    report["skipped"] with the reason. DataError naming `key` when there is no image file."""
    files, others = _class_files(data_root, data_root)
    files = [f.removeprefix("./") for f in files]
    others = [f.removeprefix("./") for f in others]
    if others:
        skip_non_images(report, others, f"under '{data_root}'")
    if not files:
        raise DataError(
            f"{key}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found at any depth "
            f"under '{data_root}': expected a folder of images (sub-folders allowed), "
            f"or a .tar.gz of one"
        )
    return files


def count_images(root: str | os.PathLike, key: str = "data.unlabelled") -> int | None:
    """Image files at any depth under the folder `root`, nothing decoded; None when root is
    not a folder (a tarball is only opened by the prepare stage). DataError naming `key`
    when the folder holds none."""
    root = Path(root)
    if not root.is_dir():
        return None
    return len(scan_images(root, {"warnings": [], "skipped": [], "quiet": True}, key))
