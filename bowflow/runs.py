"""What the training stages share: their flags, a `TrainingRun` of them, building a method
around a fresh backbone, training it with checkpoints, and writing the model, metrics and curve."""

from __future__ import annotations

import argparse
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bowflow import distributed
from bowflow.cli import parse_section
from bowflow.compute import decide_compute, parse_mode
from bowflow.io import write_csv, write_json
from bowflow.models import Normalizer, save_model
from bowflow.networks import BackboneSpec, build_backbone, count_parameters
from bowflow.roles.base import TrainParams, get_method
from bowflow.runtime import StageClock, configure_threads, log, resolve_device, seed_everything
from bowflow.train import TrainingFailed, fingerprint, train


def add_training_arguments(parser) -> None:
    """The paths and run flags both training stages (teacher, student) take."""
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, default=Path("data/checkpoints"))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--gpus",
        type=gpu_request,
        default=0,
        help="params.yaml's resources.KIND.gpus: "
        "GPUs this stage asks for; more than torch sees here stops it before any work",
    )
    parser.add_argument(
        "--compute",
        default="auto",
        type=compute_mode,
        help="params.yaml's compute: auto or a named mode such as fp32-channels-last-t1 (bowflow.compute.parse_mode)",
    )


def gpu_request(text: str) -> int:
    """--gpus's check: a stage asking for N GPUs where torch sees fewer stops here, before
    any work, instead of training on the CPU without a word."""
    import torch

    asked = int(text)
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if asked > seen:
        raise argparse.ArgumentTypeError(
            f"{asked} GPU(s) asked for (params.yaml resources.KIND.gpus), but torch sees {seen} on "
            f"this machine (torch.cuda.is_available() is {torch.cuda.is_available()}): set the "
            f"stage kind's gpus: 0 to train on the CPU, or run the stage where the GPUs are"
        )
    return asked


