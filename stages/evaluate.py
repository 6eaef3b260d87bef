"""Stage evaluate: linear probe, k-NN and few-shot accuracy of one model's frozen features.

Features are extracted once per model and shared by the three protocols:
- linear probe: base classes, train split -> test split;
- k-NN: all classes, train split -> test split;
- few-shot: novel classes (never trained on), images of both splits, cosine prototypes.

    python -m stages.evaluate --prepared data/prepared --model data/models/g1/model.pt \
        --out data/metrics/eval/g1.json --seed 0 --device auto --layer last ...
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from bowflow import evaluation
from bowflow.cli import parse_section
from bowflow.data.prepared import load_prepared, read_manifest
from bowflow.io import write_json
from bowflow.models import load_model, pooled_features
from bowflow.networks import count_parameters
from bowflow.runtime import StageClock, log, resolve_device, seed_everything
from bowflow.sections import EvalParams


def paths(parser):
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--device", default="auto")


def class_mask(labels: torch.Tensor, class_names: list[str], keep: list[str]) -> torch.Tensor:
    return torch.isin(labels, torch.tensor([class_names.index(c) for c in keep]))


def main(argv=None):
    params, args = parse_section(EvalParams, argv, __doc__, paths)
    manifest = read_manifest(args.prepared)
    try:
        params.check_against(manifest)  # impossible shots stop here, before any work
    except ValueError as error:
        raise SystemExit(f"evaluate: {error}") from None
    device = resolve_device(args.device)
    clock = StageClock(device)
    seed_everything(args.seed)
    backbone, normalizer, record = load_model(args.model, device)
    train, test = load_prepared(args.prepared, "train"), load_prepared(args.prepared, "test")
    names = manifest["class_names"]
    n_images = len(train["labels"]) + len(test["labels"])
    # Features and protocols in float32 whatever the training compute mode and whatever
    # autocast region a caller may be in (docs/precision.md): under bf16 autocast the
    # k-NN similarity product would be bf16 too (it then fails in scatter_add_).
    with evaluation.full_precision():
        log(f"extracting {params.layer} features of {record['name']} for {n_images} images")
        started = time.perf_counter()
        f_train = pooled_features(
            backbone, normalizer, train["images"], params.layer, params.batch_size, device, progress="features (train)"
        )
        f_test = pooled_features(
            backbone, normalizer, test["images"], params.layer, params.batch_size, device, progress="features (test)"
        )
        if f_train.dtype != torch.float32 or f_test.dtype != torch.float32:
            raise SystemExit(
                f"evaluate: features came out as {f_train.dtype}/{f_test.dtype}, "
                "expected torch.float32 (docs/precision.md)"
            )
        seconds = time.perf_counter() - started
        log(f"features {list(f_train.shape[1:])} in {seconds:.1f} s ({n_images / seconds:.0f} images/s)")
        y_train, y_test = train["labels"], test["labels"]

        base_train, base_test = (
            class_mask(y_train, names, manifest["base_classes"]),
            class_mask(y_test, names, manifest["base_classes"]),
        )
        linear = evaluation.linear_probe(
            f_train[base_train],
            y_train[base_train],
            f_test[base_test],
            y_test[base_test],
            num_classes=len(names),
            epochs=params.linear_epochs,
            seed=args.seed,
        )
        knn = evaluation.knn_accuracy(
            f_train, y_train, f_test, y_test, num_classes=len(names), k=params.knn_k, temperature=params.knn_temperature
        )
        novel_train, novel_test = (
            class_mask(y_train, names, manifest["novel_classes"]),
            class_mask(y_test, names, manifest["novel_classes"]),
        )
        few = evaluation.few_shot(
            torch.cat([f_train[novel_train], f_test[novel_test]]),
            torch.cat([y_train[novel_train], y_test[novel_test]]),
            n_way=params.few_shot_way,
            shots=params.few_shot_shots,
            n_query=params.few_shot_queries,
            n_episodes=params.few_shot_episodes,
            seed=args.seed,
        )
    metrics = {
        "name": record["name"],
        "parent": record.get("parent", ""),
        "generation": record.get("generation", 0),
        "method": record["method"],
        "method_label": record.get("method_label", record["method"]),
        "layer": params.layer,
        "feature_dim": f_train.shape[1],
        "feature_dtype": str(f_train.dtype).removeprefix("torch."),
        "linear_base": round(linear["accuracy"], 3),
        "knn_all": round(knn, 3),
        "few_shot": {str(n): {k: round(v, 3) for k, v in r.items()} for n, r in few.items()},
        "parameters": count_parameters(backbone),
        "feature_images_per_second": round(n_images / seconds, 1),
        **clock.summary(),
    }
    write_json(args.out, metrics)
    log(
        f"{record['name']}: linear {metrics['linear_base']:.2f} k-NN {metrics['knn_all']:.2f} "
        + " ".join(f"{n}-shot {r['mean']:.2f}±{r['ci95']:.2f}" for n, r in few.items())
    )


if __name__ == "__main__":
    main()
