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
the epochs' steps; tests/test_method_contract.py checks the same in float64 to 1e-6).
Nothing here is a GPU figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_precision import lscpu_model

ROOT = Path(__file__).resolve().parent.parent


def train(prepared: Path, out: Path, method: str, processes: int, epochs: int, batch: int, width: int) -> dict:
    """Run the pretrain stage once; -> its metrics (final epoch's images/s and loss, wall time)."""
    metrics = out / f"{method}-{processes}.json"
    command = [str(ROOT / "bin" / "launch"), str(processes), "-m", "stages.pretrain",
               "--prepared", str(prepared), "--model", str(out / f"{method}-{processes}" / "model.pt"),
               "--metrics", str(metrics), "--history", str(out / f"{method}-{processes}.csv"),
               "--checkpoints", str(out / "checkpoints"), "--seed", "0", "--device", "cpu",
               "--method", method, "--arch", "convnet", "--width", str(width), "--epochs", str(epochs),
               "--batch_size", str(batch)]
    start = time.perf_counter()
    env = {**os.environ, "BOWFLOW_COMPUTE": os.environ.get("BOWFLOW_COMPUTE", "fp32")}
    subprocess.run(command, cwd=ROOT, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    record = json.loads(metrics.read_text())
    return {"images_per_second": record["final"]["images_per_second"], "loss": record["final"]["loss"],
            "wall_seconds": round(wall, 1), "threads": record["compute"]["threads"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="rotnet,byol,simclr")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        subprocess.run([sys.executable, "-m", "stages.prepare", "--out", str(scratch / "prepared"),
                        "--seed", "0", "--source", "digits"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = []
        print(f"{'method':10s} {'1 process img/s':>16s} {f'{args.processes} processes img/s':>18s} "
              f"{'ratio':>6s}  final loss 1 / N (relative difference)")
        for method in args.methods.split(","):
            one = train(scratch / "prepared", scratch, method, 1, args.epochs, args.batch, args.width)
            many = train(scratch / "prepared", scratch, method, args.processes, args.epochs, args.batch,
                         args.width)
            ratio = many["images_per_second"] / one["images_per_second"]
            drift = abs(one["loss"] - many["loss"]) / max(1.0, abs(one["loss"]))
            print(f"{method:10s} {one['images_per_second']:16.1f} {many['images_per_second']:18.1f} "
                  f"{ratio:6.2f}  {one['loss']} / {many['loss']} ({drift:.1e})")
            rows.append({"method": method, "one": one, "many": many, "ratio": round(ratio, 2),
                         "loss_difference": drift})
    if args.out:
        args.out.write_text(json.dumps({
            "command": "python -m benchmarks.bench_processes " + " ".join(argv or sys.argv[1:]),
            "machine": lscpu_model(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "processes": args.processes, "epochs": args.epochs,
            "batch": args.batch, "width": args.width, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
