"""Peer benchmark: bowflow's KD against torchdistill's KD, resnet56 -> resnet20, same teacher
weights, same images, same training seconds.

What it measures, per side and seed: training throughput (images/s: training images /
training seconds, each image counted once per epoch; also per CPU-second of the training
process, torchdistill's DataLoader workers included) and the student's top-1 on the test
images after the same budget of training seconds, both students scored by the same code
(`bowflow.models.classifier_top1`). The teacher's top-1 and the untrained student's (the
floor) are printed too. Printed: a table per seed, ours / torchdistill images/s and
ours - torchdistill top-1 points with the gap in training seconds, a summary over the seeds,
the machine and a `RESULT {json}` line; --json PATH writes everything for the record.

The two sides, each run as its users run it (the recipes differ; the differences are the
point of "as its users would" and are listed here):
- ours: `bowflow.methods.kd.KD` through `bowflow.train.train` (the trainer of the distill
  stage), the recipe of `presets/distill-cpu.yaml` (the IFACD paper's CIFAR recipe, Rios et
  al., https://github.com/arkel23/layerwiseclr): SGD Nesterov momentum 0.9, lr 0.05, weight
  decay 5e-4 on conv/linear weights only, batch 64 (the last partial batch dropped), x0.1 at
  62.5/75/87.5% of the steps; loss CE + T^2 KL at T 4 (alpha = beta = 1); views: batched
  pad-4 crop + flip of the in-memory uint8 images; teacher in eval mode (its BN running
  statistics). Eager fp32.
- torchdistill 1.1 (`benchmarks/peer_torchdistill_kd.py`): its image-classification example's
  loop and its CIFAR-10 KD sample config's `train:` section, read as YAML by torchdistill
  (https://github.com/yoshitomo-matsubara/torchdistill): SGD momentum 0.9 without Nesterov,
  lr 0.1, weight decay 1e-4 on every parameter, batch 64 (last partial batch kept), x0.1 at
  50/75% of the epochs; loss 0.9 CE + 0.1 T^2 KL at T 4 (`KDLoss`, alpha 0.9); views:
  torchvision RandomCrop(32, padding 4) + flip per PIL image in a DataLoader (--workers);
  the teacher in training mode, as the example leaves it (BN on batch statistics). It runs in a
  throw-away virtual env (`python -m venv --without-pip`, a `.pth` to the project's
  site-packages, then `pip install --no-deps torchdistill==1.1.*`: its imports need nothing
  else the project lacks), as bench_peer's lightly side does.

Same for both: the images (a seeded subset of the train split, the same at every seed:
--data-seed), the test images, the per-channel normalisation (bowflow's, fitted on the
training images), the teacher's weights (bowflow's resnet56 trained once per data subset by
the `teachers:` recipe of presets/distill-cpu.yaml for --teacher-epochs, or loaded with
--teacher), the student's architecture and initial weights (built from the seed, loaded by
both), the torch thread count, and the budget: each side trains until its measured training
seconds reach --seconds (`bowflow.budget.EpochBudget`, the rule of bench_peer: the clock is
checked after each epoch, the rest re-planned from the last epochs' seconds, both sides'
lr schedules laid out over the planned epochs and moved with the plan). What counts as
training seconds, and what does not, is bench_peer's rule: from asking for an epoch's first
batch to the end of its last optimizer step. The side order alternates from seed to seed.

Commands (from the repository root):
    .venv/bin/python -m benchmarks.bench_peer_kd --smoke --only ours     # seconds, no env
    .venv/bin/python -m benchmarks.bench_peer_kd --smoke                 # + torchdistill env
    .venv/bin/python -m benchmarks.bench_peer_kd --seconds 240 --seeds 0 1 2 --threads 2 \\
        --workers 1 --teacher-epochs 15 --json docs/results/bench/bench_peer_kd/run.json
Data: the CIFAR-10 JPEG tarball beside the project by default (`--root`), or `--source digits`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_peer import (
    DEFAULT_TARBALL,
    conclude,
    load_images,
    lscpu_machine,
    peer_env,
    peer_summary,
    peer_table,
    summarize,
    train_within,
)
from bowflow.budget import PROVISIONAL_EPOCHS

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().with_name("peer_torchdistill_kd.py")
TORCHDISTILL = "torchdistill==1.1.*"
SIDES = ("torchdistill", "ours")
TEACHER, STUDENT = "resnet56", "resnet20"
# torchdistill's CIFAR-10 KD sample config (module docstring)
THEIRS = {"lr": 0.1, "weight_decay": 1e-4, "milestone_fractions": [0.5, 0.75], "temperature": 4.0, "alpha": 0.9}
SMOKE = {
    "source": "digits",
    "size": 8,
    "images": 256,
    "test_images": 128,
    "batch_size": 32,
    "seconds": 2.0,
    "teacher_epochs": 1,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="imagefolder", choices=["imagefolder", "digits"])
    parser.add_argument("--root", type=Path, default=DEFAULT_TARBALL, help="imagefolder: the CIFAR-10 JPEG tarball")
    parser.add_argument("--size", type=int, default=32, help="image side, px")
    parser.add_argument("--images", type=int, default=5000, help="training images (seeded subset; 0 = all)")
    parser.add_argument("--test-images", type=int, default=0, help="test images (seeded subset; 0 = all)")
    parser.add_argument("--data-seed", type=int, default=0, help="the training subset, the same at every seed")
    parser.add_argument("--seconds", type=float, default=240.0, help="training budget of each side, measured s")
    parser.add_argument("--batch-size", type=int, default=64, help="both sides (64 in both recipes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--workers", type=int, default=0, help="torchdistill DataLoader workers (at most --threads)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one comparison per seed")
    parser.add_argument("--teacher", type=Path, default=None, help="load the teacher (a file --save-teacher wrote)")
    parser.add_argument("--teacher-epochs", type=int, default=15, help="train the teacher this long (no --teacher)")
    parser.add_argument("--save-teacher", type=Path, default=None, help="write the trained teacher here")
    parser.add_argument("--venv", type=Path, default=None, help="folder of the torchdistill env (kept, reused)")
    parser.add_argument("--only", choices=["both", *SIDES], default="both")
    parser.add_argument("--ours-first", action="store_true", help="ours first at the first seed")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--smoke", action="store_true", help="tiny: " + ", ".join(f"{k} {v}" for k, v in SMOKE.items()))
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    for name in ("size", "batch_size", "threads", "teacher_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must be distinct")
    if not 0 <= args.workers <= args.threads:
        parser.error(f"--workers must be between 0 and --threads ({args.threads})")
    if args.teacher is not None and not args.teacher.is_file():
        parser.error(f"--teacher: {args.teacher} does not exist (write one with --save-teacher)")
    return args


def side_order(seed_index: int, ours_first: bool) -> tuple[str, ...]:
    """Alternating from seed to seed, torchdistill first at the first seed (or ours)."""
    return SIDES[::-1] if (seed_index % 2 == 1) != ours_first else SIDES


# ------------------------------------------------------------------ networks


def build(arch: str, num_classes: int, state: dict | None = None):
    """(backbone, classifier) of `arch`, loaded from {"backbone", "classifier"} when given."""
    from bowflow.networks import build_backbone

    backbone = build_backbone(arch)
    classifier = torch.nn.Linear(backbone.out_channels, num_classes)
    if state is not None:
        backbone.load_state_dict(state["backbone"])
        classifier.load_state_dict(state["classifier"])
    return backbone, classifier


def top1(state: dict, arch: str, normalizer, images, labels, num_classes: int) -> float:
    from bowflow.models import classifier_top1

    backbone, classifier = build(arch, num_classes, state)
    return round(classifier_top1(backbone, normalizer, classifier, images, labels, 256, torch.device("cpu")), 2)


def train_teacher(images, labels, normalizer, args, num_classes: int, workdir: Path) -> tuple[dict, dict]:
    """bowflow's resnet56 by the `teachers:` recipe of presets/distill-cpu.yaml (the
    SupervisedParams defaults: SGD lr 0.05, batch 64, x0.1 at 62.5/75/87.5%, pad-4 crops)."""
    from bowflow.roles.base import get_method
    from bowflow.roles.supervised import SupervisedParams
    from bowflow.runtime import seed_everything
    from bowflow.train import train

    params = SupervisedParams(arch=TEACHER, width=0, epochs=args.teacher_epochs, batch_size=args.batch_size)
    seed_everything(args.data_seed)
    backbone, _ = build(TEACHER, num_classes)
    cls = get_method("supervised")
    method = cls(
        params,
        backbone,
        cls.inputs(normalizer=normalizer, image_size=args.size, labels=labels, num_classes=num_classes),
    )
    start = time.perf_counter()
    train(method, images, params, args.data_seed, workdir / "teacher.ckpt", run_id="peer-kd-teacher")
    seconds = time.perf_counter() - start
    state = {"backbone": method.backbone.state_dict(), "classifier": method.classifier.state_dict()}
    return state, {"epochs": args.teacher_epochs, "seconds": round(seconds, 1), "recipe": "presets/distill-cpu.yaml"}


# ------------------------------------------------------------------ the two sides


def run_ours(data: dict, args, seed: int, workdir: Path) -> tuple[dict, dict]:
    """bowflow's KD through bowflow.train.train within args.seconds (bench_peer.train_within)."""
    from bowflow.frozen_teacher import Teacher
    from bowflow.methods.kd import KDParams
    from bowflow.roles.base import get_method
    from bowflow.runtime import seed_everything

    torch.set_num_threads(args.threads)
    k = data["num_classes"]
    params = KDParams(arch=STUDENT, width=0, teacher=TEACHER, batch_size=args.batch_size, epochs=PROVISIONAL_EPOCHS)
    seed_everything(seed)
    backbone, classifier = build(STUDENT, k, data["init_student"])
    teacher_backbone, teacher_classifier = build(TEACHER, k, data["teacher"])
    teacher = Teacher(teacher_backbone, data["normalizer"], teacher_classifier)
    cls = get_method("kd")
    method = cls(
        params,
        backbone,
        cls.inputs(
            normalizer=data["normalizer"],
            image_size=args.size,
            labels=data["y_train"],
            num_classes=k,
            teacher=teacher,
        ),
    )
    method.classifier.load_state_dict(classifier.state_dict())
    stats = train_within(method, data["x_train"], params, args.seconds, seed, workdir, f"peer-kd-ours-s{seed}")
    state = {"backbone": method.backbone.state_dict(), "classifier": method.classifier.state_dict()}
    return state, stats


