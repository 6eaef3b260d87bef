"""CPU compute modes of a real training step, side by side, and the machine's peak.

What runs: `BoWNet.training_step` (view augmentation, CutMix, convnet forward, normalised
head, soft cross-entropy; --method rotnet: crop/flip, 4 rotations per image, linear head,
cross-entropy) on synthetic uint8 images [B, 3, S, S] (with random BoW codes), then
backward and an SGD (Nesterov) step, exactly as the inner loop of `bowflow.train`.
Modes (each with its own model and optimiser):
    eager_fp32                   the default
    channels_last_fp32           model in NHWC as `train(channels_last=True)` does
                                 (convolutions then produce NHWC activations)
    bf16                         `torch.autocast("cpu", bfloat16)` around the step
    bf16_channels_last           both
    no_mkldnn_fp32               eager fp32 with oneDNN off (`torch.backends.mkldnn`):
                                 torch's own convolution kernels; not a choosable mode
    compile_fp32                 `backbone.compile()` (inductor, in place) [--compile]
    channels_last_compile_fp32   channels-last + compile                   [--compile]
each at every torch thread count in --threads (plus torch's default count). The compile
time of a compiled mode (its untimed warm-up steps minus as many median steps) is
reported: it is paid once per training stage.

BASELINE: eager_fp32 at torch's default thread count; every mode prints its ratio to it.
Timing: after warm-up steps, rounds interleave all (mode, threads) pairs and the peak
matmuls (A/B/C/A/B/C...), so that a change of machine load hits them alike; each pair's
rate is the median over rounds (the best round is kept in the JSON too), and the load
average before and after is printed with the results.

FLOPs per step: `torch.utils.flop_counter.FlopCounterMode` over one eager fp32 step,
forward + backward (2 FLOPs per multiply-add of aten mm/bmm/baddbmm/convolution and
convolution_backward; element-wise ops, BatchNorm and augmentation are not counted; the
optimiser step is elementwise and not counted). Achieved GFLOP/s of the fastest mode is
compared with the same run's dense fp32 N x N matmul GFLOP/s at the same thread count
(and with bf16 matmul, the fair peak when the fastest mode is a bf16 one: on CPUs with
AVX512-BF16 or AMX it is well above the fp32 peak, so a bf16 step can exceed 100% of fp32).

    python -m benchmarks.bench_compute                # 16 and 32 px, B=128, convnet w32
    python -m benchmarks.bench_compute --save         # ... and cache the fastest mode
    python -m benchmarks.bench_compute --method rotnet --batch-size 64 --sizes 32 \
        --threads 1,2 --compile                       # the CIFAR preset's teacher step

--save writes the (mode, threads) with the best geometric-mean ratio over --sizes (kept
at eager fp32 unless it gains --min-gain) to `bowflow.compute.cache_path()`, which
`bowflow.compute.decide_compute` reads (without a cache file training measures a few
seconds itself, see bowflow/compute.py). Measure on an otherwise idle machine: under
load from other processes two OpenMP threads on two cores wait on each other and one
thread wins.
    python -m benchmarks.bench_compute --smoke        # tiny, seconds

--json PATH also writes the run's record (benchmarks/recording.py): every (size, mode,
threads) pair's images/s of each round, FLOPs per step and the matmul peaks;
`table(records)` gives docs/BENCHMARKS.md section 2 (median images/s and the ratio to the
baseline, both recomputed from the rounds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.recording import write_record
from bowflow import compute
from bowflow.methods.bownet import BoWNetParams
from bowflow.methods.rotnet import RotNetParams
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.optim import build_optimizer
from bowflow.roles.base import get_method
from bowflow.train import autocast_context

# name -> (bf16, channels_last, compile, oneDNN on)
MODES = {
    "eager_fp32": (False, False, False, True),
    "channels_last_fp32": (False, True, False, True),
    "bf16": (True, False, False, True),
    "bf16_channels_last": (True, True, False, True),
    "no_mkldnn_fp32": (False, False, False, False),
}
COMPILE_MODES = {"compile_fp32": (False, False, True, True), "channels_last_compile_fp32": (False, True, True, True)}
BASELINE = "eager_fp32"


def sig(value: float) -> float:
    """3 significant digits (a smoke run's or an emulated mode's figures stay non-zero)."""
    return float(f"{value:.3g}")


class StepRunner:
    """One method (BoWNet or RotNet) + SGD optimiser in one mode; `step()` runs one full
    training step."""

    def __init__(
        self,
        size: int,
        width: int,
        batch: int,
        words: int,
        bf16: bool,
        channels_last: bool,
        seed: int = 0,
        method: str = "bownet",
        compile: bool = False,
        mkldnn: bool = True,
    ):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)  # [B, 3, S, S]
        codes = torch.randint(0, words, (batch, (size // 2) ** 2), generator=gen)  # [B, L]
        params = (
            BoWNetParams(width=width, batch_size=batch, lr=0.03)
            if method == "bownet"
            else RotNetParams(width=width, batch_size=batch, lr=0.1)
        )
        context = {
            "codes": codes,
            "num_words": words,
            "parent": {},
            "image_size": size,
            "normalizer": Normalizer([0.5] * 3, [0.25] * 3),
        }
        cls = get_method(method)
        self.method = cls(params, build_backbone("convnet", width), cls.inputs(**context))
        self.method.train()
        if channels_last:
            self.method.to(memory_format=torch.channels_last)
        if compile:  # in place, as bowflow.runs does
            self.method.backbone.compile()
        self.mkldnn = mkldnn
        self.inputs_per_image = 4 if method == "rotnet" else 1
        self.optimizer = build_optimizer("sgd", self.method.optimizer_groups(), params.lr, 0.9)
        self.index = torch.arange(batch)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.bf16, self.batch = bf16, batch

    def step(self) -> float:
        """One forward + backward + SGD step; returns the (finite) loss."""
        onednn_before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = self.mkldnn
        try:
            with autocast_context(torch.device("cpu"), self.bf16):
                loss, _ = self.method.training_step(self.images, self.index, self.generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss {loss.item()} (bf16={self.bf16})")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        finally:
            torch.backends.mkldnn.enabled = onednn_before
        return float(loss.detach())


def step_flops(size: int, width: int, batch: int, words: int, method: str = "bownet") -> int:
    """FLOPs of one eager fp32 step, forward + backward (FlopCounterMode, see module doc)."""
    from torch.utils.flop_counter import FlopCounterMode

    runner = StepRunner(size, width, batch, words, bf16=False, channels_last=False, method=method)
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = runner.method.training_step(runner.images, runner.index, runner.generator)
        loss.backward()
    return int(counter.get_total_flops())


def matmul_gflops(n: int, dtype: torch.dtype, reps: int) -> float:
    """Best-of-`reps` GFLOP/s of a dense n x n @ n x n matmul (2 n^3 FLOPs), current threads."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def measure_size(size: int, args, thread_counts: list[int], peak: dict, modes: dict) -> tuple[dict, dict, dict, dict]:
    """-> ({(mode, threads): median images/s}, {(mode, threads): best images/s},
    {mode: compile seconds}, {(mode, threads): images/s of each round}) at one image size.

    Each round also re-measures the matmul peaks, updating `peak[threads][dtype]` (max);
    the matmuls also spin up the OpenMP team after a change of thread count.
    """
    runners = {
        mode: StepRunner(
            size, args.width, args.batch_size, args.words, bf16, cl, method=args.method, compile=comp, mkldnn=onednn
        )
        for mode, (bf16, cl, comp, onednn) in modes.items()
    }
    warmup_s: dict[str, float] = {}
    for threads in thread_counts:  # warm-up every pair
        torch.set_num_threads(threads)
        for mode, runner in runners.items():
            start = time.perf_counter()
            for _ in range(args.warmup):
                runner.step()
            warmup_s[mode] = warmup_s.get(mode, 0.0) + time.perf_counter() - start
    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                gflops = matmul_gflops(args.matmul, dtype, args.matmul_reps)
                peak.setdefault(threads, {})[name] = max(peak.get(threads, {}).get(name, 0.0), gflops)
            for mode, runner in runners.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    runner.step()
                rate = args.steps * args.batch_size / (time.perf_counter() - start)
                samples.setdefault((mode, threads), []).append(rate)
    median = {key: statistics.median(v) for key, v in samples.items()}
    best = {key: max(v) for key, v in samples.items()}
    # compile seconds: warm-up time beyond what as many ordinary steps take
    compile_s = {}
    for mode, (_, _, comp, _) in modes.items():
        if comp:
            step_s = statistics.fmean(args.batch_size / median[(mode, t)] for t in thread_counts)
            compile_s[mode] = round(warmup_s[mode] - args.warmup * len(thread_counts) * step_s, 1)
    return median, best, compile_s, samples


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="16,32", help="image sides, comma separated")
    parser.add_argument(
        "--method",
        default="bownet",
        choices=["bownet", "rotnet"],
        help="whose training step (rotnet: 4 network inputs per image)",
    )
    parser.add_argument("--width", type=int, default=32, help="convnet width")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--words", type=int, default=64, help="vocabulary size K")
    parser.add_argument(
        "--threads", default="1,2", help="torch thread counts to try (torch's default count is always added)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per pair")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per pair per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--matmul", type=int, default=2048, help="N of the peak matmul")
    parser.add_argument("--matmul-reps", type=int, default=3, help="matmuls per dtype per round")
    parser.add_argument(
        "--min-gain", type=float, default=0.03, help="--save keeps the default mode unless another is this much faster"
    )
    parser.add_argument(
        "--compile", action="store_true", help="add the torch.compile modes (inductor; 15-60 s of compiling each)"
    )
    parser.add_argument("--modes", default="", help="comma-separated subset of the modes (the baseline is always run)")
    parser.add_argument(
        "--interop", type=int, default=0, help="torch.set_num_interop_threads before anything runs (0: default)"
    )
    parser.add_argument("--save", action="store_true", help="write the fastest mode to the cache select_compute reads")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the run's record here")
    args = parser.parse_args(argv)
    if args.interop:
        torch.set_num_interop_threads(args.interop)  # only possible before parallel work
    threads_before = torch.get_num_threads()
    try:
        return _run(args, threads_before, argv)
    finally:  # main() may be called in-process (tests): restore global state
        torch.set_num_threads(threads_before)


