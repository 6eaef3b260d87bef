"""Every method's training step on one setting, one after another: images/s and how much of the
machine's matmul rate each step achieves.

What runs: for each run of a preset's `pretrain:` and `generations:` (default
presets/family-cpu.yaml: CIFAR-10 at 32 px, a width-16 convnet, each method's own batch size
and recipe), the method is built from the run's params exactly as the pretrain and student
stages build it, on synthetic uint8 images [B, 3, S, S] (BoWNet with random BoW codes), and
one step is what `bowflow.train` does per batch: `method.training_step` (views,
augmentation, forward, loss), backward, the optimiser step, then `method.after_step`
(EMA teachers, queues). Eager fp32 at --threads torch threads, the mode of record.

Timing: --warmup untimed steps, then --steps timed steps per method; a method's images/s is
B / the median step time (images, not views: RotNet's 4 rotations of an image count once,
as the training stages count). The methods run one after another in one process.

FLOPs per step: `torch.utils.flop_counter.FlopCounterMode` over one step, forward and
backward (2 FLOPs per multiply-add of mm/bmm/baddbmm/convolution and their backward;
element-wise work, normalisation and augmentation are not counted), as
benchmarks/bench_compute.py counts them. Achieved GFLOP/s = FLOPs per step / median step
time, also as a percentage of the same run's dense fp32 N x N matmul rate at the same
thread count (bench_compute's `matmul_gflops`): a low percentage means the step's time goes
to work that is not matmuls (augmentation, element-wise ops, Python).

BASELINE: the median images/s over the methods of the same backbone; every method prints its
ratio to it (issue 27 asks every method to be within 2x of it).

    python -m benchmarks.bench_methods                         # family-cpu, 2 threads
    python -m benchmarks.bench_methods --json docs/results/bench/bench_methods/run.json
    python -m benchmarks.bench_methods --profile obow           # where one method's step goes
    python -m benchmarks.bench_methods --smoke                  # tiny, seconds
    python -m benchmarks.bench_methods --methods obow --before  # OBoW before and after its fix

--before also times, right after each method that has one, the code that method ran before its
last speed fix (`BEFORE`: OBoW's targets as one [N, K] matrix), as a row "<run> (before)" of the
same run, left out of the median.

--json PATH writes the record (benchmarks/recording.py); `table(records)` gives the table of
docs/BENCHMARKS.md's section on methods' throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from benchmarks.bench_compute import matmul_gflops
from benchmarks.recording import load_average, thousands, write_record
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.optim import build_optimizer
from bowflow.roles.base import get_method

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "presets/family-cpu.yaml"
WORDS = 2048  # BoWNet's random codes: vocabulary size of the family presets' generations


def runs_of(preset: dict) -> dict[str, dict]:
    """{run name: its params entry} of a preset's pretrain: runs and generations' students."""
    runs = {name: entry for name, entry in (preset.get("pretrain") or {}).items()}
    runs |= {name: entry["student"] for name, entry in (preset.get("generations") or {}).items()}
    return runs


class MethodStep:
    """One method of one run, built as its training stage builds it, on synthetic images."""

    def __init__(self, entry: dict, image_size: int, batch: int | None, total_steps: int, seed: int = 0):
        cls = get_method(entry["method"])
        fields = {f.name for f in dataclasses.fields(cls.Params)}
        params = cls.Params(**{k: v for k, v in entry.items() if k in fields})
        if batch:
            params.batch_size = batch
        params.validate()
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        b, s = params.batch_size, image_size
        self.images = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, generator=generator)  # [B, 3, S, S]
        context = {
            "normalizer": Normalizer([0.5] * 3, [0.25] * 3),
            "image_size": s,
            "labels": torch.randint(0, 10, (b,), generator=generator),
            "num_classes": 10,
            "codes": torch.randint(0, WORDS, (b, (s // 2) ** 2), generator=generator),  # [B, L]
            "num_words": WORDS,
            "parent": {},
        }
        context = {k: v for k, v in context.items() if k in {f.name for f in dataclasses.fields(cls.Inputs)}}
        backbone = build_backbone(params.arch, params.width, params.depth)
        self.method = cls(params, backbone, cls.inputs(**context))
        self.method.train()
        self.optimizer = build_optimizer(params.optimizer, self.method.optimizer_groups(), params.lr, params.momentum)
        self.trained = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.index = torch.arange(b)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.params, self.batch = params, b
        self.count, self.total = 0, total_steps

    def step(self) -> None:
        """One step as `bowflow.train` runs it (one process, eager fp32)."""
        loss, stats = self.method.training_step(self.images, self.index, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.before_optimizer_step(self.count)
        self.method.clip_gradients(self.trained)
        self.optimizer.step()
        self.method.after_step(self.count, self.total)
        for value in stats.values():  # the trainer reads every statistic as a float each step
            float(value)
        self.count += 1

    def flops(self) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            loss, _ = self.method.training_step(self.images, self.index, self.generator)
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())


def obow_targets_before(maps, words, inv_delta, mean_distance, drop_border=1, decay=0.99):
    """OBoW's targets as they were computed before the chunked version (and as the formula
    reads): `soft_assign` on all B * h' * w' locations at once ([N, K] distances and codes),
    then the max over each image's locations, L1-normalised."""
    from bowflow.methods.obow import soft_assign

    if drop_border:
        maps = maps[:, :, drop_border:-drop_border, drop_border:-drop_border]
    b, c = maps.shape[:2]
    codes, mean_distance = soft_assign(
        maps.flatten(2).transpose(1, 2).reshape(-1, c), words, inv_delta, mean_distance, decay
    )
    bow = codes.view(b, -1, words.shape[0]).amax(dim=1)  # [B, K]
    return bow / bow.sum(dim=1, keepdim=True), mean_distance


