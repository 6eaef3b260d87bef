"""Stage transfer: linear transfer of one model's frozen features to each prepared source.

For every source of params.yaml's `transfer.sources` (prepared once by prepare_transfer into
data/transfer/NAME/), the run's backbone extracts pooled features of the source's train and
test images; a single-label source is scored by the evaluate stage's linear probe (top-1), a
multi-label one by the VOC07 per-class linear SVM protocol (mAP) (bowflow/transfer.py).

    python -m stages.transfer --data data/transfer/voc07 data/transfer/cifar100 \
        --model data/models/seed0/g1/model.pt --out data/metrics/seed0/transfer/g1.json \
        --seed 0 --device auto --layer last --svm_costs 0.05 0.1 ... --sources.voc07.source voc ...

The `--sources.NAME.KEY` flags (each source's params, rendered with the section) are what
prepare_transfer read; this stage reads the prepared tables and their manifests.
"""

from __future__ import annotations

from pathlib import Path

from bowflow.cli import parse_section
from bowflow.io import write_json
from bowflow.models import load_model
from bowflow.networks import count_parameters
from bowflow.runtime import StageClock, log, resolve_device, seed_everything
from bowflow.sections import TransferParams
from bowflow.transfer import transfer_to


def paths(parser):
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="the prepared sources, data/transfer/NAME")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--device", default="auto")


def main(argv=None):
    params, args = parse_section(TransferParams, argv, __doc__, paths)
    device = resolve_device(args.device)
    clock = StageClock(device)
    seed_everything(args.seed)
    backbone, normalizer, record = load_model(args.model, device)
    results = {}
    for folder in args.data:
        result = transfer_to(folder, backbone, normalizer, params, args.seed, device)
        results[folder.name] = result
        log(
            f"{record['name']}: transfer to {folder.name} ({result['source']}, {result['train_images']} train / "
            f"{result['test_images']} test images): {result['metric']} {result['value']:.2f} in {result['seconds']} s"
        )
    write_json(
        args.out,
        {
            "name": record["name"],
            "parent": record.get("parent", ""),
            "generation": record.get("generation", 0),
            "method": record["method"],
            "method_label": record.get("method_label", record["method"]),
            "layer": params.layer,
            "transfer": results,
            "parameters": count_parameters(backbone),
            **clock.summary(),
        },
    )


if __name__ == "__main__":
    main()
