"""Stage prepare: read a data source and write Parquet tables plus a manifest.

    python -m stages.prepare --out data/prepared --seed 0 --needs data/checked_params.txt \
        --source digits --image_size 16 ...

Writes data/prepared/{train,test}.parquet (uint8 pixels, labels, class names) and
manifest.json (the data parameters, base/novel classes, counts per class, image size,
content hash, and every skipped or resized file by name). With `--unlabelled PATH` (params
`data.unlabelled`), the images of that folder or tarball, at any depth, are read with the
same checks and written to data/prepared/unlabelled.parquet for the self-supervised stages
(`bowflow.data.prepared.load_ssl_split`); evaluation reads train/test only.

`--needs` is the stamp of the check_params stage: what the rest of params.yaml asks of the
data (few-shot images per novel class, each image pool's largest batch;
`bowflow.paramcheck.data_needs`). Once the images are read, and before anything is written,
they are checked against it, so a demand the data cannot meet stops here with the params
key named, before any training stage. The needs change no output of this stage.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from bowflow.cli import parse_section
from bowflow.data.image_folder import load_unlabelled, unlabelled_report
from bowflow.data.sources import load_source
from bowflow.data.specs import DataError, check_fraction
from bowflow.data.splits import base_novel_split
from bowflow.data.write import unlabelled_set, write_prepared
from bowflow.runtime import StageClock, log
from bowflow.sections import DataParams, ParamsError, check_data_needs, read_data_needs


def paths(parser):
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument(
        "--needs",
        type=Path,
        default=None,
        help="check_params' stamp: check the data against what params.yaml asks of it",
    )


def main(argv=None):
    params, args = parse_section(DataParams, argv, __doc__, paths)
    if not 0 <= args.seed < 2**32:
        raise SystemExit(f"prepare: --seed: expected an integer in [0, 2**32 - 1], got {args.seed}")
    clock = StageClock()
    try:
        train, test, report = load_source(
            params.source,
            params.root,
            params.image_size,
            params.test_fraction,
            args.seed,
            params.download,
            params.max_bad_fraction,
            params.novel_classes,
        )
        base, novel = split_classes(train.class_names, params.novel_classes, report)
        unlabelled = None
        if params.unlabelled:
            check_fraction("max_bad_fraction", params.max_bad_fraction, open_interval=False)
            report["unlabelled"] = unlabelled_report(params.unlabelled)
            images, names = load_unlabelled(
                Path(params.unlabelled), params.image_size, params.max_bad_fraction, report["unlabelled"]
            )
            report["unlabelled"].pop("timing")
            unlabelled = unlabelled_set(images, names)
        if args.needs is not None:
            check_data_needs(
                read_data_needs(args.needs),
                split_counts(train, test),
                base,
                novel,
                params.ssl_classes,
                params.ssl_max_images,
                describe_source(params),
                len(unlabelled) if unlabelled is not None else 0,
                params.unlabelled_use,
            )
    except (DataError, ParamsError) as error:  # bad data or params: one line naming them, no traceback
        raise SystemExit(f"prepare: {error}") from None
    manifest = write_prepared(
        args.out, train, test, base, novel, report, {**asdict(params), "seed": args.seed}, unlabelled
    )
    extra = f" and {len(unlabelled)} unlabelled" if unlabelled is not None else ""
    log(
        f"prepared {len(train)} train / {len(test)} test{extra} images of {manifest['image_size']} "
        f"({len(base)} base, {len(novel)} novel classes) in {clock.summary()['wall_seconds']} s"
    )


def split_counts(train, test) -> dict[str, dict[str, int]]:
    """{split: {class name: images}} of the two ImageSets, as the manifest's `counts`."""
    return {
        split: dict(zip(s.class_names, np.bincount(s.labels, minlength=len(s.class_names)).tolist()))
        for split, s in (("train", train), ("test", test))
    }


def describe_source(params: DataParams) -> str:
    """The data just read, for messages: 'the digits data' / "the image folder '...'"."""
    if params.source == "imagefolder":
        return f"the image folder '{params.root}' (data.root)"
    return f"the {params.source} data (data.source)"


def split_classes(class_names: list[str], novel_classes: list[str], report: dict) -> tuple[list[str], list[str]]:
    """(base, novel) classes; a novel class whose every image was unreadable is named as such."""
    dropped = [c for c in novel_classes if c in report.get("dropped_classes", [])]
    if dropped:
        raise DataError(
            f"data.novel_classes: {dropped} has no readable images (every file was "
            f"skipped, see the warnings above): expected readable images of every novel class"
        )
    try:
        return base_novel_split(class_names, novel_classes)
    except DataError as error:
        raise DataError(f"data.novel_classes: {error}") from None


if __name__ == "__main__":
    main()
