"""Peer benchmark: bowflow's BYOL against lightly's BYOL, same images, backbone and budget.

What it measures, per side: training throughput (training images per second: optimizer
steps x batch / wall seconds of the training loop, each image counted once, not per view;
also per CPU-second of the training process) and the quality reached in the same wall-clock
budget, as k-NN top-1 (`bowflow.evaluation.knn_accuracy`, k 20, T 0.07, cosine) on the
globally pooled last-stage features (`bowflow.models.pooled_features`) of the clean
training images (the bank) and the test images. The randomly initialised backbone both
sides start from is evaluated too, as the floor. Printed: a table, the ratios
ours/lightly (images/s) and ours - lightly (k-NN points), the machine (`lscpu` model name,
avx2/avx512*/amx* flags) and a `RESULT {json}` line.

The two sides:
- ours: `bowflow.methods.byol.BYOL` through `bowflow.train.train` (the trainer every
  pipeline stage uses), on the images as one in-memory uint8 tensor, views built batched
  by the method; eager fp32 (bf16/channels-last off, whatever the machine's saved compute
  choice), default `BYOLParams` except width, batch size and epochs.
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
  `packaging` (imported by lightning-utilities). The runner imports from bowflow only
  `bowflow/networks.py`, so the backbone is the same `convnet`.

Same for both: the images (a seeded subset of the train split; k-NN on the test split),
the backbone (`convnet`, same width, and the same initial weights: the parent builds it
once from the seed and both sides load that state), batch size, torch thread count
(`torch.set_num_threads(--threads)`; the lightly DataLoader gets `--workers`, default 0,
at most --threads), single process each, run one after the other (lightly first, or ours
first with --ours-first), the
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

Same budget: each side first trains a throw-away model for 2 epochs on its first
--calibration-steps batches (the same trainer and loop as the real run; not counted in the
budget, reported apart) and takes the second (warm) epoch's seconds, scaled to the full
epoch, as its epoch time; it then trains E = max(1, round(--seconds / epoch time)) epochs (the
nearest whole number: each side ends within about half an epoch of the budget, over or
under; rounding down would leave up to a whole epoch unused, a different share per side)
with the lr and EMA schedules laid out over those E epochs, so both finish their schedules.
A side that is faster gets more epochs. The actual training seconds of each side are
printed (a change of machine load after calibration moves them too); images/s are measured
on the actual seconds, so the throughput ratio does not depend on the rounding.

Commands (from the repository root; the two runs in docs/BENCHMARKS.md section 10, about
9-10 minutes each on a loaded 2-core CPU):
    .venv/bin/python -m benchmarks.bench_peer --seconds 300 --images 5000
    .venv/bin/python -m benchmarks.bench_peer --seconds 300 --images 5000 --ours-first
    .venv/bin/python -m benchmarks.bench_peer --source digits --size 16 --seconds 60
    .venv/bin/python -m benchmarks.bench_peer --venv /tmp/peer-venv ...   # keep the env
    .venv/bin/python -m benchmarks.bench_peer --only ours --source digits  # no lightly
Data: default `--source imagefolder --root ../shared/datasets/cifar10-jpeg.tar.gz` (the
CIFAR-10 JPEG tarball beside the project, read by `bowflow.datasets.load_source`,
extracted once into the bowflow cache) at --size 32; a missing file stops with a message
naming it (and `--source digits`, which works anywhere).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

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

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="imagefolder", choices=["imagefolder", "digits"])
    parser.add_argument("--root", type=Path, default=DEFAULT_TARBALL,
                        help="imagefolder: the CIFAR-10 JPEG tarball (or any image folder)")
    parser.add_argument("--size", type=int, default=32, help="image side, px")
    parser.add_argument("--images", type=int, default=5000,
                        help="training images (seeded subset of the train split; 0 = all)")
    parser.add_argument("--test-images", type=int, default=2000,
                        help="k-NN test images (seeded subset of the test split; 0 = all)")
    parser.add_argument("--seconds", type=float, default=240.0,
                        help="training budget of each side, wall-clock seconds")
    parser.add_argument("--width", type=int, default=16,
                        help="convnet width, both sides (16: the CPU preset's BYOL width)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--workers", type=int, default=0,
                        help="lightly DataLoader workers (at most --threads; 0: single process)")
    parser.add_argument("--calibration-steps", type=int, default=4,
                        help="batches per calibration epoch (2 epochs, the second timed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--venv", type=Path, default=None,
                        help="folder of the lightly env (kept and reused; default: a temp folder, removed)")
    parser.add_argument("--only", choices=["both", *SIDES], default="both")
    parser.add_argument("--ours-first", action="store_true",
                        help="run ours before lightly (default: lightly first); alternate the "
                             "order between runs to spread a trend in the machine's load")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    for name in ("size", "width", "batch_size", "threads", "calibration_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    if args.images < 0 or args.test_images < 0:
        parser.error("--images and --test-images must be >= 0")
    if not 0 <= args.workers <= args.threads:
        parser.error(f"--workers must be between 0 and --threads ({args.threads}): the lightly "
                     f"side gets no more cores than ours")
    return args


def epochs_for_budget(seconds: float, epoch_seconds: float) -> int:
    """The whole number of epochs of `epoch_seconds` nearest to `seconds` (halves up), at
    least 1: each side ends within half an epoch of the budget, over or under. (Rounding
    down would leave each side up to a whole epoch unused, a different share per side.)"""
    if epoch_seconds <= 0:
        raise ValueError(f"epoch_seconds must be > 0, got {epoch_seconds}")
    return max(1, math.floor(seconds / epoch_seconds + 0.5))


def full_epoch_seconds(calibration_seconds: float, calibration_steps: int, steps_per_epoch: int) -> float:
    """A calibration epoch of `calibration_steps` steps took `calibration_seconds`: the time
    of a full epoch of `steps_per_epoch` steps."""
    return calibration_seconds * steps_per_epoch / calibration_steps


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
    """images/s ours / lightly and k-NN ours - lightly (points)."""
    return {"images_per_second_ratio": round(ours["images_per_second"] / lightly["images_per_second"], 3),
            "knn_points": round(ours["knn"] - lightly["knn"], 2)}


def format_table(rows: dict[str, dict]) -> str:
    head = (f"{'side':<10}{'epochs':>7}{'steps':>7}{'train s':>9}{'images/s':>10}"
            f"{'img/CPU-s':>10}{'calib s':>9}{'k-NN top-1':>11}")
    lines = [head]
    for name, r in rows.items():
        if "epochs" not in r:                                   # the untrained floor
            lines.append(f"{name:<10}{'-':>7}{'-':>7}{'-':>9}{'-':>10}{'-':>10}{'-':>9}{r['knn']:>10.2f}%")
            continue
        lines.append(f"{name:<10}{r['epochs']:>7}{r['steps']:>7}{r['seconds']:>9.1f}"
                     f"{r['images_per_second']:>10.1f}{r['images'] / r['cpu_seconds']:>10.1f}"
                     f"{r['calibration_seconds']:>9.1f}{r['knn']:>10.2f}%")
    return "\n".join(lines)


# ------------------------------------------------------------------ data

def load_images(args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """-> (train uint8 [N, 3, S, S], train labels [N], test uint8 [M, 3, S, S], test labels, what)."""
    from bowflow.datasets import load_source

    root = args.root
    if args.source == "imagefolder" and not Path(root).exists():
        raise SystemExit(f"bench_peer: data file not found: {root} (the CIFAR-10 JPEG tarball, "
                         f"cifar10-jpeg.tar.gz, expected in ../shared/datasets/ beside the "
                         f"project). Point --root at it, or run with --source digits.")
    train, test, report = load_source(args.source, str(root), image_size=args.size, seed=args.seed)

    def pick(s, n, seed):
        rows = subset(len(s), n, seed)
        images = torch.from_numpy(s.images).permute(0, 3, 1, 2)[rows].contiguous()
        return images, torch.from_numpy(s.labels)[rows].contiguous()

    x_train, y_train = pick(train, args.images, args.seed)
    x_test, y_test = pick(test, args.test_images, args.seed + 1)
    what = (f"{args.source} ({report.get('layout')}), {len(x_train)} of {len(train)} train and "
            f"{len(x_test)} of {len(test)} test images at {args.size} px, {len(train.class_names)} classes")
    return x_train, y_train, x_test, y_test, what


# ------------------------------------------------------------------ ours

def byol_params(args, epochs: int):
    from bowflow.methods.byol import BYOLParams

    return BYOLParams(width=args.width, batch_size=args.batch_size, epochs=epochs)


def train_ours(images: torch.Tensor, normalizer, init_state: dict, args, epochs: int,
               workdir: Path, tag: str) -> tuple[torch.nn.Module, dict]:
    """bowflow's BYOL through bowflow.train.train for `epochs` epochs."""
    from bowflow.methods import get_method
    from bowflow.networks import build_backbone
    from bowflow.runtime import seed_everything
    from bowflow.train import train

    params = byol_params(args, epochs)
    seed_everything(args.seed)
    backbone = build_backbone("convnet", args.width)
    backbone.load_state_dict(init_state)
    method = get_method("byol")(params, backbone, {"normalizer": normalizer, "image_size": args.size})
    checkpoint = workdir / f"ours-{tag}.ckpt"
    checkpoint.unlink(missing_ok=True)
    cpu_start, start = time.process_time(), time.perf_counter()
    history = train(method, images, params, args.seed, checkpoint, run_id=f"peer-{tag}",
                    bf16=False, channels_last=False, show_progress=False, run_name=f"peer-{tag}")
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    checkpoint.unlink(missing_ok=True)
    steps = len(images) // min(params.batch_size, len(images)) * epochs
    images_seen = steps * min(params.batch_size, len(images))
    return method.export_backbone(), {
        "epochs": epochs, "steps": steps, "images": images_seen, "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3), "images_per_second": round(images_seen / seconds, 2),
        "history": history, "threads": torch.get_num_threads()}


