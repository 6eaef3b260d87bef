"""One process against N under torchrun, on this machine's CPU: the same training stage, the
same global batch, side by side.

    python -m benchmarks.bench_processes                       # rotnet, byol, simclr; 1 vs 2
    python -m benchmarks.bench_processes --methods rotnet --processes 2 --epochs 3 --out r.json

For each method: `bin/launch 1 -m stages.pretrain ...` (one process, all the cores' threads)
then `bin/launch N ...` (torchrun, N gloo processes sharing the cores: cores / N threads
each), on the embedded digits prepared at the default 16 px, the default params.yaml width
and a global batch of --batch. Prints, per method, images/s of the last epoch (the first
one includes start-up), the ratio N : 1, and both final losses: N processes follow the
one-process run, so they differ by float32 rounding only (sums in another order, grown over
the epochs' steps; tests/test_method_contract.py checks the same in float64 to 1e-6). The
relative difference is |a - b| / max(|a|, |b|) of the two final losses (loss_difference).
The JSON records the CPU (model, `cpu_flags` as bowflow.compute records them: the machine
class of docs/BENCHMARKS.md), the load average before and after, and the exact command.
Nothing here is a GPU figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_precision import lscpu_model
from bowflow.compute import cpu_flags, relevant_flags

ROOT = Path(__file__).resolve().parent.parent


def train(prepared: Path, out: Path, method: str, processes: int, epochs: int, batch: int, width: int) -> dict:
    """Run the pretrain stage once; -> its metrics (final epoch's images/s and loss, wall time)."""
    metrics = out / f"{method}-{processes}.json"
    command = [
        str(ROOT / "bin" / "launch"),
        str(processes),
        "-m",
        "stages.pretrain",
        "--prepared",
        str(prepared),
        "--model",
        str(out / f"{method}-{processes}" / "model.pt"),
        "--metrics",
        str(metrics),
        "--history",
        str(out / f"{method}-{processes}.csv"),
        "--checkpoints",
        str(out / "checkpoints"),
        "--seed",
        "0",
        "--device",
        "cpu",
        "--method",
        method,
        "--arch",
        "convnet",
        "--width",
        str(width),
        "--epochs",
        str(epochs),
        "--batch_size",
        str(batch),
    ]
    start = time.perf_counter()
    env = {**os.environ, "BOWFLOW_COMPUTE": os.environ.get("BOWFLOW_COMPUTE", "fp32")}
    subprocess.run(command, cwd=ROOT, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    record = json.loads(metrics.read_text())
    return {
        "images_per_second": record["final"]["images_per_second"],
        "loss": record["final"]["loss"],
        "wall_seconds": round(wall, 1),
        "threads": record["compute"]["threads"],
    }


def relative_difference(a: float, b: float) -> float:
    """|a - b| / max(|a|, |b|) (0 when both are 0): the two final losses' relative difference."""
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale else 0.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="rotnet,byol,simclr")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.bench_processes " + shlex.join(sys.argv[1:] if argv is None else map(str, argv))
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "stages.prepare",
                "--out",
                str(scratch / "prepared"),
                "--seed",
                "0",
                "--source",
                "digits",
            ],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        rows = []
        print(
            f"{'method':10s} {'1 process img/s':>16s} {f'{args.processes} processes img/s':>18s} "
            f"{'ratio':>6s}  final loss 1 / N (difference / larger loss)"
        )
        for method in args.methods.split(","):
            one = train(scratch / "prepared", scratch, method, 1, args.epochs, args.batch, args.width)
            many = train(scratch / "prepared", scratch, method, args.processes, args.epochs, args.batch, args.width)
            ratio = many["images_per_second"] / one["images_per_second"]
            drift = relative_difference(one["loss"], many["loss"])
            print(
                f"{method:10s} {one['images_per_second']:16.1f} {many['images_per_second']:18.1f} "
                f"{ratio:6.2f}  {one['loss']} / {many['loss']} ({drift:.1e})"
            )
            rows.append(
                {"method": method, "one": one, "many": many, "ratio": round(ratio, 2), "loss_difference": drift}
            )
    wall = round(time.perf_counter() - start, 1)
    load_after = [round(x, 2) for x in os.getloadavg()]
    print(f"wall {wall} s; load average (1, 5, 15 min) before {load_before}, after {load_after}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "command": command,
                    "machine": lscpu_model(),
                    "cpu_flags": relevant_flags(cpu_flags()),
                    "cpus": os.cpu_count(),
                    "compute": os.environ.get("BOWFLOW_COMPUTE", "fp32"),
                    "load_average": {"before": load_before, "after": load_after},
                    "wall_seconds": wall,
                    "loss_difference_is": "|a - b| / max(|a|, |b|) of the final losses of 1 and N processes",
                    "processes": args.processes,
                    "epochs": args.epochs,
                    "batch": args.batch,
                    "width": args.width,
                    "rows": rows,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
