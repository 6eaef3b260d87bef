"""Peer benchmark: bowflow's BYOL against lightly's BYOL, same images, backbone and budget.

What it measures, per side: training throughput (training images per second: optimizer
steps x batch / training seconds (the budget's measure, below), each image counted once, not
per view; also per CPU-second of the training process, lightly's DataLoader workers
included) and the quality reached in the same budget of training seconds, as k-NN top-1
(`bowflow.evaluation.knn_accuracy`, k 20, T 0.07, cosine) on the
globally pooled last-stage features (`bowflow.models.pooled_features`) of the clean
training images (the bank) and the test images. The randomly initialised backbone both
sides start from is evaluated too, as the floor. Printed: a table per seed, the ratios
ours/lightly (images/s) and ours - lightly (k-NN points) with the gap in training seconds,
a summary over the seeds, the machine (`lscpu` model name,
avx2/avx512*/amx* flags) and a `RESULT {json}` line.

The two sides:
- ours: `bowflow.methods.byol.BYOL` through `bowflow.train.train` (the trainer every
  pipeline stage uses), on the images as one in-memory uint8 tensor, views built batched
  by the method; eager fp32 (bf16/channels-last off, whatever the machine's saved compute
  choice), default `BYOLParams` except width, batch size and epochs (set by the budget).
- lightly 1.6 (`benchmarks/peer_lightly_byol.py`): written as lightly's BYOL example
  (its `BYOLTransform` per PIL image, a `torch.utils.data.DataLoader` with shuffle and
  drop_last, `BYOLProjectionHead`/`BYOLPredictionHead`, `NegativeCosineSimilarity`,
  `update_momentum` with `cosine_schedule`), run as a subprocess of a throw-away virtual
  env. Nothing is installed into the project: `python -m venv --without-pip` under a temp
  folder (or `--venv DIR`, kept and reused), a `.pth` file in its site-packages pointing at
  the project venv's site-packages (torch/torchvision/numpy/PIL come from there, nothing big
  is downloaded), then the project's pip installs into it (`pip --python VENV/bin/python
  install --no-deps`) `lightly==1.6.*` plus the only modules the parts used import that
  torch does not bring: `lightning-utilities` (imported by `lightly.transforms`) and
  `packaging` (imported by lightning-utilities). The runner imports from the project only
  `bowflow/networks.py` and the architecture modules it registers (backbone, convnets, vit,
  timm_backbones: torch alone), so the backbone is the same `convnet`, and the standard-library
  budget rule `bowflow/budget.py`.

Same for both: the images (a seeded subset of the train split; k-NN on the test split),
the backbone (`convnet`, same width, and the same initial weights: the parent builds it
once from the seed and both sides load that state), batch size, torch thread count
(`torch.set_num_threads(--threads)`; the lightly DataLoader gets `--workers`, default 0,
at most --threads), run one after the other (the order alternating between seeds), the
per-channel normalisation (fitted on the training images, as the pipeline does), the
optimizer and schedules: SGD momentum 0.9 Nesterov, peak lr 0.1 with 1 epoch of linear
warm-up then cosine to 0, per step (lightly: `CosineWarmupScheduler` per step); weight
decay 5e-4 on conv/linear weights, none on biases and BN (lightly:
`get_weight_decay_parameters`); EMA momentum 0.99 -> 1 on a cosine over all steps (lightly:
`cosine_schedule(step, total_steps, 0.99, 1)`); projector and predictor Linear(no bias)-
BN-ReLU-Linear, hidden 512, output 128; views: random resized crop to the full size, area
0.2-1, colour jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, Gaussian blur p 1.0 / 0.1
with sigma 0.1-2.0 px scaled by size/224 (BYOL's asymmetric recipe), solarize p 0 / 0.2.

Differences the two libraries leave (stated, not hidden):
- loss scale: lightly's example loss 0.5 (-cos(p0, z1) - cos(p1, z0)) has 1/4 of the
  gradient of bowflow's (2 - 2cos) + (2 - 2cos); the lightly side runs lr x4 and weight
  decay / 4, which makes SGD's updates (momentum and Nesterov included) identical;
- lightly's example forwards each view separately (BatchNorm statistics over B images per
  view, 4 forward calls per step); bowflow forwards both views as one batch of 2B (one
  online and one target call);
- lightly moves the EMA before each step (from the previous step's weights), bowflow after
  it; lightly's `update_momentum` leaves the target's BatchNorm running statistics alone,
  bowflow copies them (neither matters for training: BN runs on batch statistics);
- augmentations: lightly applies torchvision/PIL ops per image (PIL's Gaussian blur, with
  its own kernel extent; PIL solarize at 128/255), bowflow batched tensor ops
  (`bowflow.augment`: bilinear crop-resize by one grid_sample per batch, a 3-tap blur on
  32 px); the random streams necessarily differ, seeded from the same seed;
- lightly's `cosine_schedule` ends at exactly 1 on the last step (bowflow one step later).

Same budget, by measured time (`bowflow/budget.py`, one rule for both sides): each
side trains until its measured training time reaches --seconds. Its training time is the sum
of its epochs' seconds, each from asking for the epoch's first batch (ours: the first
`views` call, its batch a slice of the in-memory images) to the end of its last
optimizer step, EMA update included, so lightly's DataLoader worker start-up is counted in every epoch it happens
(lightly's example pays it each epoch; ours has no workers), and process start, imports, model
building and the bookkeeping between epochs (ours: checkpoint save, resume after a re-plan;
lightly: worker shut-down) are counted for neither. The clock is checked after every epoch,
never within one: a side stops at the first epoch boundary at or past the budget (or at the
last epoch of its plan, which can end a little short). After each epoch the side re-plans:
epochs done + ceil(seconds left / mean of its last 3 epochs), and its lr and EMA schedules are
laid out over the planned steps (moved when the plan moves), so both finish, or nearly
finish, their schedules at the budget. There is no calibration: the first epoch, the lr
warm-up, does not depend on the plan. Either side ends within one of its epochs of the budget
(|training seconds - budget| < its longest epoch); the k-NN of both sides is taken at that
end, at equal seconds to within an epoch, and the printed `equal within` is the gap. A
faster side gets more epochs. bowflow's side stays in `bowflow.train.train`: the budget is a
hook on the method's views/after_step that times the epochs and, at the next
epoch's first step, interrupts the trainer to stop or to resume from its own epoch
checkpoint with the new plan (the trainer resumes exactly as an uninterrupted run would,
only with the new total of steps). images/s are training images / training seconds.

Seeds: --seeds S1 S2 ... runs the whole comparison once per seed (the training subset, the
shared initial weights and both sides' random streams follow the seed); the order of the two
sides alternates from seed to seed (lightly first at the first seed, or ours with
--ours-first), to spread a trend in the machine's load. The summary gives the mean, min and
max over seeds. --json PATH writes the record (benchmarks/recording.py's format; its
measurements: per seed both sides' training seconds, epochs, per-epoch seconds and plans,
k-NN, images/s, CPU seconds and history; the summary), from which `table` and
`summary_table` derive the published tables (docs/BENCHMARKS.md section 10, the README).

Commands (from the repository root):
    .venv/bin/python -m benchmarks.bench_peer --smoke --only ours      # seconds, no lightly env
    .venv/bin/python -m benchmarks.bench_peer --smoke                  # + lightly env (~30 s)
    .venv/bin/python -m benchmarks.bench_peer --seconds 900 --seeds 0 1 2 --threads 2 \
        --workers 1 --json docs/results/bench/bench_peer/run.json    # the record: ~95 min
    .venv/bin/python -m benchmarks.bench_peer --venv /tmp/peer-venv ...   # keep the env
Data: default `--source imagefolder --root ../shared/datasets/cifar10-jpeg.tar.gz` (the
CIFAR-10 JPEG tarball beside the project, read by `bowflow.data.sources.load_source`,
extracted once into the bowflow cache) at --size 32; a missing file stops with a message
naming it (and `--source digits`, which works anywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bowflow.budget import PROVISIONAL_EPOCHS, EpochBudget

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TARBALL = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
RUNNER = Path(__file__).resolve().with_name("peer_lightly_byol.py")
LIGHTLY = "lightly==1.6.*"
# What `import lightly.{loss, models.modules, models.utils, transforms, utils.scheduler}`
# needs beyond torch, torchvision, numpy and PIL (found by importing them in an env that has
# nothing else): lightly.transforms imports lightning_utilities, which imports packaging.
LIGHTLY_IMPORT_DEPS = ("lightning-utilities", "packaging")
READY = ".bowflow-peer-ready"
SIDES = ("lightly", "ours")


# ------------------------------------------------------------------ pure helpers

SMOKE = {"source": "digits", "size": 8, "width": 4, "images": 256, "test_images": 64, "batch_size": 32, "seconds": 2.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="imagefolder", choices=["imagefolder", "digits"])
    parser.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_TARBALL,
        help="imagefolder: the CIFAR-10 JPEG tarball (or any image folder)",
    )
    parser.add_argument("--size", type=int, default=32, help="image side, px")
    parser.add_argument(
        "--images", type=int, default=5000, help="training images (seeded subset of the train split; 0 = all)"
    )
    parser.add_argument(
        "--test-images", type=int, default=2000, help="k-NN test images (seeded subset of the test split; 0 = all)"
    )
    parser.add_argument(
        "--seconds", type=float, default=240.0, help="training budget of each side: measured training seconds"
    )
    parser.add_argument(
        "--width", type=int, default=16, help="convnet width, both sides (16: the CPU preset's BYOL width)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument(
        "--workers", type=int, default=0, help="lightly DataLoader workers (at most --threads; 0: single process)"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="one comparison per seed (data subset, initial weights, random streams)",
    )
    parser.add_argument(
        "--venv",
        type=Path,
        default=None,
        help="folder of the lightly env (kept and reused; default: a temp folder, removed)",
    )
    parser.add_argument("--only", choices=["both", *SIDES], default="both")
    parser.add_argument(
        "--ours-first",
        action="store_true",
        help="run ours before lightly at the first seed (default: lightly first); "
        "the order alternates from seed to seed",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny, unless given: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in SMOKE.items()),
    )
    args = parser.parse_args(argv)
    if args.smoke:  # the tiny sizes, where not given on the command line
        for key, value in SMOKE.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    for name in ("size", "width", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    if args.images < 0 or args.test_images < 0:
        parser.error("--images and --test-images must be >= 0")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must be distinct")
    if not 0 <= args.workers <= args.threads:
        parser.error(
            f"--workers must be between 0 and --threads ({args.threads}): the lightly side gets no more cores than ours"
        )
    return args


def side_order(seed_index: int, ours_first: bool) -> tuple[str, ...]:
    """The order of the two sides at the seed_index-th seed: alternating, starting with
    lightly (or ours when ours_first)."""
    return SIDES[::-1] if (seed_index % 2 == 1) != ours_first else SIDES


def subset(n_total: int, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random subset of n of range(n_total) (n 0 or >= n_total: all)."""
    if n <= 0 or n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def lscpu_machine(lscpu_text: str | None = None) -> dict:
    """{"model": lscpu's model name, "flags": the avx2/avx512*/amx* flags, "cpus": count}."""
    if lscpu_text is None:
        try:
            lscpu_text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            lscpu_text = ""
    model, flags, cpus = "", [], ""
    for line in lscpu_text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "model name" and not model:
            model = value
        elif key == "flags":
            flags = [f for f in value.split() if f == "avx2" or f.startswith(("avx512", "amx"))]
        elif key == "cpu(s)" and not cpus:
            cpus = value
    return {"model": model or "unknown", "flags": flags, "cpus": cpus}


