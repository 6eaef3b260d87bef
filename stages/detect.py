"""Stage detect: detection fine-tuning of one model, scored by COCO AP on the test split.

The run's backbone is loaded and becomes the backbone of torchvision's Faster R-CNN (its
stage maps feed a C4 head or a feature pyramid, bowflow/detection.py), the whole detector
is fine-tuned on data/detection/train.parquet and scored on test.parquet with pycocotools:
AP50, AP75 and AP (IoU .50:.95), in %. MoCo's / OBoW's VOC protocol and where this differs:
docs/fidelity/detection.md.

    python -m stages.detect --data data/detection --model data/models/seed0/g1/model.pt \
        --out data/metrics/seed0/detect/g1.json --seed 0 --device auto --steps 300 ...
"""

from __future__ import annotations

import time
from pathlib import Path

from bowflow.cli import parse_section
from bowflow.data.box_tables import read_boxes
from bowflow.detection import DetectionRecipe, DetectorSpec, fine_tune_detector
from bowflow.io import write_json
from bowflow.models import load_model
from bowflow.networks import count_parameters
from bowflow.runtime import StageClock, log, resolve_device, seed_everything
from bowflow.sections import DetectionParams


def paths(parser):
    parser.add_argument("--data", type=Path, required=True, help="prepare_detection's folder")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--device", default="auto")


def spec_and_recipe(params: DetectionParams, num_classes: int) -> tuple[DetectorSpec, DetectionRecipe]:
    """The section's detector and schedule (lr scaled by batch_size / 16, the reference's batch)."""
    spec = DetectorSpec(
        num_classes=num_classes,
        head=params.head,
        train_sizes=tuple(params.train_sizes or [params.image_size]),
        test_size=params.test_size or params.image_size,
        anchor_sizes=tuple(params.anchor_sizes),
        roi_size=params.roi_size,
        fpn_channels=params.fpn_channels,
        mlp_dim=params.mlp_dim,
        proposals=params.proposals,
        roi_batch=params.roi_batch,
    )
    recipe = DetectionRecipe(
        steps=params.steps,
        batch_size=params.batch_size,
        lr=params.lr * params.batch_size / 16,
        weight_decay=params.weight_decay,
        warmup_steps=params.warmup_steps,
        precise_bn_steps=params.precise_bn_steps,
    )
    return spec, recipe


def main(argv=None):
    params, args = parse_section(DetectionParams, argv, __doc__, paths)
    device = resolve_device(args.device)
    clock = StageClock(device)
    seed_everything(args.seed)
    train, test = read_boxes(args.data / "train.parquet"), read_boxes(args.data / "test.parquet")
    backbone, normalizer, record = load_model(args.model, device)
    spec, recipe = spec_and_recipe(params, len(train.class_names))
    started = time.perf_counter()
    try:
        result = fine_tune_detector(backbone, normalizer, train, test, spec, recipe, args.seed, device)
    except ValueError as error:
        raise SystemExit(f"detection: {record['name']}: {error}") from None
    seconds = time.perf_counter() - started
    log(
        f"{record['name']}: detection fine-tuned ({result['steps']} steps on {result['train_images']} images, "
        f"{seconds:.1f} s): AP50 {result['ap50']:.2f} AP75 {result['ap75']:.2f} AP {result['ap']:.2f}"
    )
    write_json(
        args.out,
        {
            "name": record["name"],
            "parent": record.get("parent", ""),
            "generation": record.get("generation", 0),
            "method": record["method"],
            "method_label": record.get("method_label", record["method"]),
            "detection": {**result, "images": result["train_images"], "seconds": round(seconds, 2), "head": spec.head},
            "parameters": count_parameters(backbone),
            **clock.summary(),
        },
    )


if __name__ == "__main__":
    main()