def compute_mode(text: str) -> str:
    """--compute's check: a mode `parse_mode` reads (so a bad one stops before any work,
    with argparse's usage line, not a traceback after the data are loaded)."""
    try:
        parse_mode(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def check_stage(method: str, stage: str) -> type:
    """The method class, if its role is trained by `stage`; SystemExit naming --method if not."""
    cls = get_method(method)
    if cls.stage != stage:
        raise SystemExit(
            f"--method: '{method}' is a {cls.role} method, trained by stage "
            f"'{cls.stage}' (params section {cls.section}:), not by '{stage}'"
        )
    return cls


@dataclass
class TrainingRun:
    """One training stage's run: what it trains, on which rows, and where it writes.

    `record` (name, parent, generation, seed) is stored in the model file. The method gets its
    role's typed `Inputs`, filled from what every stage has (the images' `normalizer` and
    `image_size`, their `labels` [N] and `num_classes`) and the stage's own `inputs` (BoW
    codes, a parent model, a teacher); `input_fingerprint` identifies those stage inputs in
    the checkpoint's run id. `finish(model_path) -> dict`, when given, adds metrics computed
    on the written model (a classifier's test top-1). `compute`: the compute mode
    (params.yaml's `compute:`, see bowflow.compute.decide_compute).
    """

    params: TrainParams  # the method's typed section of params.yaml
    prepared: Path  # data/prepared: the Parquet tables of stage prepare
    model: Path  # model.pt to write
    metrics: Path  # the stage's metrics JSON
    history: Path  # per-epoch curve (CSV)
    checkpoints: Path  # folder of the resumable per-epoch checkpoints
    seed: int
    device: str  # auto | cpu | cuda
    record: dict
    compute: str = "auto"
    inputs: dict = field(default_factory=dict)
    input_fingerprint: str = ""
    finish: typing.Callable[[Path], dict] | None = None

    @classmethod
    def from_args(cls, params: TrainParams, args: argparse.Namespace, record: dict, **more) -> TrainingRun:
        """The run of a training stage's parsed flags (`add_training_arguments`)."""
        return cls(
            params,
            Path(args.prepared),
            args.model,
            args.metrics,
            args.history,
            args.checkpoints,
            args.seed,
            args.device,
            record,
            compute=args.compute,
            **more,
        )


def run_training(run: TrainingRun) -> dict:
    """Train `run.params.method` on the rows its role trains on (`training_images`: those
    self-supervised stages may use, or every labelled train row for supervised and
    distillation runs) and write model, metrics and curve. Returns the metrics written to
    `run.metrics`. A diverged or collapsed run exits with a message naming run and epoch.

    Under torchrun (`bin/launch N`), every process runs this function on the same data;
    they train as one (bowflow.distributed) and rank 0 alone writes the files.
    """
    world, device = distributed.start(resolve_device(run.device))
    try:
        return _run_training(world, device, run)
    finally:
        distributed.stop()


def _run_training(world, device, run: TrainingRun) -> dict:
    params, seed, record = run.params, run.seed, run.record
    clock = StageClock(device)
    seed_everything(seed)
    cls = get_method(params.method)
    images, labels, manifest = cls.training_images(run.prepared, params)
    image_size = images.shape[-1]
    normalizer = Normalizer.fit(images)
    spec = BackboneSpec.of(params)
    backbone = build_backbone(spec)
    given = {
        "normalizer": normalizer,
        "image_size": image_size,
        "labels": labels.to(device),
        "num_classes": len(manifest["class_names"]),
        **run.inputs,
    }
    method = cls(params, backbone, cls.inputs(**given)).to(device)
    # logged; recorded in the metrics below. Rank 0 decides (it may measure) for every process.
    decision = distributed.broadcast_object(decide_compute(device, run.compute) if world.is_main else None)
    compute = dict(decision.choice)
    if world.size > 1 and device.type == "cpu":  # N processes share the machine's cores
        compute["threads"] = max(1, (os.cpu_count() or 1) // world.local_size)
        decision.choice = compute
        decision.reason += f"; {compute['threads']} thread(s) in each of {world.local_size} processes"
    configure_threads(compute["threads"])
    if compute["compile"]:  # in place: state_dict keys and the model file unchanged
        backbone.compile()
    # an empty arch_params is left out: a run without settings keeps its run id (and checkpoint)
    identity = {k: v for k, v in asdict(params).items() if k != "arch_params" or v}
    run_id = fingerprint(identity, seed, manifest["content_hash"], len(images), run.input_fingerprint, compute)
    # one file per run and seed: the seeds of one run train side by side
    checkpoint = run.checkpoints / f"{run.model.parent.name}-seed{seed}-{params.method}.ckpt"
    log(
        f"training {params.method} on {world.size} process(es) ({params.arch}, "
        f"{count_parameters(backbone):,} backbone parameters) "
        f"on {len(images)} images of {image_size}x{image_size} for {params.epochs} epochs on {device}"
    )
    try:
        history = train(
            method,
            images.to(device),
            params,
            seed,
            checkpoint,
            run_id,
            bf16=compute.get("bf16", False),
            channels_last=compute.get("channels_last", False),
            run_name=record["name"],
        )
    except TrainingFailed as failure:
        raise SystemExit(f"{params.method}: {failure}") from None
    if not world.is_main:  # rank 0 writes the model, curve and metrics
        return {}
    save_model(
        run.model,
        method.export_backbone(),
        normalizer,
        params,
        image_size,
        extra={**record, "method_label": method.label, **method.export_extra()},
    )
    write_csv(run.history, history)
    last = history[-1]
    metrics = {
        **record,
        "method": params.method,
        "method_label": method.label,
        **spec.record(omit_empty=True),  # arch_params only when a run gives some
        "batch_size": params.batch_size,
        "processes": world.size,
        **decision.record(),
        "final": {k: v for k, v in last.items() if k != "epoch"},
        "epochs": params.epochs,
        "train_images": len(images),
        "parameters": count_parameters(backbone),
        "head_parameters": count_parameters(method) - count_parameters(backbone),
        "trained_parameters": count_parameters(method),
        "images_per_second": round(sum(h["images_per_second"] for h in history) / len(history), 1),
        "device": str(device),
        **clock.summary(),
    }
    if run.finish is not None:
        metrics.update(run.finish(run.model))
    write_json(run.metrics, metrics)
    checkpoint.unlink(missing_ok=True)
    return metrics


def parse_method_section(
    argv: list[str] | None, description: str, extra: typing.Callable[[argparse.ArgumentParser], None]
):
    """Like `bowflow.cli.parse_section`, with the dataclass chosen by the `--method` flag's
    value (a training stage's flags)."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--method", required=True)
    known, _ = peek.parse_known_args(argv)
    try:
        params_cls = get_method(known.method).Params
    except ValueError as error:
        raise SystemExit(f"--method: {error}") from None
    return parse_section(params_cls, argv, description, extra)
