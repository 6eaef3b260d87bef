"""Stage import: a `pretrain:` or `teachers:` entry with `method: import` (bowflow/weights.py)
as a run: its weights file, checked against its architecture before anything else is read,
written as the run's model.pt, which the evaluate, vocab, student and distill stages read as
they read a trained run's.

    python -m stages.import_weights --section pretrain --prepared data/prepared \
        --model data/models/seed0/published/model.pt --metrics data/metrics/seed0/train/published.json \
        --seed 0 --device auto --method import --weights weights/resnet18.pth --format torchvision \
        --arch timm/resnet18

Metrics: the file (path, sha256, format), the architecture and its parameters; a teacher's
test top-1 as the distill stage scores a trained one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bowflow.cli import parse_section
from bowflow.data.prepared import load_labelled_split, load_ssl_split, read_manifest
from bowflow.io import write_json
from bowflow.models import Normalizer, classifier_top1, save_model
from bowflow.networks import build_backbone, count_parameters
from bowflow.runtime import StageClock, log, resolve_device
from bowflow.weights import ImportParams, check_teacher, file_sha256, read_import


def arguments(parser) -> None:
    parser.add_argument(
        "--section",
        choices=("pretrain", "teachers"),
        required=True,
        help="the params section of the run (teachers: needs a classifier)",
    )
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--device", default="auto")


def main(argv=None):
    params, args = parse_section(ImportParams, argv, __doc__, arguments)
    teacher = args.section == "teachers"
    try:  # the file first: a wrong one stops before any other work
        imported = read_import(params)
        if teacher:
            check_teacher(imported, params.weights, len(read_manifest(args.prepared)["class_names"]))
    except ValueError as error:
        raise SystemExit(f"{args.section}.{args.model.parent.name}.weights: {error}") from None
    device = resolve_device(args.device)
    clock = StageClock(device)
    run = imported.params
    spec = run.backbone_spec
    backbone = build_backbone(spec)
    backbone.load_state_dict(imported.state_dict)
    backbone.to(device).eval()
    images, _, _ = load_labelled_split(args.prepared, "train") if teacher else load_ssl_split(args.prepared)
    normalizer = Normalizer.fit(images) if imported.mean is None else Normalizer(imported.mean, imported.std)
    extra = {
        "name": args.model.parent.name,
        "parent": "",
        "generation": 0,
        "seed": args.seed,
        "method_label": f"Imported {run.arch}",
        "weights": params.weights,
        "weights_format": imported.format,
    }
    parameters = count_parameters(backbone)
    classifier = None
    if teacher:
        weight = imported.classifier["weight"]
        if weight.shape[1] != backbone.out_channels:
            raise SystemExit(
                f"teachers.{extra['name']}.weights: {params.weights}: the classifier reads "
                f"{weight.shape[1]} features, but arch '{run.arch}' pools {backbone.out_channels}"
            )
        classifier = torch.nn.Linear(weight.shape[1], weight.shape[0])
        classifier.load_state_dict({k: imported.classifier[k] for k in ("weight", "bias")})
        extra |= {
            "classifier": {k: v.detach().cpu() for k, v in classifier.state_dict().items()},
            "num_classes": int(weight.shape[0]),
        }
        parameters_with_head = parameters + count_parameters(classifier)
    save_model(args.model, backbone, normalizer, run, images.shape[-1], extra=extra)
    metrics = {
        **{k: extra[k] for k in ("name", "parent", "generation", "seed", "method_label", "weights", "weights_format")},
        "method": run.method,
        **spec.record(omit_empty=True),
        "weights_sha256": file_sha256(params.weights),
        "normalize": params.normalize,
        "parameters": parameters,
        "epochs": 0,
        "train_images": 0,
        "device": str(device),
    }
    if teacher:
        test_images, test_labels, _ = load_labelled_split(args.prepared, "test")
        metrics |= {
            "top1": classifier_top1(backbone, normalizer, classifier, test_images, test_labels, 256, device),
            "test_images": len(test_images),
            "trained_parameters": parameters_with_head,
        }
    metrics |= clock.summary()
    write_json(args.metrics, metrics)
    log(
        f"imported {params.weights} ({imported.format}) as {extra['name']}: {run.arch}, "
        f"{parameters:,} backbone parameters" + (f", test top-1 {metrics['top1']:.2f}" if teacher else "")
    )


if __name__ == "__main__":
    main()
