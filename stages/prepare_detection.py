"""Stage prepare_detection: read the `detection:` section's box source once and write it as
Parquet tables plus a manifest, for every detection stage of every run and seed.

    python -m stages.prepare_detection --out data/detection --seed 0 --needs data/checked_params.txt \
        --source shapes --image_size 32 ...

Writes data/detection/{train,test}.parquet (bowflow/data/boxes.py `write_boxes`: uint8
pixels resized whole to image_size^2, boxes in its pixels, labels, VOC's difficult flags)
and manifest.json (the source's params, the classes, images and objects per split). The
generated `shapes` source is drawn from `--seed` (params.yaml's `seed`, the data split's);
a VOC source is read from its root(s), every bad or missing file a one-line error naming
it. Only the source's fields of the section matter here; the recipe's are the detect
stages'. `--needs`: check_params' stamp, a dependency so that the params are checked before
any work (nothing in it concerns this stage).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bowflow.cli import parse_section
from bowflow.data.boxes import BoxSet, load_box_source, write_boxes
from bowflow.data.specs import DataError
from bowflow.io import write_json
from bowflow.runtime import StageClock, log
from bowflow.sections import DetectionParams


def paths(parser):
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--needs", type=Path, default=None, help="check_params' stamp (ordering only)")


def split_counts(s: BoxSet) -> dict:
    """{"images", "objects", "difficult", "per_class": {name: objects}} of one split."""
    labels = np.concatenate(s.labels) if s.labels else np.zeros(0, dtype=np.int64)
    hard = np.concatenate(s.difficult) if s.difficult else np.zeros(0, dtype=bool)
    per_class = np.bincount(labels, minlength=len(s.class_names)).tolist()
    return {
        "images": len(s),
        "objects": int(len(labels)),
        "difficult": int(hard.sum()),
        "per_class": dict(zip(s.class_names, per_class)),
    }


def main(argv=None):
    params, args = parse_section(DetectionParams, argv, __doc__, paths)
    clock = StageClock()
    try:
        train, test = load_box_source(
            params.source,
            params.root,
            params.image_size,
            args.seed,
            train_split=params.train_split,
            test_split=params.test_split,
            n_train=params.train_images,
            n_test=params.test_images,
        )
    except DataError as error:
        raise SystemExit(f"detection: {error}") from None
    if not train.num_objects:
        raise SystemExit(
            f"detection.root: the training split ({len(train)} images) holds no object: a detection source needs boxes"
        )
    write_boxes(args.out / "train.parquet", train)
    write_boxes(args.out / "test.parquet", test)
    counts = {"train": split_counts(train), "test": split_counts(test)}
    source = {
        "source": params.source,
        "root": params.root,
        "train_split": params.train_split,
        "test_split": params.test_split,
        "image_size": params.image_size,
    }
    if params.source == "shapes":
        source |= {"train_images": params.train_images, "test_images": params.test_images, "seed": args.seed}
    write_json(
        args.out / "manifest.json",
        {
            "source": source,
            "class_names": train.class_names,
            "image_size": params.image_size,
            "counts": counts,
            **clock.summary(),
        },
    )
    log(
        f"detection source '{params.source}': {counts['train']['images']} training images "
        f"({counts['train']['objects']} objects), {counts['test']['images']} test images "
        f"({counts['test']['objects']} objects), {len(train.class_names)} classes"
    )


if __name__ == "__main__":
    main()
