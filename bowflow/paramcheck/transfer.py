"""The optional `transfer:` section: its protocol settings and every source of
`transfer.sources`, each checked against TransferSourceParams and against the disk (a root
that does not exist, a VOC root without Annotations/ or ImageSets/Main/<split>.txt), so a
bad source stops check_params before any stage runs. Every error names its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bowflow.paramcheck.schema import RUN_NAME, check_section
from bowflow.sections import ParamsError, TransferParams, TransferSourceParams

TORCHVISION = ("cifar10", "cifar100", "svhn", "stl10")


def check_transfer(values: Any) -> TransferParams:
    """`transfer:` -> TransferParams whose `sources` maps each name to its checked
    TransferSourceParams."""
    section = check_section(TransferParams, values, "transfer")
    checked = {}
    for name, spec in section.sources.items():
        where = f"transfer.sources.{name}"
        if not isinstance(name, str) or not RUN_NAME.match(name):
            raise ParamsError(
                f"{where}: a source name must start with a letter or digit and hold only letters, digits, "
                f"'_' and '-' (it names data/transfer/NAME and the stage prepare_transfer@NAME)"
            )
        source = check_section(TransferSourceParams, spec, where)
        check_source_root(source, where)
        checked[name] = source
    section.sources = checked  # the checked entries, same keys
    return section


def check_source_root(source: TransferSourceParams, where: str) -> None:
    """What a source needs on disk, before any stage: its root (each '+' part of a VOC root)."""
    if source.source in ("digits", "shapes") or (source.source in TORCHVISION and source.download):
        return
    if source.source != "voc":
        if not Path(source.root).exists():
            raise ParamsError(f"{where}.root: '{source.root}' does not exist")
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
