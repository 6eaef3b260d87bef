"""Stage finetune: semi-supervised fine-tuning of one model on each labelled fraction.

For every fraction of params.yaml's `finetune:` (1% and 10% by default), the run's backbone
is loaded afresh, fine-tuned whole with a new linear head on a seeded, class-balanced
fraction of the labelled training images (every class), and scored by top-1 on the test
split (bowflow/finetune.py: SimCLR's protocol and where this differs).

    python -m stages.finetune --prepared data/prepared --model data/models/seed0/g1/model.pt \
        --out data/metrics/seed0/finetune/g1.json --seed 0 --device auto \
        --fractions 0.01 0.1 --epochs 60 30 ...
"""

from __future__ import annotations

import time
from pathlib import Path

from bowflow.cli import parse_section
from bowflow.data.prepared import load_prepared, read_manifest
from bowflow.finetune import FineTuneRecipe, fine_tuned_top1
from bowflow.io import write_json
from bowflow.models import load_model
from bowflow.networks import count_parameters
from bowflow.runtime import StageClock, log, resolve_device, seed_everything
from bowflow.sections import FineTuneParams


def paths(parser):
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--device", default="auto")


def main(argv=None):
    params, args = parse_section(FineTuneParams, argv, __doc__, paths)
    manifest = read_manifest(args.prepared)
    device = resolve_device(args.device)
    clock = StageClock(device)
    seed_everything(args.seed)
    train, test = load_prepared(args.prepared, "train"), load_prepared(args.prepared, "test")
    num_classes = len(manifest["class_names"])
    results, record = {}, {}
    for fraction, epochs in zip(params.fractions, params.epochs):
        backbone, normalizer, record = load_model(args.model, device)  # each fraction from the run's weights
        recipe = FineTuneRecipe(
            epochs=epochs, batch_size=params.batch_size, lr=params.lr, crop_scale_min=params.crop_scale_min
        )
        started = time.perf_counter()
        result = fine_tuned_top1(
            backbone,
            normalizer,
            train["images"],
            train["labels"],
            test["images"],
            test["labels"],
            num_classes,
            fraction,
            recipe,
            args.seed,
            device,
        )
        seconds = time.perf_counter() - started
        results[str(fraction)] = {**result, "seconds": round(seconds, 2)}
        log(
            f"{record['name']}: fine-tuned on {fraction:.0%} of the labels ({result['train_images']} images, "
            f"{epochs} epochs, {result['steps']} steps, {seconds:.1f} s): top-1 {result['top1']:.2f}"
        )
    write_json(
        args.out,
        {
            "name": record["name"],
            "parent": record.get("parent", ""),
            "generation": record.get("generation", 0),
            "method": record["method"],
            "method_label": record.get("method_label", record["method"]),
            "finetune": results,
            "parameters": count_parameters(backbone),
            **clock.summary(),
        },
    )


if __name__ == "__main__":
    main()
