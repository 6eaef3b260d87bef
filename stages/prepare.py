"""Stage prepare: read a data source and write Parquet tables plus a manifest.

    python -m stages.prepare --out data/prepared --seed 0 --source digits --image_size 16 ...

Writes data/prepared/{train,test}.parquet (uint8 pixels, labels, class names) and
manifest.json (the data parameters, base/novel classes, counts per class, image size,
content hash, and every skipped or resized file by name).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from bowflow.cli import parse_section
from bowflow.config import DataParams
from bowflow.datasets import DataError, base_novel_split, load_source, write_prepared
from bowflow.runtime import StageClock, log


def paths(parser):
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)


def main(argv=None):
    params, args = parse_section(DataParams, argv, __doc__, paths)
    if not 0 <= args.seed < 2**32:
        raise SystemExit(f"prepare: --seed: expected an integer in [0, 2**32 - 1], got {args.seed}")
    clock = StageClock()
    try:
        train, test, report = load_source(params.source, params.root, params.image_size,
                                          params.test_fraction, args.seed, params.download,
                                          params.max_bad_fraction, params.novel_classes)
        base, novel = split_classes(train.class_names, params.novel_classes, report)
    except DataError as error:     # bad data or data params: one line naming them, no traceback
        raise SystemExit(f"prepare: {error}")
    manifest = write_prepared(args.out, train, test, base, novel, report,
                              {**asdict(params), "seed": args.seed})
    log(f"prepared {len(train)} train / {len(test)} test images of {manifest['image_size']} "
        f"({len(base)} base, {len(novel)} novel classes) in {clock.summary()['wall_seconds']} s")


def split_classes(class_names: list[str], novel_classes: list[str],
                  report: dict) -> tuple[list[str], list[str]]:
    """(base, novel) classes; a novel class whose every image was unreadable is named as such."""
    dropped = [c for c in novel_classes if c in report.get("dropped_classes", [])]
    if dropped:
        raise DataError(f"data.novel_classes: {dropped} has no readable images (every file was "
                        f"skipped, see the warnings above): expected readable images of every novel class")
    try:
        return base_novel_split(class_names, novel_classes)
    except DataError as error:
        raise DataError(f"data.novel_classes: {error}") from None


if __name__ == "__main__":
    main()