def torchdistill_config(args, normalizer, num_classes: int, seed: int) -> dict:
    return {
        **THEIRS,
        "teacher_arch": TEACHER,
        "student_arch": STUDENT,
        "num_classes": num_classes,
        "image_size": args.size,
        "padding": 4,
        "batch_size": args.batch_size,
        "mean": normalizer.mean,
        "std": normalizer.std,
        "threads": args.threads,
        "workers": args.workers,
        "seed": seed,
        "seconds": args.seconds,
    }


def run_torchdistill(data: dict, args, seed: int, workdir: Path) -> tuple[dict, dict]:
    import subprocess

    python = peer_env(Path(args.venv or workdir / "torchdistill-venv"), (TORCHDISTILL,), "torchdistill")
    inputs, config, out = workdir / "td-inputs.pt", workdir / "td-config.json", workdir / "torchdistill"
    torch.save(
        {
            "images": data["x_train"].permute(0, 2, 3, 1).contiguous(),
            "labels": data["y_train"],
            "teacher": data["teacher"],
            "init_student": data["init_student"],
        },
        inputs,
    )
    config.write_text(json.dumps(torchdistill_config(args, data["normalizer"], data["num_classes"], seed), indent=1))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env["PYTHONNOUSERSITE"] = "1"
    env.pop("PYTHONPATH", None)
    (out / "train.json").unlink(missing_ok=True)
    subprocess.run(
        [str(python), str(RUNNER), "--inputs", str(inputs), "--config", str(config), "--out", str(out)],
        check=True,
        env=env,
        cwd=ROOT,
    )
    stats = json.loads((out / "train.json").read_text())
    return torch.load(out / "student.pt", weights_only=True), stats