def _choose(rates: dict, sizes: list[int], default_threads: int, min_gain: float, modes: dict) -> dict:
    """The (mode, threads) with the best geometric-mean ratio to the baseline over sizes,
    among the modes a compute choice can express (oneDNN on)."""

    def gain(key):
        return math.exp(
            statistics.fmean(math.log(rates[size][key] / rates[size][(BASELINE, default_threads)]) for size in sizes)
        )

    best = max((key for key in rates[sizes[0]] if modes[key[0]][3]), key=gain)
    if gain(best) < 1.0 + min_gain:
        best = (BASELINE, default_threads)
    bf16, channels_last, comp, _ = modes[best[0]]
    threads = 0 if best[1] == default_threads else best[1]
    return {
        "mode": best[0],
        "threads_measured": best[1],
        "gain": round(gain(best), 3),
        "choice": {"bf16": bf16, "channels_last": channels_last, "threads": threads, "compile": comp},
    }


def _run(args: argparse.Namespace, default_threads: int, argv: list[str] | None = None) -> dict:
    if args.smoke:
        args.sizes, args.width, args.batch_size, args.words = "8", 8, 16, 16
        args.threads, args.warmup, args.steps, args.rounds, args.matmul = "1", 1, 1, 1, 256
        args.matmul_reps = 2
    sizes = [int(s) for s in args.sizes.split(",")]
    thread_counts = sorted({int(t) for t in args.threads.split(",")} | {default_threads})
    modes = {**MODES, **(COMPILE_MODES if args.compile else {})}
    if args.modes:
        wanted = set(args.modes.split(",")) | {BASELINE}
        unknown = wanted - set(MODES) - set(COMPILE_MODES)
        if unknown:
            raise SystemExit(f"unknown modes {sorted(unknown)}: expected {sorted(MODES) + sorted(COMPILE_MODES)}")
        modes = {m: v for m, v in {**MODES, **COMPILE_MODES}.items() if m in wanted}
    load_before = os.getloadavg()

    peak: dict[int, dict[str, float]] = {}
    rates, best_rates, compile_s, flops, rows, fastest, samples = {}, {}, {}, {}, [], {}, {}
    for size in sizes:
        torch.set_num_threads(default_threads)
        flops[size] = step_flops(size, args.width, args.batch_size, args.words, args.method)
        rates[size], best_rates[size], compile_s[size], samples[size] = measure_size(
            size, args, thread_counts, peak, modes
        )
    torch.set_num_threads(default_threads)
    load_after = os.getloadavg()
    per_input = 4 if args.method == "rotnet" else 1
    for size in sizes:
        base = rates[size][(BASELINE, default_threads)]
        print(
            f"\n{args.method}, convnet w{args.width}, {size}x{size}, batch {args.batch_size}"
            f" ({args.batch_size * per_input} network inputs), K={args.words}: "
            f"{flops[size] / 1e9:.2f} GFLOP per step (fwd+bwd); median of {args.rounds} rounds"
        )
        print(f"{'mode':<28}{'threads':>8}{'images/s':>10}{'best':>8}{'ratio':>7}{'GFLOP/s':>9}{'of fp32 mm':>11}")
        for (mode, threads), rate in rates[size].items():
            gflops = flops[size] * rate / args.batch_size / 1e9
            row = {
                "size": size,
                "mode": mode,
                "threads": threads,
                "images_per_s": sig(rate),
                "best_images_per_s": sig(best_rates[size][(mode, threads)]),
                "ratio": sig(rate / base),
                "gflops": sig(gflops),
                "fraction_of_fp32_matmul": sig(gflops / peak[threads]["fp32"]),
            }
            if mode in compile_s[size]:
                row["compile_seconds"] = compile_s[size][mode]
            rows.append(row)
            print(
                f"{mode:<28}{threads:>8}{rate:>10.0f}{row['best_images_per_s']:>8.0f}"
                f"{rate / base:>7.2f}{gflops:>9.1f}{row['fraction_of_fp32_matmul']:>11.1%}"
                + (f"  (compile {compile_s[size][mode]:.0f} s)" if mode in compile_s[size] else "")
            )
        (mode, threads), rate = max(rates[size].items(), key=lambda item: item[1])
        gflops = flops[size] * rate / args.batch_size / 1e9
        fastest[size] = {
            "mode": mode,
            "threads": threads,
            "images_per_s": sig(rate),
            "ratio": sig(rate / base),
            "gflops": sig(gflops),
            "fraction_of_fp32_matmul": sig(gflops / peak[threads]["fp32"]),
            "fraction_of_bf16_matmul": sig(gflops / peak[threads]["bf16"]),
        }
        print(
            f"fastest: {mode} x{threads} threads = {gflops:.1f} GFLOP/s = "
            f"{gflops / peak[threads]['fp32']:.1%} of fp32 matmul, "
            f"{gflops / peak[threads]['bf16']:.1%} of bf16 matmul (at {threads} threads)"
        )

    print(
        f"\ndense {args.matmul}x{args.matmul} matmul GFLOP/s: "
        + ", ".join(f"{t} threads fp32 {p['fp32']:.1f} bf16 {p['bf16']:.1f}" for t, p in peak.items())
    )
    print("load average before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(*load_before, *load_after))
    choice = _choose(rates, sizes, default_threads, args.min_gain, modes)
    print(
        f"choice for select_compute: {choice['mode']} x{choice['threads_measured']} threads "
        f"(geometric-mean gain {choice['gain']:.2f} over {sizes}) -> {choice['choice']}"
    )
    result = {
        "method": args.method,
        "sizes": sizes,
        "width": args.width,
        "batch_size": args.batch_size,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "cpu_flags": compute.relevant_flags(compute.cpu_flags()),
        "words": args.words,
        "default_threads": default_threads,
        "baseline": f"{BASELINE} x{default_threads} threads",
        "gflop_per_step": {str(s): sig(f / 1e9) for s, f in flops.items()},
        "matmul_n": args.matmul,
        "matmul_gflops": {str(t): {k: sig(v) for k, v in p.items()} for t, p in peak.items()},
        "modes": rows,
        "fastest": {str(s): f for s, f in fastest.items()},
        **choice,
    }
    if args.save:
        path = compute.save_choice(
            choice["choice"],
            {
                "source": "bench_compute --save",
                "cpu_flags": result["cpu_flags"],
                "loadavg": result["loadavg_before"],
                "benchmark": result,
            },
        )
        result["saved"] = str(path)
        print(f"saved to {path}")
    if args.json is not None:
        write_record(
            args.json,
            "bench_compute",
            argv,
            [round(x, 2) for x in load_before],
            settings={
                "method": args.method,
                "sizes": sizes,
                "width": args.width,
                "batch_size": args.batch_size,
                "words": args.words,
                "thread_counts": thread_counts,
                "default_threads": default_threads,
                "baseline": BASELINE,
                "modes": list(modes),
                "warmup": args.warmup,
                "steps": args.steps,
                "rounds": args.rounds,
                "matmul_n": args.matmul,
                "matmul_reps": args.matmul_reps,
                "smoke": args.smoke,
            },
            measurements={
                "images_per_s": [
                    {"size": size, "mode": mode, "threads": threads, "rounds": values}
                    for size in sizes
                    for (mode, threads), values in samples[size].items()
                ],
                "flop_per_step": {str(size): f for size, f in flops.items()},
                "matmul_gflops": {str(t): p for t, p in peak.items()},
                "compile_seconds": {str(size): c for size, c in compile_s.items() if c},
            },
        )
    print("RESULT " + json.dumps(result))
    return result


MODE_LABELS = {
    "eager_fp32": "eager fp32",
    "channels_last_fp32": "channels-last fp32",
    "bf16": "bf16 autocast",
    "bf16_channels_last": "bf16 + channels-last",
    "no_mkldnn_fp32": "eager fp32, oneDNN off",
    "compile_fp32": "compiled fp32",
    "channels_last_compile_fp32": "channels-last + compiled fp32",
}


def medians(record: dict) -> dict[tuple[int, str, int], float]:
    """{(size, mode, threads): median images/s over the record's rounds}."""
    return {
        (r["size"], r["mode"], r["threads"]): statistics.median(r["rounds"])
        for r in record["measurements"]["images_per_s"]
    }


def table(records: list[dict]) -> list[list[str]]:
    """docs/BENCHMARKS.md section 2 from one record: per mode, at each size and thread
    count, the median images/s over the rounds (ratio to the baseline at torch's default
    thread count)."""
    (record,) = records
    s, rate = record["settings"], medians(record)
    columns = [(size, t) for size in s["sizes"] for t in s["thread_counts"]]
    rows = [["mode"] + [f"{size} px, {t} thread{'s' if t != 1 else ''}" for size, t in columns]]
    for mode in s["modes"]:
        cells = []
        for size, t in columns:
            base = rate[(size, s["baseline"], s["default_threads"])]
            cells.append(f"{rate[(size, mode, t)]:.0f} ({rate[(size, mode, t)] / base:.2f})")
        rows.append([MODE_LABELS.get(mode, mode)] + cells)
    return rows


def fastest(record: dict, size: int) -> dict:
    """The fastest (mode, threads) pair at one size by median images/s, with its GFLOP/s and
    the fractions of the same run's matmul peaks at its thread count."""
    s, m = record["settings"], record["measurements"]
    (_, mode, threads), rate = max(
        ((k, v) for k, v in medians(record).items() if k[0] == size), key=lambda item: item[1]
    )
    gflops = m["flop_per_step"][str(size)] * rate / s["batch_size"] / 1e9
    peak = m["matmul_gflops"][str(threads)]
    return {
        "mode": mode,
        "threads": threads,
        "images_per_s": rate,
        "gflops": gflops,
        "of_fp32": gflops / peak["fp32"],
        "of_bf16": gflops / peak["bf16"],
    }


if __name__ == "__main__":
    main()