def ratios(ours: dict, lightly: dict) -> dict:
    """images/s ours / lightly, k-NN ours - lightly (points), and how equal the training
    seconds were: ours - lightly, and the longer of the two sides' longest epochs (the
    budget rule keeps each side within its longest epoch of the budget)."""
    return {
        "images_per_second_ratio": round(ours["images_per_second"] / lightly["images_per_second"], 3),
        "knn_points": round(ours["knn"] - lightly["knn"], 2),
        "seconds_gap": round(ours["seconds"] - lightly["seconds"], 3),
        "longest_epoch_seconds": round(max(max(ours["epoch_seconds"]), max(lightly["epoch_seconds"])), 3),
    }


def summarize(
    per_seed: list[dict],
    sides: tuple[str, ...] = SIDES,
    side_keys: tuple[str, ...] = ("knn", "seconds", "epochs"),
    pair_keys: tuple[str, ...] = ("knn_points", "images_per_second_ratio", "seconds_gap"),
) -> dict:
    """Mean, min and max over seeds of each side's `side_keys` (the untrained floor's too),
    and of the per-seed comparisons `pair_keys` (where both sides ran)."""

    def stats(values: list[float]) -> dict:
        return {"mean": round(sum(values) / len(values), 3), "min": min(values), "max": max(values)}

    out: dict = {"seeds": [r["seed"] for r in per_seed]}
    for side in (*sides, "init"):
        rows = [r["sides"][side] for r in per_seed if side in r["sides"]]
        if rows:
            out[side] = {key: stats([row[key] for row in rows]) for key in side_keys if key in rows[0]}
    for key in pair_keys:
        values = [r[key] for r in per_seed if key in r]
        if values:
            out[key] = stats(values)
    return out


