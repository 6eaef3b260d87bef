"""Stage prepare_transfer: read one transfer source and write its own tables, once for every
run and seed (bowflow/data/transfer.py).

    python -m stages.prepare_transfer --name voc07 --out data/transfer/voc07 --seed 0 \
        --source voc --root data/raw/VOCdevkit/VOC2007 --image_size 32 ...

The flags after --seed are the source's entry of params.yaml's `transfer.sources`. A
single-label source (digits, an image folder, a torchvision set) goes through the prepare
stage's loaders (`bowflow.data.sources.load_source`: the same checks for unreadable files,
`max_bad_fraction`) into train/test.parquet + manifest.json; a multi-label one (voc, shapes)
through `bowflow.data.boxes` into train/test.boxes.parquet + manifest.json.
"""

from __future__ import annotations

from pathlib import Path

from bowflow.cli import parse_section
from bowflow.data.specs import DataError
from bowflow.data.transfer import prepare_transfer_source
from bowflow.runtime import StageClock, log
from bowflow.sections import TransferSourceParams


def paths(parser):
    parser.add_argument("--name", required=True, help="the source's name in transfer.sources")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True, help="params.yaml's data seed")


def main(argv=None):
    params, args = parse_section(TransferSourceParams, argv, __doc__, paths)
    clock = StageClock()
    try:
        manifest = prepare_transfer_source(args.out, args.name, params, args.seed)
    except DataError as error:  # bad data or params: one line naming them, no traceback
        raise SystemExit(f"prepare_transfer: {error}") from None
    log(
        f"transfer source {args.name} ({params.source}, {manifest['source']['task']}): "
        f"{manifest['totals']['train']} train / {manifest['totals']['test']} test images of "
        f"{manifest['image_size']}, {len(manifest['class_names'])} classes in {clock.summary()['wall_seconds']} s"
    )


if __name__ == "__main__":
    main()