def run_ours(x_train, normalizer, init_state, args, workdir: Path) -> tuple[dict, dict]:
    torch.set_num_threads(args.threads)
    steps = len(x_train) // min(args.batch_size, len(x_train))
    k = min(args.calibration_steps, steps)
    start = time.perf_counter()
    _, calib = train_ours(x_train[:k * args.batch_size], normalizer, init_state, args, 2, workdir, "calibrate")
    calibration_seconds = time.perf_counter() - start
    epoch_s = full_epoch_seconds(calib["history"][1]["seconds"], k, steps)
    epochs = epochs_for_budget(args.seconds, epoch_s)
    print(f"ours: calibration {calibration_seconds:.1f} s, warm epoch {epoch_s:.2f} s -> {epochs} epochs",
          flush=True)
    backbone, stats = train_ours(x_train, normalizer, init_state, args, epochs, workdir, "train")
    stats.update(calibration_seconds=round(calibration_seconds, 2), epoch_seconds_estimate=round(epoch_s, 3))
    return backbone.state_dict(), stats


# ------------------------------------------------------------------ lightly

def project_site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def lightly_env(folder: Path) -> Path:
    """A virtual env at `folder` with lightly 1.6 that sees the project's torch; its python."""
    python = folder / "bin" / "python"
    if (folder / READY).exists() and python.exists():
        return python
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "_bowflow_project.pth").write_text("\n".join(project_site_packages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--disable-pip-version-check", "--no-deps", LIGHTLY, *LIGHTLY_IMPORT_DEPS], check=True)
    check = subprocess.run([str(python), "-c", "import lightly, torch; print(lightly.__version__, torch.__file__)"],
                           capture_output=True, text=True, check=True).stdout.split()
    if not check[1].startswith(tuple(project_site_packages())):
        raise SystemExit(f"bench_peer: the lightly env imports torch from {check[1]}, not the project's")
    (folder / READY).write_text(f"lightly {check[0]}\n")
    print(f"lightly env: lightly {check[0]} in {folder}, torch from the project "
          f"({time.perf_counter() - start:.1f} s)", flush=True)
    return python


def lightly_config(args, normalizer) -> dict:
    p = byol_params(args, 1)
    return {"image_size": args.size, "width": args.width, "batch_size": args.batch_size,
            "lr": p.lr, "momentum": p.momentum, "weight_decay": p.weight_decay,
            "warmup_epochs": p.warmup_epochs, "hidden_dim": p.hidden_dim, "out_dim": p.out_dim,
            "momentum_base": p.momentum_base, "crop_scale_min": p.crop_scale_min,
            "jitter": list(p.jitter), "jitter_p": p.jitter_p, "gray_p": p.gray_p,
            "blur_p": list(p.blur_p), "blur_sigma": list(p.blur_sigma), "solarize_p": list(p.solarize_p),
            "mean": normalizer.mean, "std": normalizer.std, "loss_scale": 4.0,
            "threads": args.threads, "workers": args.workers, "seed": args.seed,
            "calibration_steps": args.calibration_steps}


def run_lightly(x_train, normalizer, init_state, args, workdir: Path) -> tuple[dict, dict]:
    venv = args.venv or workdir / "lightly-venv"
    python = lightly_env(Path(venv))
    inputs, config, out = workdir / "lightly-inputs.pt", workdir / "lightly-config.json", workdir / "lightly"
    torch.save({"images": x_train.permute(0, 2, 3, 1).contiguous(), "init_backbone": init_state}, inputs)
    config.write_text(json.dumps(lightly_config(args, normalizer), indent=1))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)

    def runner(mode: str, epochs: int = 1) -> dict:
        cmd = [str(python), str(RUNNER), "--inputs", str(inputs), "--config", str(config),
               "--out", str(out), "--mode", mode, "--epochs", str(epochs)]
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
        return json.loads((out / f"{mode}.json").read_text())

    steps = len(x_train) // min(args.batch_size, len(x_train))
    k = min(args.calibration_steps, steps)
    start = time.perf_counter()
    calib = runner("calibrate")
    calibration_seconds = time.perf_counter() - start
    epoch_s = full_epoch_seconds(calib["epoch_seconds"], k, steps)
    epochs = epochs_for_budget(args.seconds, epoch_s)
    print(f"lightly: calibration {calibration_seconds:.1f} s (process included), warm epoch "
          f"{epoch_s:.2f} s -> {epochs} epochs", flush=True)
    stats = runner("train", epochs)
    stats.update(calibration_seconds=round(calibration_seconds, 2), epoch_seconds_estimate=round(epoch_s, 3))
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
        return _run(args, workdir)
    finally:
        torch.set_num_threads(threads_before)
        shutil.rmtree(workdir, ignore_errors=True)       # the default lightly env lives here too


def _run(args, workdir: Path) -> dict:
    from bowflow.models import Normalizer
    from bowflow.networks import build_backbone

    wall_start = time.perf_counter()
    machine = lscpu_machine()
    x_train, y_train, x_test, y_test, what = load_images(args)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    normalizer = Normalizer.fit(x_train)
    torch.manual_seed(args.seed)
    init_state = {k: v.clone() for k, v in build_backbone("convnet", args.width).state_dict().items()}
    print(f"data: {what}\nmachine: {machine['model']}, {machine['cpus']} CPUs, flags "
          f"{' '.join(machine['flags']) or '(none of avx2/avx512/amx)'}; {args.threads} torch thread(s), "
          f"lightly workers {args.workers}; budget {args.seconds:g} s per side", flush=True)

    rows: dict[str, dict] = {}
    load = {}
    for side in (SIDES[::-1] if args.ours_first else SIDES):
        if args.only not in ("both", side):
            continue
        before = os.getloadavg()
        run = run_lightly if side == "lightly" else run_ours
        state, stats = run(x_train, normalizer, init_state, args, workdir)
        load[side] = [round(before[0], 2), round(os.getloadavg()[0], 2)]
        torch.set_num_threads(args.threads)
        stats["knn"] = round(knn_of(state, args, normalizer, x_train, y_train, x_test, y_test, num_classes), 2)
        rows[side] = stats
    torch.set_num_threads(args.threads)
    rows["init"] = {"knn": round(knn_of(init_state, args, normalizer, x_train, y_train, x_test, y_test,
                                        num_classes), 2)}

    print(f"\nBYOL, convnet w{args.width}, {args.size} px, batch {args.batch_size}, "
          f"{len(x_train)} training images, budget {args.seconds:g} s each; k-NN (k 20) on "
          f"{len(x_test)} test images, bank = the training images")
    print(format_table(rows))
    print("load average (1 min) before/after each side: "
          + ", ".join(f"{side} {a:.2f} -> {b:.2f}" for side, (a, b) in load.items()))
    result = {"data": what, "machine": machine, "args": {k: str(v) if isinstance(v, Path) else v
                                                          for k, v in vars(args).items()},
              "sides": {k: {key: v for key, v in r.items() if key != "history"} for k, r in rows.items()},
              "history": {k: r.get("history") for k, r in rows.items() if "history" in r},
              "loadavg": load}
    if "ours" in rows and "lightly" in rows:
        result.update(ratios(rows["ours"], rows["lightly"]))
        print(f"images/s ours/lightly: {result['images_per_second_ratio']:.2f}x; "
              f"k-NN ours - lightly: {result['knn_points']:+.2f} points")
    result["seconds_total"] = round(time.perf_counter() - wall_start, 1)
    print(f"total {result['seconds_total']:.0f} s")
    print("RESULT " + json.dumps({k: v for k, v in result.items() if k != "history"}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