def format_table(rows: dict[str, dict]) -> str:
    head = (
        f"{'side':<10}{'epochs':>7}{'steps':>7}{'train s':>9}{'wall s':>9}{'images/s':>10}"
        f"{'img/CPU-s':>10}{'k-NN top-1':>11}"
    )
    lines = [head]
    for name, r in rows.items():
        if "epochs" not in r:  # the untrained floor
            lines.append(f"{name:<10}{'-':>7}{'-':>7}{'-':>9}{'-':>9}{'-':>10}{'-':>10}{r['knn']:>10.2f}%")
            continue
        lines.append(
            f"{name:<10}{r['epochs']:>7}{r['steps']:>7}{r['seconds']:>9.1f}{r['wall_seconds']:>9.1f}"
            f"{r['images_per_second']:>10.1f}{r['images'] / r['cpu_seconds']:>10.1f}"
            f"{r['knn']:>10.2f}%"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ data


def load_images(args, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """-> (train uint8 [N, 3, S, S], train labels [N], test uint8 [M, 3, S, S], test labels, what)."""
    from bowflow.data.sources import load_source

    root = args.root
    if args.source == "imagefolder" and not Path(root).exists():
        raise SystemExit(
            f"bench_peer: data file not found: {root} (the CIFAR-10 JPEG tarball, "
            f"cifar10-jpeg.tar.gz, expected in ../shared/datasets/ beside the "
            f"project). Point --root at it, or run with --source digits."
        )
    train, test, report = load_source(args.source, str(root), image_size=args.size, seed=seed)

    def pick(s, n, seed):
        rows = subset(len(s), n, seed)
        images = torch.from_numpy(s.images).permute(0, 3, 1, 2)[rows].contiguous()
        return images, torch.from_numpy(s.labels)[rows].contiguous()

    x_train, y_train = pick(train, args.images, seed)
    x_test, y_test = pick(test, args.test_images, seed + 1)
    what = (
        f"{args.source} ({report.get('layout')}), {len(x_train)} of {len(train)} train and "
        f"{len(x_test)} of {len(test)} test images at {args.size} px, {len(train.class_names)} classes"
    )
    return x_train, y_train, x_test, y_test, what


# ------------------------------------------------------------------ ours


def byol_params(args, epochs: int):
    from bowflow.methods.byol import BYOLParams

    return BYOLParams(width=args.width, batch_size=args.batch_size, epochs=epochs)


class _Interrupt(Exception):
    """Raised by the budget hook at an epoch's first step: stop, or resume with a new plan."""


def train_within(method, images: torch.Tensor, params, seconds: float, seed: int, workdir: Path, name: str) -> dict:
    """Train `method` (built with `params`) through bowflow.train.train on uint8 `images`
    [N, 3, S, S] until its measured training time reaches `seconds`
    (bowflow.budget.EpochBudget; module docstring: the budget). Returns the budget's record
    plus steps, images, training / wall / CPU seconds, images/s, re-plans and the history."""
    from bowflow.io import load_torch
    from bowflow.train import train

    batch = min(params.batch_size, len(images))
    steps_per_epoch = len(images) // batch
    budget = EpochBudget(seconds, steps_per_epoch)

    # The hook: time each epoch from its first step's views to its last after_step return;
    # at the next epoch's first step, interrupt the trainer if the budget says stop or the
    # plan (its total of steps) changed. Nothing of the model has moved at that point.
    inner_views, inner_after = method.views, method.after_step
    clock = {"steps": 0, "start": 0.0, "go_on": True, "trainer_epochs": budget.planned}

    def views(batch_images, index, generator):
        if clock["steps"] % steps_per_epoch == 0:
            if clock["steps"] and (not clock["go_on"] or budget.planned != clock["trainer_epochs"]):
                raise _Interrupt
            clock["start"] = time.perf_counter()
        return inner_views(batch_images, index, generator)

    def after_step(step, total_steps):
        inner_after(step, total_steps)
        clock["steps"] += 1
        if clock["steps"] % steps_per_epoch == 0:
            clock["go_on"] = budget.end_epoch(time.perf_counter() - clock["start"])

    method.views, method.after_step = views, after_step
    checkpoint = workdir / f"{name}.ckpt"
    checkpoint.unlink(missing_ok=True)
    # torch imports its compiler stack at the first optimizer it builds (seconds on a loaded
    # 2-core machine): done here, before the clocks, as the peer runners build their
    # optimizer before their clocks start.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    cpu_start, start = time.process_time(), time.perf_counter()
    resumes = 0
    while True:
        clock["trainer_epochs"] = budget.planned
        try:
            train(
                method,
                images,
                replace(params, epochs=budget.planned),
                seed,
                checkpoint,
                run_id=name,
                bf16=False,
                channels_last=False,
                show_progress=False,
                run_name=name,
            )
        except _Interrupt:
            if not budget.stopped:
                resumes += 1
                continue  # resume from the epoch checkpoint with the new plan
        break
    wall_seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    if not budget.stopped:
        raise RuntimeError(f"{name}: the trainer ended before the budget said stop")
    history = load_torch(checkpoint)["history"]
    checkpoint.unlink(missing_ok=True)
    del method.views, method.after_step
    images_seen = clock["steps"] * batch
    return {
        **budget.record(),
        "steps": clock["steps"],
        "images": images_seen,
        "seconds": round(budget.elapsed, 3),
        "wall_seconds": round(wall_seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "images_per_second": round(images_seen / budget.elapsed, 2),
        "resumes": resumes,
        "history": history,
        "threads": torch.get_num_threads(),
    }


def train_ours(
    images: torch.Tensor, normalizer, init_state: dict, args, seed: int, workdir: Path
) -> tuple[torch.nn.Module, dict]:
    """bowflow's BYOL through bowflow.train.train until its measured training time reaches
    args.seconds (`train_within`)."""
    from bowflow.networks import build_backbone
    from bowflow.roles.base import get_method
    from bowflow.runtime import seed_everything

    params = byol_params(args, PROVISIONAL_EPOCHS)  # train_within lays the epochs out
    seed_everything(seed)
    backbone = build_backbone("convnet", args.width)
    backbone.load_state_dict(init_state)
    method = get_method("byol")(
        params, backbone, get_method("byol").inputs(**{"normalizer": normalizer, "image_size": args.size})
    )
    stats = train_within(method, images, params, args.seconds, seed, workdir, f"peer-ours-s{seed}")
    return method.export_backbone(), stats


def run_ours(x_train, normalizer, init_state, args, seed: int, workdir: Path) -> tuple[dict, dict]:
    torch.set_num_threads(args.threads)
    backbone, stats = train_ours(x_train, normalizer, init_state, args, seed, workdir)
    print(
        f"ours: {stats['epochs']} epochs in {stats['seconds']:.1f} training s "
        f"(budget {args.seconds:g} s, {stats['resumes']} re-plans)",
        flush=True,
    )
    return backbone.state_dict(), stats


# ------------------------------------------------------------------ lightly


def project_site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def peer_env(folder: Path, packages: tuple[str, ...], module: str) -> Path:
    """A virtual env at `folder` with `packages` (pip, no dependencies) that sees the
    project's torch; its python. Kept and reused once ready."""
    python = folder / "bin" / "python"
    if (folder / READY).exists() and python.exists():
        return python
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "_bowflow_project.pth").write_text("\n".join(project_site_packages()) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            *packages,
        ],
        check=True,
    )
    check = subprocess.run(
        [str(python), "-c", f"import {module}, torch; print({module}.__version__, torch.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not check[1].startswith(tuple(project_site_packages())):
        raise SystemExit(f"the {module} env imports torch from {check[1]}, not the project's")
    (folder / READY).write_text(f"{module} {check[0]}\n")
    print(
        f"{module} env: {module} {check[0]} in {folder}, torch from the project ({time.perf_counter() - start:.1f} s)",
        flush=True,
    )
    return python


def lightly_env(folder: Path) -> Path:
    """A virtual env at `folder` with lightly 1.6 that sees the project's torch; its python."""
    return peer_env(folder, (LIGHTLY, *LIGHTLY_IMPORT_DEPS), "lightly")


def lightly_config(args, normalizer, seed: int) -> dict:
    p = byol_params(args, 1)
    return {
        "image_size": args.size,
        "width": args.width,
        "batch_size": args.batch_size,
        "lr": p.lr,
        "momentum": p.momentum,
        "weight_decay": p.weight_decay,
        "warmup_epochs": p.warmup_epochs,
        "hidden_dim": p.hidden_dim,
        "out_dim": p.out_dim,
        "momentum_base": p.momentum_base,
        "crop_scale_min": p.crop_scale_min,
        "jitter": list(p.jitter),
        "jitter_p": p.jitter_p,
        "gray_p": p.gray_p,
        "blur_p": list(p.blur_p),
        "blur_sigma": list(p.blur_sigma),
        "solarize_p": list(p.solarize_p),
        "mean": normalizer.mean,
        "std": normalizer.std,
        "loss_scale": 4.0,
        "threads": args.threads,
        "workers": args.workers,
        "seed": seed,
        "seconds": args.seconds,
    }


def run_lightly(x_train, normalizer, init_state, args, seed: int, workdir: Path) -> tuple[dict, dict]:
    venv = args.venv or workdir / "lightly-venv"
    python = lightly_env(Path(venv))
    inputs, config, out = workdir / "lightly-inputs.pt", workdir / "lightly-config.json", workdir / "lightly"
    torch.save({"images": x_train.permute(0, 2, 3, 1).contiguous(), "init_backbone": init_state}, inputs)
    config.write_text(json.dumps(lightly_config(args, normalizer, seed), indent=1))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONNOUSERSITE": "1",
    }
    env.pop("PYTHONPATH", None)
    (out / "train.json").unlink(missing_ok=True)
    subprocess.run(
        [str(python), str(RUNNER), "--inputs", str(inputs), "--config", str(config), "--out", str(out)],
        check=True,
        env=env,
        cwd=ROOT,
    )
    stats = json.loads((out / "train.json").read_text())
    print(
        f"lightly: {stats['epochs']} epochs in {stats['seconds']:.1f} training s (budget {args.seconds:g} s)",
        flush=True,
    )
    return torch.load(out / "backbone.pt", weights_only=True), stats


# ------------------------------------------------------------------ evaluation, main


def knn_of(state: dict, args, normalizer, x_train, y_train, x_test, y_test, num_classes: int) -> float:
    from bowflow.evaluation import knn_accuracy
    from bowflow.models import pooled_features
    from bowflow.networks import build_backbone

    backbone = build_backbone("convnet", args.width)
    backbone.load_state_dict(state)
    device = torch.device("cpu")
    with torch.no_grad():
        f_train = pooled_features(backbone, normalizer, x_train, "last", 256, device)
        f_test = pooled_features(backbone, normalizer, x_test, "last", 256, device)
    return knn_accuracy(f_train, y_train, f_test, y_test, num_classes=num_classes)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    workdir = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    try:
        return _run(args, workdir, argv)
    finally:
        torch.set_num_threads(threads_before)
        shutil.rmtree(workdir, ignore_errors=True)  # the default lightly env lives here too


def run_seed(args, seed: int, order: tuple[str, ...], workdir: Path) -> dict:
    """One comparison: both sides (in `order`) and the random-init floor, at `seed`."""
    from bowflow.models import Normalizer
    from bowflow.networks import build_backbone

    x_train, y_train, x_test, y_test, what = load_images(args, seed)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    normalizer = Normalizer.fit(x_train)
    torch.manual_seed(seed)
    init_state = {k: v.clone() for k, v in build_backbone("convnet", args.width).state_dict().items()}
    print(f"\n=== seed {seed}: {what}; order {' then '.join(order)}", flush=True)

    rows: dict[str, dict] = {}
    load = {}
    for side in order:
        if args.only not in ("both", side):
            continue
        before = os.getloadavg()
        run = run_lightly if side == "lightly" else run_ours
        state, stats = run(x_train, normalizer, init_state, args, seed, workdir)
        load[side] = [round(before[0], 2), round(os.getloadavg()[0], 2)]
        torch.set_num_threads(args.threads)
        stats["knn"] = round(knn_of(state, args, normalizer, x_train, y_train, x_test, y_test, num_classes), 2)
        rows[side] = stats
    torch.set_num_threads(args.threads)
    rows["init"] = {
        "knn": round(knn_of(init_state, args, normalizer, x_train, y_train, x_test, y_test, num_classes), 2)
    }
    print(format_table(rows))
    print(
        "load average (1 min) before/after each side: "
        + ", ".join(f"{side} {a:.2f} -> {b:.2f}" for side, (a, b) in load.items())
    )
    result = {
        "seed": seed,
        "data": what,
        "order": [s for s in order if s in rows],
        "sides": {k: {key: v for key, v in r.items() if key != "history"} for k, r in rows.items()},
        "history": {k: r.get("history") for k, r in rows.items() if "history" in r},
        "loadavg": load,
    }
    if "ours" in rows and "lightly" in rows:
        result.update(ratios(rows["ours"], rows["lightly"]))
        print(
            f"images/s ours/lightly: {result['images_per_second_ratio']:.2f}x; k-NN ours - lightly: "
            f"{result['knn_points']:+.2f} points at training seconds ours - lightly "
            f"{result['seconds_gap']:+.1f} s (equal within the longest epoch, "
            f"{result['longest_epoch_seconds']:.1f} s)",
            flush=True,
        )
    return result


def _run(args, workdir: Path, argv: list[str] | None = None) -> dict:
    from benchmarks.recording import load_average

    load_before = load_average()
    wall_start = time.perf_counter()
    machine = lscpu_machine()
    print(
        f"machine: {machine['model']}, {machine['cpus']} CPUs, flags "
        f"{' '.join(machine['flags']) or '(none of avx2/avx512/amx)'}; {args.threads} torch thread(s), "
        f"lightly workers {args.workers}; budget {args.seconds:g} training s per side; "
        f"seeds {' '.join(map(str, args.seeds))}",
        flush=True,
    )
    per_seed = [run_seed(args, seed, side_order(i, args.ours_first), workdir) for i, seed in enumerate(args.seeds)]
    summary = summarize(per_seed)
    print(
        f"\nBYOL, convnet w{args.width}, {args.size} px, batch {args.batch_size}, budget "
        f"{args.seconds:g} training s each, {len(args.seeds)} seed(s); k-NN (k 20) top-1 %"
    )
    for side in (*SIDES, "init"):
        if side in summary:
            k = summary[side]["knn"]
            print(f"  {side:<8} mean {k['mean']:.2f} (min {k['min']:.2f}, max {k['max']:.2f})")
    if "knn_points" in summary:
        k, r = summary["knn_points"], summary["images_per_second_ratio"]
        print(
            f"  ours - lightly: mean {k['mean']:+.2f} points (min {k['min']:+.2f}, max {k['max']:+.2f}); "
            f"images/s ours/lightly mean {r['mean']:.2f}x"
        )
    result = {"machine": machine, "per_seed": per_seed, "summary": summary}
    return conclude("bench_peer", args, argv, load_before, wall_start, result)


def conclude(benchmark: str, args, argv, load_before: list[float], wall_start: float, result: dict) -> dict:
    """Add the arguments and the total seconds to a peer run's `result`, print its total and
    RESULT line, and write its record where --json asks."""
    result["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result["seconds_total"] = round(time.perf_counter() - wall_start, 1)
    print(f"total {result['seconds_total']:.0f} s")
    print("RESULT " + json.dumps({"summary": result["summary"], "seconds_total": result["seconds_total"]}))
    if args.json:
        write_peer_record(args.json, benchmark, argv, load_before, result)
        print(f"wrote {args.json}")
    return result


# ------------------------------------------------------------------ the record and its table


def write_peer_record(path: Path, benchmark: str, argv, load_before: list[float], result: dict) -> dict:
    """The run as a benchmarks/recording.py record: settings = the arguments, measurements =
    the machine, every seed's sides and the summary (the figures `peer_table` reads)."""
    from benchmarks.recording import write_record

    keys = ("machine", "teacher", "theirs", "per_seed", "summary", "seconds_total")
    measurements = {key: result[key] for key in keys if key in result}
    return write_record(path, benchmark, argv, load_before, result["args"], measurements)


def peer_table(records: list[dict], sides: tuple[str, str], metric: str, label: str) -> list[list[str]]:
    """Per seed, each side's epochs, training seconds, images/s, images per CPU-second and
    `metric` (the untrained network's too), then each side's mean +- sd over the seeds and,
    per seed, ours over the peer (images/s, images per CPU-second) and ours minus the peer
    (`metric`, points)."""
    peer, ours = sides
    head = ["seed", "side", "epochs", "training s", "images/s", "images/CPU-s", label]
    rows = [head]

    def mean_sd(values: list[float], fmt: str) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):{fmt}} ± {sd:{fmt}}"

    for record in records:
        per_seed = record["measurements"]["per_seed"]
        for run in per_seed:
            for side in (peer, ours, "init"):
                r = run["sides"].get(side)
                if r is None:
                    continue
                if side == "init":
                    rows.append([str(run["seed"]), "untrained", "", "", "", "", f"{r[metric]:.2f}"])
                    continue
                rows.append(
                    [
                        str(run["seed"]),
                        side,
                        str(r["epochs"]),
                        f"{r['seconds']:.1f}",
                        f"{r['images_per_second']:.1f}",
                        f"{r['images'] / r['cpu_seconds']:.1f}",
                        f"{r[metric]:.2f}",
                    ]
                )
        n = len(per_seed)
        for side in (peer, ours):
            runs = [run["sides"][side] for run in per_seed if side in run["sides"]]
            if runs:
                rows.append(
                    [
                        f"mean ± sd ({n} seeds)",
                        side,
                        mean_sd([r["epochs"] for r in runs], ".1f"),
                        mean_sd([r["seconds"] for r in runs], ".1f"),
                        mean_sd([r["images_per_second"] for r in runs], ".1f"),
                        mean_sd([r["images"] / r["cpu_seconds"] for r in runs], ".1f"),
                        mean_sd([r[metric] for r in runs], ".2f"),
                    ]
                )
        for run in per_seed:
            if peer in run["sides"] and ours in run["sides"]:
                a, b = run["sides"][ours], run["sides"][peer]
                per_cpu = (a["images"] / a["cpu_seconds"]) / (b["images"] / b["cpu_seconds"])
                rows.append(
                    [
                        str(run["seed"]),
                        f"{ours} vs {peer}",
                        "",
                        f"{a['seconds'] - b['seconds']:+.1f}",
                        f"{a['images_per_second'] / b['images_per_second']:.2f}x",
                        f"{per_cpu:.2f}x",
                        f"{a[metric] - b[metric]:+.2f}",
                    ]
                )
    return rows


def _mean_sd(values: list[float], fmt: str, unit: str = "") -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{fmt}}{unit} ± {sd:{fmt}}{unit}"