# ------------------------------------------------------------------ main


def format_table(rows: dict[str, dict]) -> str:
    lines = [
        f"{'side':<14}{'epochs':>7}{'steps':>7}{'train s':>9}{'wall s':>9}{'images/s':>10}{'img/CPU-s':>10}{'top-1':>8}"
    ]
    for name, r in rows.items():
        if "epochs" not in r:
            lines.append(f"{name:<14}{'-':>7}{'-':>7}{'-':>9}{'-':>9}{'-':>10}{'-':>10}{r['top1']:>7.2f}%")
            continue
        lines.append(
            f"{name:<14}{r['epochs']:>7}{r['steps']:>7}{r['seconds']:>9.1f}{r['wall_seconds']:>9.1f}"
            f"{r['images_per_second']:>10.1f}{r['images'] / r['cpu_seconds']:>10.1f}{r['top1']:>7.2f}%"
        )
    return "\n".join(lines)


def run_seed(data: dict, args, seed: int, order: tuple[str, ...], workdir: Path) -> dict:
    k = data["num_classes"]
    torch.manual_seed(seed)
    data["init_student"] = {
        key: {n: t.clone() for n, t in module.state_dict().items()}
        for key, module in zip(("backbone", "classifier"), build(STUDENT, k))
    }
    print(f"\n=== seed {seed}: {data['what']}; order {' then '.join(order)}", flush=True)
    rows, load = {}, {}
    for side in order:
        if args.only not in ("both", side):
            continue
        before = os.getloadavg()
        state, stats = (run_torchdistill if side == "torchdistill" else run_ours)(data, args, seed, workdir)
        load[side] = [round(before[0], 2), round(os.getloadavg()[0], 2)]
        torch.set_num_threads(args.threads)
        stats["top1"] = top1(state, STUDENT, data["normalizer"], data["x_test"], data["y_test"], k)
        rows[side] = stats
        print(f"{side}: {stats['epochs']} epochs in {stats['seconds']:.1f} training s, top-1 {stats['top1']:.2f}%")
    rows["init"] = {"top1": top1(data["init_student"], STUDENT, data["normalizer"], data["x_test"], data["y_test"], k)}
    print(format_table(rows))
    result = {
        "seed": seed,
        "order": [s for s in order if s in rows],
        "sides": {name: {key: v for key, v in r.items() if key != "history"} for name, r in rows.items()},
        "history": {name: r["history"] for name, r in rows.items() if "history" in r},
        "loadavg": load,
    }
    if "ours" in rows and "torchdistill" in rows:
        ours, theirs = rows["ours"], rows["torchdistill"]
        result.update(
            {
                "images_per_second_ratio": round(ours["images_per_second"] / theirs["images_per_second"], 3),
                "top1_points": round(ours["top1"] - theirs["top1"], 2),
                "seconds_gap": round(ours["seconds"] - theirs["seconds"], 3),
                "longest_epoch_seconds": round(max(max(ours["epoch_seconds"]), max(theirs["epoch_seconds"])), 3),
            }
        )
        print(
            f"images/s ours/torchdistill {result['images_per_second_ratio']:.2f}x; top-1 ours - torchdistill "
            f"{result['top1_points']:+.2f} points at training seconds ours - torchdistill "
            f"{result['seconds_gap']:+.1f} s (longest epoch {result['longest_epoch_seconds']:.1f} s)",
            flush=True,
        )
    return result


