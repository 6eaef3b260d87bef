"""Precision benchmark: does bf16 autocast cost accuracy, or is the gap seed noise?

The same tiny BoWNet run is trained in several compute modes over several seeds and
evaluated the same way; printed per mode: mean and sample sd over seeds of k-NN and
5-shot accuracy, the mean per-seed difference to the first mode (same seed, so the same
initial weights, data order and augmentations), and the seed-noise yardstick: the sd over
seeds of the first mode. A difference well inside the yardstick is noise; one beyond it
in the same direction at every seed is a precision cost.

The run (the pipeline's own stage commands, in process, under a scratch --workdir):
1. `stages.prepare`: the embedded digits at --image-size px (the default pipeline's data);
2. `stages.pretrain`: a RotNet teacher (g0), eager fp32, seed 0, trained once and shared
   by every mode and seed, so that the comparison is about the student's training only
   (bf16 is emulated and slow on CPUs without AVX512-BF16/AMX: a RotNet step at width 16
   took 3-6 s in bf16 against 0.5 s in fp32 on the AVX2 machine of docs/precision.md);
3. `stages.vocab`: K visual words of the teacher's stage2 map and the BoW codes (the
   vocab stage never uses autocast);
4. per seed and mode: `stages.student` (BoWNet g1) with `BOWFLOW_COMPUTE=<mode>`, then
   `stages.evaluate` with evaluation seed 0 for every run, so every model is scored on
   the same few-shot episodes and the same linear-probe initialisation.

Modes are `BOWFLOW_COMPUTE` spellings (`default` = eager fp32, `bf16-channels-last` = what
the automatic choice picks on a CPU with AMX/AVX512-BF16, ...). A mode ending in
`+bf16-softmax` runs BoWNet's soft cross-entropy without its float32 guard (the code
before commit 416b687: log_softmax and its gradient in bf16), to measure what that guard
buys. Speeds are recorded but mean nothing where bf16 is emulated.

    python -m benchmarks.bench_precision --seeds 0 1 2 \
        --modes default bf16-channels-last bf16-channels-last+bf16-softmax \
        --json docs/results/precision/precision.json

The last line is `RESULT {json}`; --json also writes it to a file. `--smoke` runs a
seconds-long version (8 px, width 4, one epoch, one seed) for the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from bowflow.compute import cpu_flags, cpu_model, parse_override, relevant_flags
from bowflow.io import write_json

SOFTMAX_SUFFIX = "+bf16-softmax"


def lscpu_model() -> str:
    """`lscpu`'s model name (falls back on /proc/cpuinfo)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return cpu_model()


def check_mode(mode: str) -> str:
    """A mode must be a BOWFLOW_COMPUTE choice (not auto/measure), optionally + the suffix."""
    base = mode.removesuffix(SOFTMAX_SUFFIX)
    if not isinstance(parse_override(base), dict):
        raise argparse.ArgumentTypeError(
            f"mode {mode!r}: expected a fixed BOWFLOW_COMPUTE mode "
            f"(default, fp32..., bf16...), optionally + {SOFTMAX_SUFFIX}"
        )
    return mode


@contextlib.contextmanager
def compute_mode(mode: str):
    """Set BOWFLOW_COMPUTE for the stages run inside; with the suffix, BoWNet's loss is the
    unguarded soft cross-entropy (bf16 log_softmax under autocast)."""
    import bowflow.methods.bownet as bownet

    before_env, before_loss = os.environ.get("BOWFLOW_COMPUTE"), bownet.soft_cross_entropy
    os.environ["BOWFLOW_COMPUTE"] = mode.removesuffix(SOFTMAX_SUFFIX)
    if mode.endswith(SOFTMAX_SUFFIX):
        bownet.soft_cross_entropy = getattr(before_loss, "__wrapped__", before_loss)
    try:
        yield
    finally:
        bownet.soft_cross_entropy = before_loss
        if before_env is None:
            os.environ.pop("BOWFLOW_COMPUTE", None)
        else:
            os.environ["BOWFLOW_COMPUTE"] = before_env