def _mean_range(values: list[float], fmt: str, unit: str = "") -> str:
    return f"{statistics.fmean(values):{fmt}}{unit} ({min(values):{fmt}}{unit} to {max(values):{fmt}}{unit})"


def _per_cpu_second(r: dict) -> float:
    return r["images"] / r["cpu_seconds"]


def cpu_rate_ratio(ours: dict, peer: dict) -> float:
    """ours' training images per CPU-second over the peer's (one seed's sides)."""
    return _per_cpu_second(ours) / _per_cpu_second(peer)


def peer_summary(records: list[dict], sides: tuple[str, str], metric: str, label: str) -> list[list[str]]:
    """The short table (README): each side's images/s, images per CPU-second and `metric`
    as mean +- sd over the seeds where both sides ran, then ours over the peer (images/s
    ratios) and ours minus the peer (`metric`, points) as the mean and range over them."""
    peer, ours = sides
    rows = [["side", "seeds", "images/s", "images/CPU-s", label]]
    for record in records:
        pairs = [
            (run["sides"][ours], run["sides"][peer])
            for run in record["measurements"]["per_seed"]
            if peer in run["sides"] and ours in run["sides"]
        ]
        n = str(len(pairs))
        for side, runs in ((peer, [b for _, b in pairs]), (ours, [a for a, _ in pairs])):
            row = [side, n, _mean_sd([r["images_per_second"] for r in runs], ".1f")]
            row += [_mean_sd([_per_cpu_second(r) for r in runs], ".1f"), _mean_sd([r[metric] for r in runs], ".2f")]
            rows.append(row)
        speed = [a["images_per_second"] / b["images_per_second"] for a, b in pairs]
        per_cpu = [cpu_rate_ratio(a, b) for a, b in pairs]
        points = [a[metric] - b[metric] for a, b in pairs]
        rows.append(
            [f"{ours} vs {peer}", n, _mean_range(speed, ".2f", "x"), _mean_range(per_cpu, ".2f", "x")]
            + [_mean_range(points, "+.2f")]
        )
    return rows


def table(records: list[dict]) -> list[list[str]]:
    """docs/BENCHMARKS.md section 10's table from the record(s) (`peer_table`)."""
    return peer_table(records, SIDES, "knn", "k-NN top-1 (%)")


def summary_table(records: list[dict]) -> list[list[str]]:
    """The README's peer table from the same record(s) (`peer_summary`)."""
    return peer_summary(records, SIDES, "knn", "k-NN top-1 (%)")


if __name__ == "__main__":
    main()