def _run(args, workdir: Path, argv: list[str] | None = None) -> dict:
    from benchmarks.recording import load_average
    from bowflow.models import Normalizer

    load_before = load_average()
    wall_start = time.perf_counter()
    machine = lscpu_machine()
    print(
        f"machine: {machine['model']}, {machine['cpus']} CPUs, flags {' '.join(machine['flags']) or '-'}; "
        f"{args.threads} torch thread(s), torchdistill workers {args.workers}; budget {args.seconds:g} training s "
        f"per side; seeds {' '.join(map(str, args.seeds))}",
        flush=True,
    )
    torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test, what = load_images(args, args.data_seed)
    k = int(max(y_train.max(), y_test.max())) + 1
    normalizer = Normalizer.fit(x_train)
    data = {
        "x_train": x_train,
        "y_train": y_train,
        "x_test": x_test,
        "y_test": y_test,
        "what": what,
        "num_classes": k,
        "normalizer": normalizer,
    }
    if args.teacher is not None:
        saved = torch.load(args.teacher, weights_only=True)
        data["teacher"], teacher_info = saved["state"], {**saved["info"], "loaded_from": str(args.teacher)}
    else:
        data["teacher"], teacher_info = train_teacher(x_train, y_train, normalizer, args, k, workdir)
        if args.save_teacher:
            args.save_teacher.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state": data["teacher"], "info": teacher_info}, args.save_teacher)
    teacher_info["top1"] = top1(data["teacher"], TEACHER, normalizer, x_test, y_test, k)
    print(f"teacher {TEACHER}: top-1 {teacher_info['top1']:.2f}% ({teacher_info})", flush=True)

    order = [side_order(i, args.ours_first) for i in range(len(args.seeds))]
    per_seed = [run_seed(data, args, seed, order[i], workdir) for i, seed in enumerate(args.seeds)]
    summary = summarize(
        per_seed,
        SIDES,
        ("top1", "seconds", "epochs", "images_per_second"),
        ("top1_points", "images_per_second_ratio", "seconds_gap"),
    )
    print(f"\nKD {TEACHER} -> {STUDENT}, {what}, budget {args.seconds:g} training s each; test top-1 %")
    for side in (*SIDES, "init"):
        if side in summary:
            t = summary[side]["top1"]
            print(f"  {side:<13} mean {t['mean']:.2f} (min {t['min']:.2f}, max {t['max']:.2f})")
    if "top1_points" in summary:
        t, r = summary["top1_points"], summary["images_per_second_ratio"]
        print(
            f"  ours - torchdistill: mean {t['mean']:+.2f} points (min {t['min']:+.2f}, max {t['max']:+.2f}); "
            f"images/s ours/torchdistill mean {r['mean']:.2f}x (min {r['min']:.2f}, max {r['max']:.2f})"
        )
    result = {"machine": machine, "teacher": teacher_info, "theirs": THEIRS, "per_seed": per_seed, "summary": summary}
    return conclude("bench_peer_kd", args, argv, load_before, wall_start, result)


def table(records: list[dict]) -> list[list[str]]:
    """docs/BENCHMARKS.md's torchdistill table from the record(s) (bench_peer.peer_table)."""
    return peer_table(records, SIDES, "top1", "student top-1 (%)")


def summary_table(records: list[dict]) -> list[list[str]]:
    """The README's torchdistill table from the same record(s) (bench_peer.peer_summary)."""
    return peer_summary(records, SIDES, "top1", "student top-1 (%)")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    workdir = Path(tempfile.mkdtemp(prefix="bench-peer-kd-"))
    try:
        return _run(args, workdir, argv)
    finally:
        torch.set_num_threads(threads_before)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