def flags(**values) -> list[str]:
    """{"lr": 0.03, "shots": [1, 5]} -> ["--lr", "0.03", "--shots", "1", "5"]."""
    out: list[str] = []
    for key, value in values.items():
        out.append(f"--{key}")
        out += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return out


def summarize(rows: list[dict], modes: list[str], keys: tuple[str, ...]) -> dict:
    """Per mode and metric: values by seed, mean, sample sd; the mean, min and max of the
    per-seed difference to modes[0]; and the yardstick (modes[0]'s sd over seeds)."""
    by = {(r["mode"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    out: dict = {}
    for mode in modes:
        out[mode] = {}
        for key in keys:
            values = [by[mode, s][key] for s in seeds if (mode, s) in by]
            diffs = [by[mode, s][key] - by[modes[0], s][key] for s in seeds if (mode, s) in by and (modes[0], s) in by]
            base = [by[modes[0], s][key] for s in seeds if (modes[0], s) in by]
            out[mode][key] = {
                "values": values,
                "mean": round(statistics.mean(values), 3),
                "sd": round(statistics.stdev(values), 3) if len(values) > 1 else None,
                "diff_mean": round(statistics.mean(diffs), 3),
                "diff_min": round(min(diffs), 3),
                "diff_max": round(max(diffs), 3),
                "yardstick_sd": round(statistics.stdev(base), 3) if len(base) > 1 else None,
            }
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--modes",
        nargs="+",
        type=check_mode,
        default=["default", "bf16-channels-last", "bf16-channels-last" + SOFTMAX_SUFFIX],
        help="BOWFLOW_COMPUTE modes; the first is the reference",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="student training seeds")
    parser.add_argument("--image-size", type=int, default=16, help="px (the default pipeline: 16)")
    parser.add_argument(
        "--width",
        type=int,
        default=16,
        help="convnet width of teacher and student (default pipeline: 32; 16 is 2-3x cheaper per step)",
    )
    parser.add_argument("--teacher-epochs", type=int, default=8, help="RotNet epochs (default pipeline: 30)")
    parser.add_argument("--student-epochs", type=int, default=12, help="BoWNet epochs (default pipeline: 60)")
    parser.add_argument("--words", type=int, default=64, help="vocabulary size K (default pipeline: 64)")
    parser.add_argument("--samples", type=int, default=20000, help="local features for k-means")
    parser.add_argument("--episodes", type=int, default=600, help="few-shot episodes per model")
    parser.add_argument("--linear-epochs", type=int, default=100)
    parser.add_argument("--ssl-max-images", type=int, default=0, help="0 = every SSL image")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--smoke", action="store_true", help="seconds: 8 px, width 4, 1 epoch, 1 seed")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.width, args.teacher_epochs, args.student_epochs = 8, 4, 1, 1
        args.words, args.samples, args.episodes, args.linear_epochs = 8, 500, 20, 2
        args.ssl_max_images, args.seeds = 120, args.seeds[:1]
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_precision-")))
        return run(args, work)


def run(args, work: Path) -> dict:
    from stages import evaluate, prepare, pretrain, student, vocab

    started = time.perf_counter()
    prepared, models = work / "prepared", work / "models"
    common = ["--prepared", str(prepared), "--device", "cpu"]
    prepare.main(
        [
            "--out",
            str(prepared),
            "--seed",
            "0",
            "--image_size",
            str(args.image_size),
            "--ssl_max_images",
            str(args.ssl_max_images),
        ]
    )
    teacher = models / "g0" / "model.pt"
    with compute_mode("default"):
        pretrain.main(
            common
            + [
                "--model",
                str(teacher),
                "--metrics",
                str(work / "g0.json"),
                "--history",
                str(work / "g0.csv"),
                "--checkpoints",
                str(work / "ck"),
                "--seed",
                "0",
            ]
            + flags(
                method="rotnet",
                arch="convnet",
                width=args.width,
                epochs=args.teacher_epochs,
                batch_size=64,
                padding=max(1, args.image_size // 8),
            )
        )
    vocab.main(
        common
        + [
            "--teacher",
            str(teacher),
            "--out",
            str(models / "vocab.pt"),
            "--metrics",
            str(work / "vocab.json"),
            "--seed",
            "0",
        ]
        + flags(layer="stage2", size=args.words, samples=args.samples, iters=20, batch_size=256)
    )
    # The default pipeline's g1 student recipe (params.yaml), width and epochs as given.
    recipe = dict(
        method="bownet",
        arch="convnet",
        width=args.width,
        epochs=args.student_epochs,
        batch_size=64,
        lr=0.03,
        warmup_epochs=min(2.0, args.student_epochs / 4),
        crop_scale_min=0.5,
        hue=0.0,
        gray_p=0.0,
        cutmix_p=0.3,
        head_scale=10.0,
    )
    evaluation = flags(
        linear_epochs=args.linear_epochs, few_shot_shots=[1, 5], few_shot_episodes=args.episodes, batch_size=512
    )
    rows = []
    for seed in args.seeds:
        for index, mode in enumerate(args.modes):
            name = f"s{seed}-m{index}"
            model = models / name / "model.pt"
            t0 = time.perf_counter()
            with compute_mode(mode):
                student.main(
                    common
                    + [
                        "--vocab",
                        str(models / "vocab.pt"),
                        "--parent-model",
                        str(teacher),
                        "--model",
                        str(model),
                        "--metrics",
                        str(work / f"{name}.train.json"),
                        "--history",
                        str(work / f"{name}.csv"),
                        "--checkpoints",
                        str(work / "ck"),
                        "--seed",
                        str(seed),
                    ]
                    + flags(**recipe)
                )
            train_seconds = time.perf_counter() - t0
            evaluate.main(
                common + ["--model", str(model), "--out", str(work / f"{name}.eval.json"), "--seed", "0"] + evaluation
            )
            trained = json.loads((work / f"{name}.train.json").read_text())
            scored = json.loads((work / f"{name}.eval.json").read_text())
            rows.append(
                {
                    "mode": mode,
                    "seed": seed,
                    "knn": scored["knn_all"],
                    "five_shot": scored["few_shot"]["5"]["mean"],
                    "five_shot_ci95": scored["few_shot"]["5"]["ci95"],
                    "one_shot": scored["few_shot"]["1"]["mean"],
                    "linear": scored["linear_base"],
                    "final_loss": trained["final"]["loss"],
                    "captured": trained["final"].get("captured"),
                    "compute": trained["compute"],
                    "feature_dtype": scored.get("feature_dtype"),
                    "train_seconds": round(train_seconds, 1),
                }
            )
            print(
                f"seed {seed} {mode:36s} k-NN {rows[-1]['knn']:6.2f}  5-shot {rows[-1]['five_shot']:6.2f}"
                f"  1-shot {rows[-1]['one_shot']:6.2f}  linear {rows[-1]['linear']:6.2f}"
                f"  loss {rows[-1]['final_loss']:.4f}  {train_seconds:.0f} s",
                flush=True,
            )
    keys = ("knn", "five_shot", "one_shot", "linear", "final_loss")
    summary = summarize(rows, args.modes, keys)
    flags_here = cpu_flags()
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "cpu": lscpu_model(),
            "flags": relevant_flags(flags_here),
            "bf16_native": any(f in flags_here for f in ("amx_bf16", "avx512_bf16")),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "loadavg": list(os.getloadavg()),
        },
        "rows": rows,
        "summary": summary,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"\n{'mode':38s} " + "  ".join(f"{k:>22s}" for k in ("k-NN mean±sd (diff)", "5-shot mean±sd (diff)")))
    for mode in args.modes:
        cells = []
        for key in ("knn", "five_shot"):
            s = summary[mode][key]
            sd = f"{s['sd']:.2f}" if s["sd"] is not None else "-"
            cells.append(f"{s['mean']:6.2f}±{sd} ({s['diff_mean']:+.2f})")
        print(f"{mode:38s} " + "  ".join(f"{c:>22s}" for c in cells))
    base = summary[args.modes[0]]
    print(
        f"yardstick (sd over seeds of {args.modes[0]}): k-NN {base['knn']['yardstick_sd']}, "
        f"5-shot {base['five_shot']['yardstick_sd']}; machine {result['machine']['cpu']} "
        f"flags {result['machine']['flags']}; {result['seconds']:.0f} s"
    )
    if args.json:
        write_json(args.json, result)
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
