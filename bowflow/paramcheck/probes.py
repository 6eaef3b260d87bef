"""Probes of this machine and its file system, for what a params file alone cannot tell:
the data root and data.unlabelled exist and hold images (files counted, nothing decoded),
the novel classes have enough of them for the few-shot episodes, each transfer source's
root exists (a VOC root with its Annotations/ and split lists), the device asked for is
here, and the GPUs resources: asks for are (warnings: a cluster runs the jobs elsewhere)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from bowflow.data.scan import check_novel_classes, count_class_images, count_images
from bowflow.data.specs import TARBALL_SUFFIXES, DataError
from bowflow.paramcheck.data_needs import data_needs
from bowflow.sections import ParamsError, TransferParams, TransferSourceParams


def check_environment(checked: dict, params: dict) -> None:
    """What `validate_params` cannot see from the file alone: the data root exists (for an
    image folder, or a torchvision source without download); for an image folder (not a
    tarball), its class folders hold the novel classes with enough images for the few-shot
    episodes (files counted, nothing decoded); and a requested GPU is here.

    Run by the check_params stage (`main`); relative paths are taken from the working
    directory, as the stages see them.
    """
    from bowflow.runtime import resolve_device

    data = checked["data"]
    root = Path(data.root) if data.root else None
    if data.source == "imagefolder":
        assert root is not None  # DataParams.validate: an imagefolder source names its root
        check_folder_or_tarball(
            data.root, "data.root", "a folder of class folders, or a .tar.gz of one", "a folder of class folders"
        )
        try:
            found = count_class_images(root)
            if found is not None:
                folder, counts = found
                check_novel_classes(data.novel_classes, counts, folder)
                novel = [unicodedata.normalize("NFC", c) for c in data.novel_classes]  # as folders are
                checked["evaluate"].check_against(
                    {"novel_classes": novel, "counts": {"all": counts}}, f"the image files under '{data.root}'"
                )
        except DataError as error:
            raise ParamsError(str(error)) from None
        except ValueError as error:
            raise ParamsError(f"evaluate.{error}") from None
    check_unlabelled(checked)
    check_detection_source(checked)
    torchvision = data.source not in ("digits", "imagefolder")
    if torchvision and not data.download and (root is None or not root.exists()):
        raise ParamsError(
            f"data.root: '{data.root}' does not exist: expected a folder holding a local "
            f"copy of {data.source}, or set data.download: true"
        )
    if "transfer" in checked:
        check_transfer_roots(checked["transfer"])
    try:
        resolve_device(params["device"])
    except SystemExit as error:
        raise ParamsError(str(error.code)) from None


def check_folder_or_tarball(value: str, key: str, expected: str, folder: str) -> None:
    """ParamsError naming `key` unless the path `value` exists and is a folder or a tarball:
    `expected` is what a missing path should have been, `folder` the folder a wrong file
    should have been."""
    root = Path(value)
    if not root.exists():
        raise ParamsError(f"{key}: '{value}' does not exist: expected {expected}")
    if root.is_file() and not root.name.lower().endswith(TARBALL_SUFFIXES):
        raise ParamsError(
            f"{key}: '{value}' is a file but not a tarball: expected {folder} or a {', '.join(TARBALL_SUFFIXES)} of one"
        )


def check_unlabelled(checked: dict) -> None:
    """data.unlabelled, when set: it exists, is a folder or a tarball, and a folder holds image
    files at some depth (counted, nothing decoded: unreadable files are named by the
    prepare stage, which decodes them, before any training); with unlabelled_use
    'replace', the largest SSL batch fits in them."""
    data = checked["data"]
    if not data.unlabelled:
        return
    root = Path(data.unlabelled)
    check_folder_or_tarball(
        data.unlabelled, "data.unlabelled", "a folder of images (any depth) or a .tar.gz of one", "a folder of images"
    )
    try:
        found = count_images(root)
    except DataError as error:
        raise ParamsError(str(error)) from None
    batch = data_needs(checked)["ssl_batch"]
    if found is not None and data.unlabelled_use == "replace" and batch:
        pool = min(found, data.ssl_max_images) if data.ssl_max_images > 0 else found
        if batch["size"] > pool:
            raise ParamsError(
                f"{batch['key']}: {batch['size']} images per step, but the run trains on "
                f"only {pool} images (the image files under data.unlabelled '{data.unlabelled}'"
                f"{', at most data.ssl_max_images' if data.ssl_max_images > 0 else ''}): "
                f"expected a batch_size <= {pool}"
            )


_OBJECT_NAME = re.compile(r"<object>.*?<name>\s*([^<]*?)\s*</name>", re.S)


def voc_object_names(root: Path, split: str, key: str) -> set[str]:
    """The class names of the objects a VOC year folder's split annotates (its
    ImageSets/Main/<split>.txt, each listed image's Annotations/<id>.xml; read as text,
    nothing decoded): ParamsError naming `key` and the missing path."""
    ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
    for needed in (root, root / "Annotations", ids_file):
        if not needed.exists():
            raise ParamsError(
                f"{key}: '{needed}' does not exist: expected a VOC year folder holding ImageSets/Main/<split>.txt, "
                f"Annotations/ and JPEGImages/ (VOCdevkit/VOC2007 style)"
            )
    names: set[str] = set()
    for line in ids_file.read_text().splitlines():
        if not line.strip():
            continue
        xml = root / "Annotations" / f"{line.split()[0]}.xml"
        if not xml.is_file():
            raise ParamsError(f"{key}: '{xml}' does not exist: {ids_file} lists its image")
        names.update(_OBJECT_NAME.findall(xml.read_text(errors="replace")))
    return names


def check_detection_source(checked: dict) -> None:
    """The optional `detection:` section's VOC source holds boxes: every root (joined by '+')
    has the train split's annotations with at least one object, the first root the test
    split's with at least one object of the training classes. The shapes source is
    generated: nothing to probe."""
    detection = checked.get("detection")
    if detection is None or detection.source != "voc":
        return
    roots = [Path(r.strip()) for r in detection.root.split("+") if r.strip()]
    classes: set[str] = set()
    for root in roots:
        found = voc_object_names(root, detection.train_split, "detection.root")
        if not found:
            raise ParamsError(
                f"detection.root: the annotations of split '{detection.train_split}' under '{root}' hold no "
                f"object: a detection source needs boxes"
            )
        classes |= found
    tested = voc_object_names(roots[0], detection.test_split, "detection.test_split")
    if not tested & classes:
        raise ParamsError(
            f"detection.test_split: the annotations of split '{detection.test_split}' under '{roots[0]}' hold no "
            f"object of the training classes {sorted(classes)}: nothing to score"
        )


def gpu_warnings(checked: dict) -> list[str]:
    """Why a run asking for GPUs (resources.KIND.gpus > 0) would not get them on this
    machine: one line per stage kind, empty when torch sees enough GPUs. Warnings, not
    errors: under a cluster executor (SLURM) the training jobs run elsewhere, with the GPUs
    the cluster gives them; a training stage run here stops before any work (its --gpus)."""
    import torch

    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [
        f"resources.{kind}.gpus = {r.gpus}, but torch sees {seen} GPU(s) on this machine "
        f"(torch.cuda.is_available() is {torch.cuda.is_available()}): its training stages stop "
        f"with an error if run here; set resources.{kind}.gpus: 0 to train on the CPU"
        for kind, r in checked["resources"].items()
        if r.gpus > seen
    ]


TORCHVISION = ("cifar10", "cifar100", "svhn", "stl10")


def check_transfer_roots(transfer: TransferParams) -> None:
    """What each source of `transfer.sources` needs on disk, before any stage: its root
    (each '+' part of a VOC root: Annotations/, JPEGImages/, ImageSets/Main/<split>.txt);
    digits and shapes need nothing, a torchvision source with download: true neither."""
    for name, source in transfer.sources.items():
        check_source_root(source, f"transfer.sources.{name}")


def check_source_root(source: TransferSourceParams, where: str) -> None:
    """One source's root (`check_transfer_roots`); ParamsError naming `where`.root."""
    if source.source in ("digits", "shapes") or (source.source in TORCHVISION and source.download):
        return
    if source.source == "imagefolder":
        expected = "a folder of class folders (with or without train/ and test/), or a .tar.gz of one"
        check_folder_or_tarball(source.root, f"{where}.root", expected, "a folder of class folders")
        return
    if source.source != "voc":  # a torchvision set without download: its local copy
        if not Path(source.root).exists():
            raise ParamsError(
                f"{where}.root: '{source.root}' does not exist: expected a local copy of "
                f"{source.source}, or set {where}.download: true"
            )
        return
    roots = [part for part in source.root.split("+") if part.strip()]
    for i, root in enumerate(roots):
        folder = Path(root)
        if not folder.exists():
            raise ParamsError(f"{where}.root: '{root}' does not exist")
        splits = [source.train_split] + ([source.test_split] if i == 0 else [])
        needed = ["Annotations", "JPEGImages", *(f"ImageSets/Main/{split}.txt" for split in splits)]
        missing = [n for n in needed if not (folder / n).exists()]
        if missing:
            raise ParamsError(
                f"{where}.root: '{root}' is not a VOC year folder: it has no {missing[0]} (expected "
                f"{', '.join(needed)}; a folder such as VOCdevkit/VOC2007)"
            )
