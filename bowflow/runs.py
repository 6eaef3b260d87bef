"""What the training stages share: the SSL training images, building a method around a
fresh backbone, training it with checkpoints, and writing the model, metrics and curve."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from bowflow.datasets import load_prepared, read_manifest
from bowflow.io import write_csv, write_json
from bowflow.methods import get_method
from bowflow.methods.base import TrainParams
from bowflow.models import Normalizer, save_model
from bowflow.networks import build_backbone, count_parameters
from bowflow.runtime import StageClock, configure_threads, log, resolve_device, seed_everything
from bowflow.compute import decide_compute
from bowflow.train import fingerprint, train


def add_training_arguments(parser) -> None:
    """The paths and run flags both training stages (teacher, student) take."""
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, default=Path("data/checkpoints"))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--device", default="auto")


def ssl_rows(labels: torch.Tensor, manifest: dict) -> torch.Tensor:
    """Rows of the train split that self-supervised stages may use, in a fixed order.

    The data parameters recorded in the manifest decide: `ssl_classes` is 'base' (the
    few-shot protocol: novel classes are never seen) or 'all'; `ssl_max_images` > 0 keeps
    a seeded random subset.
    """
    source = manifest["source"]
    names = manifest["class_names"]
    allowed = manifest["base_classes"] if source["ssl_classes"] == "base" else names
    allowed_ids = torch.tensor([names.index(c) for c in allowed])
    rows = torch.nonzero(torch.isin(labels, allowed_ids)).flatten()
    limit = source["ssl_max_images"]
    if 0 < limit < len(rows):
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(source["seed"]))[:limit]
        rows = rows[keep.sort().values]
    return rows


def load_ssl_images(prepared: str | Path) -> tuple[torch.Tensor, dict]:
    """-> (uint8 images [N_ssl, 3, H, W], manifest)."""
    manifest = read_manifest(prepared)
    train = load_prepared(prepared, "train")
    rows = ssl_rows(train["labels"], manifest)
    return train["images"][rows].contiguous(), manifest


def run_training(params: TrainParams, prepared: str | Path, out_model: Path, metrics_path: Path,
                 history_path: Path, checkpoint_dir: Path, seed: int, device_name: str,
                 record: dict, context: dict | None = None,
                 init_state: dict | None = None) -> dict:
    """Train `params.method` on the SSL images and write model, metrics and curve.

    `record` (name, parent, generation) is stored in the model file; `context` is
    method-specific (e.g. BoW codes); `init_state` optionally warm-starts the backbone.
    Returns the metrics written to `metrics_path`.
    """
    device = resolve_device(device_name)
    clock = StageClock(device)
    seed_everything(seed)
    images, manifest = load_ssl_images(prepared)
    image_size = images.shape[-1]
    normalizer = Normalizer.fit(images)
    backbone = build_backbone(params.arch, params.width, params.depth)
    if init_state is not None:
        backbone.load_state_dict(init_state)
    context = {"normalizer": normalizer, "image_size": image_size, **(context or {})}
    method = get_method(params.method)(params, backbone, context).to(device)
    decision = decide_compute(device)               # logged; recorded in the metrics below
    compute = decision.choice
    configure_threads(compute["threads"])
    if compute["compile"]:          # in place: state_dict keys and the model file unchanged
        backbone.compile()
    run_id = fingerprint(asdict(params), seed, manifest["content_hash"], len(images),
                         context.get("fingerprint", ""), compute)
    checkpoint = checkpoint_dir / f"{out_model.parent.name}-{params.method}.ckpt"
    log(f"training {params.method} ({params.arch}, {count_parameters(backbone):,} backbone parameters) "
        f"on {len(images)} images of {image_size}x{image_size} for {params.epochs} epochs on {device}")
    history = train(method, images.to(device), params, seed, checkpoint, run_id,
                    bf16=compute.get("bf16", False), channels_last=compute.get("channels_last", False))
    save_model(out_model, backbone, normalizer, params, image_size, extra=record)
    write_csv(history_path, history)
    last = history[-1]
    metrics = {**record, "method": params.method, **decision.record(), "final": {k: v for k, v in last.items() if k != "epoch"},
               "epochs": params.epochs, "train_images": len(images),
               "parameters": count_parameters(backbone),
               "head_parameters": count_parameters(method) - count_parameters(backbone),
               "images_per_second": round(sum(h["images_per_second"] for h in history) / len(history), 1),
               "device": str(device), **clock.summary()}
    write_json(metrics_path, metrics)
    checkpoint.unlink(missing_ok=True)
    return metrics