# method -> (module, function, the function it replaced): what --before swaps back in
BEFORE = {"obow": ("bowflow.methods.obow", "obow_bow_targets", obow_targets_before)}


@contextlib.contextmanager
def code_before(method: str):
    """Run with `method`'s code as it was before its last speed fix (BEFORE), then restore it."""
    import importlib

    module_name, function, before = BEFORE[method]
    module = importlib.import_module(module_name)
    after = getattr(module, function)
    setattr(module, function, before)
    try:
        yield
    finally:
        setattr(module, function, after)


def measure(name: str, entry: dict, args) -> dict:
    """One method: median step seconds over --steps after --warmup, FLOPs per step."""
    step = MethodStep(entry, args.image_size, args.batch_size, args.warmup + args.steps)
    for _ in range(args.warmup):
        step.step()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step.step()
        seconds.append(time.perf_counter() - start)
    p = step.params
    return {
        "run": name,
        "method": p.method,
        "arch": p.arch,
        "width": p.width,
        "depth": p.depth,
        "batch_size": step.batch,
        "step_seconds": [round(s, 5) for s in seconds],
        "flops_per_step": step.flops(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", type=Path, default=PRESET)
    parser.add_argument("--methods", nargs="*", help="only these runs (names in the preset)")
    parser.add_argument("--image-size", type=int, help="pixels (default: the preset's data.image_size)")
    parser.add_argument("--batch-size", type=int, help="override every run's batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--matmul-n", type=int, default=1024)
    parser.add_argument("--profile", metavar="RUN", help="print torch.profiler's top operators of one run's step")
    parser.add_argument("--smoke", action="store_true", help="tiny: 16 px, batch 16, one step of three runs")
    parser.add_argument("--json", type=Path, help="write the run's record here")
    parser.add_argument("--before", action="store_true", help="also time each method's code before its speed fix")
    args = parser.parse_args(argv)
    preset = yaml.safe_load(args.preset.read_text())
    runs = runs_of(preset)
    if args.smoke:
        args.image_size, args.batch_size, args.warmup, args.steps, args.matmul_n = 16, 16, 1, 1, 256
        args.methods = args.methods or [name for name in runs if runs[name]["method"] in ("rotnet", "byol", "bownet")]
    args.image_size = args.image_size or preset["data"]["image_size"]
    unknown = sorted(set(args.methods or []) - set(runs))
    if unknown:
        raise SystemExit(f"bench_methods: {unknown} not in {args.preset}'s runs ({sorted(runs)})")
    chosen = {name: runs[name] for name in (args.methods or runs)}
    torch.set_num_threads(args.threads)
    if args.profile:
        return profile(args.profile, runs[args.profile], args)
    load_before = load_average()
    peak = matmul_gflops(args.matmul_n, torch.float32, reps=5)
    results = []
    for name, entry in chosen.items():
        result = measure(name, entry, args)
        results.append(result)
        print(f"{name:14s} {images_per_second(result):9.1f} images/s", file=sys.stderr, flush=True)
        if args.before and entry["method"] in BEFORE:
            with code_before(entry["method"]):
                result = measure(name, entry, args) | {"run": f"{name} (before)", "variant": "before"}
            results.append(result)
            print(f"{result['run']:14s} {images_per_second(result):9.1f} images/s", file=sys.stderr, flush=True)
    peak = max(peak, matmul_gflops(args.matmul_n, torch.float32, reps=5))  # best of before and after
    settings = {
        "preset": str(args.preset.relative_to(ROOT) if args.preset.is_absolute() else args.preset),
        "image_size": args.image_size,
        "threads": args.threads,
        "warmup": args.warmup,
        "steps": args.steps,
        "matmul_n": args.matmul_n,
        "mode": "eager fp32",
        "smoke": args.smoke,
        "before": args.before,
    }
    measurements = {"matmul_fp32_gflops": round(peak, 1), "methods": results}
    record = {"settings": settings, "measurements": measurements}
    if args.json:
        record = write_record(args.json, "bench_methods", argv, load_before, settings, measurements)
    for row in table([record]):
        print(" | ".join(row))
    rates = {r["run"]: round(images_per_second(r), 1) for r in results}
    print("RESULT " + json.dumps({"images_per_second": rates, "matmul_fp32_gflops": round(peak, 1)}))
    return record


def profile(name: str, entry: dict, args) -> dict:
    """torch.profiler over --steps steps of one run after --warmup: the top operators by self
    CPU time, printed."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = MethodStep(entry, args.image_size, args.batch_size, args.warmup + args.steps)
    for _ in range(args.warmup):
        step.step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    return {"run": name}


# --------------------------------------------------------------------------- the record's table


def images_per_second(result: dict) -> float:
    return result["batch_size"] / statistics.median(result["step_seconds"])


def table(records: list[dict]) -> list[list[str]]:
    """One row per method: images/s, its ratio to the median over the methods of the same
    backbone (arch, width, depth), GFLOP per step, achieved GFLOP/s and its share of the
    record's fp32 matmul rate."""
    rows = [["run", "method", "batch", "images/s", "x median", "GFLOP/step", "GFLOP/s", "% of matmul"]]
    for record in records:
        methods = record["measurements"]["methods"]
        peak = record["measurements"]["matmul_fp32_gflops"]
        by_backbone: dict[tuple, list[float]] = {}
        for r in methods:
            if "variant" not in r:  # a method's code before its fix is not one more method
                by_backbone.setdefault((r["arch"], r["width"], r["depth"]), []).append(images_per_second(r))
        for r in methods:
            rate = images_per_second(r)
            median = statistics.median(by_backbone[(r["arch"], r["width"], r["depth"])])
            gflops = r["flops_per_step"] / 1e9
            achieved = gflops / statistics.median(r["step_seconds"])
            rows.append(
                [
                    r["run"],
                    r["method"],
                    str(r["batch_size"]),
                    thousands(rate),
                    f"{rate / median:.2f}",
                    f"{gflops:.2f}",
                    f"{achieved:.1f}",
                    f"{100 * achieved / peak:.0f}",
                ]
            )
    return rows


if __name__ == "__main__":
    main()
