"""CPU compute modes of a real BoWNet training step, side by side, and the machine's peak.

What runs: `BoWNet.training_step` (view augmentation, CutMix, convnet forward, normalised
head, soft cross-entropy) on synthetic uint8 images [B, 3, S, S] with random BoW codes,
then backward and an SGD (Nesterov) step, exactly as the inner loop of `bowflow.train`.
Modes (each with its own model and optimiser):
    eager_fp32           the default
    channels_last_fp32   model in NHWC as `train(channels_last=True)` does (convolutions
                         then produce NHWC activations)
    bf16                 `torch.autocast("cpu", bfloat16)` around the step
    bf16_channels_last   both
each at every torch thread count in --threads (plus torch's default count).

BASELINE: eager_fp32 at torch's default thread count; every mode prints its ratio to it.
Timing: after warm-up steps, rounds interleave all (mode, threads) pairs and the peak
matmuls, so that a change of machine load hits them alike; each pair's rate (and each
peak) is its best round, the least disturbed one on a shared machine.

FLOPs per step: `torch.utils.flop_counter.FlopCounterMode` over one eager fp32 step,
forward + backward (2 FLOPs per multiply-add of aten mm/bmm/baddbmm/convolution and
convolution_backward; element-wise ops, BatchNorm and augmentation are not counted; the
optimiser step is elementwise and not counted). Achieved GFLOP/s of the fastest mode is
compared with the same run's dense fp32 N x N matmul GFLOP/s at the same thread count
(and with bf16 matmul, the fair peak when the fastest mode is a bf16 one: on CPUs with
AVX512-BF16 or AMX it is well above the fp32 peak, so a bf16 step can exceed 100% of fp32).

    python -m benchmarks.bench_compute                # 16 and 32 px, B=128, convnet w32
    python -m benchmarks.bench_compute --save         # ... and cache the fastest mode

--save writes the (mode, threads) with the best geometric-mean ratio over --sizes (kept
at eager fp32 unless it gains --min-gain) to `bowflow.compute.cache_path()`, which
`select_compute` reads. Measure on an otherwise idle machine: under load from other
processes two OpenMP threads on two cores wait on each other and one thread wins.
    python -m benchmarks.bench_compute --smoke        # tiny, seconds
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from bowflow import compute
from bowflow.methods import get_method
from bowflow.methods.bownet import BoWNetParams
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.train import autocast_context, param_groups

MODES = {"eager_fp32": (False, False), "channels_last_fp32": (False, True),
         "bf16": (True, False), "bf16_channels_last": (True, True)}
BASELINE = "eager_fp32"


class StepRunner:
    """One BoWNet + SGD optimiser in one mode; `step()` runs one full training step."""

    def __init__(self, size: int, width: int, batch: int, words: int, bf16: bool,
                 channels_last: bool, seed: int = 0):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8,
                                    generator=gen)                       # [B, 3, S, S]
        codes = torch.randint(0, words, (batch, (size // 2) ** 2), generator=gen)  # [B, L]
        params = BoWNetParams(width=width, batch_size=batch, lr=0.03)
        context = {"codes": codes, "num_words": words, "image_size": size,
                   "normalizer": Normalizer([0.5] * 3, [0.25] * 3)}
        self.method = get_method("bownet")(params, build_backbone("convnet", width), context)
        self.method.train()
        if channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(param_groups(self.method, params.weight_decay),
                                         lr=params.lr, momentum=0.9, nesterov=True)
        self.index = torch.arange(batch)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.bf16, self.batch = bf16, batch

    def step(self) -> float:
        """One forward + backward + SGD step; returns the (finite) loss."""
        with autocast_context(torch.device("cpu"), self.bf16):
            loss, _ = self.method.training_step(self.images, self.index, self.generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss {loss.item()} (bf16={self.bf16})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def step_flops(size: int, width: int, batch: int, words: int) -> int:
    """FLOPs of one eager fp32 step, forward + backward (FlopCounterMode, see module doc)."""
    from torch.utils.flop_counter import FlopCounterMode

    runner = StepRunner(size, width, batch, words, bf16=False, channels_last=False)
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
    torch.mm(a, b, out=out)                                      # warm-up
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def measure_size(size: int, args, thread_counts: list[int], peak: dict) -> dict[tuple[str, int], float]:
    """-> images/s of every (mode, threads) pair at one image size (best round).

    Each round also re-measures the matmul peaks, updating `peak[threads][dtype]` (max).
    """
    runners = {mode: StepRunner(size, args.width, args.batch_size, args.words, bf16, cl)
               for mode, (bf16, cl) in MODES.items()}
    for threads in thread_counts:                                # warm-up every pair
        torch.set_num_threads(threads)
        for runner in runners.values():
            for _ in range(args.warmup):
                runner.step()
    rates: dict[tuple[str, int], float] = {}
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
                rates[(mode, threads)] = max(rates.get((mode, threads), 0.0), rate)
    return rates


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="16,32", help="image sides, comma separated")
    parser.add_argument("--width", type=int, default=32, help="convnet width")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--words", type=int, default=64, help="vocabulary size K")
    parser.add_argument("--threads", default="1,2", help="torch thread counts to try "
                        "(torch's default count is always added)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per pair")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per pair per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--matmul", type=int, default=2048, help="N of the peak matmul")
    parser.add_argument("--matmul-reps", type=int, default=3, help="matmuls per dtype per round")
    parser.add_argument("--min-gain", type=float, default=0.03,
                        help="--save keeps the default mode unless another is this much faster")
    parser.add_argument("--save", action="store_true",
                        help="write the fastest mode to the cache select_compute reads")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    args = parser.parse_args(argv)
    threads_before = torch.get_num_threads()
    try:
        return _run(args, threads_before)
    finally:              # main() may be called in-process (tests): restore global state
        torch.set_num_threads(threads_before)


def _choose(rates: dict, sizes: list[int], default_threads: int, min_gain: float) -> dict:
    """The (mode, threads) with the best geometric-mean ratio to the baseline over sizes."""
    def gain(key):
        return math.exp(statistics.fmean(
            math.log(rates[size][key] / rates[size][(BASELINE, default_threads)]) for size in sizes))
    best = max(rates[sizes[0]], key=gain)
    if gain(best) < 1.0 + min_gain:
        best = (BASELINE, default_threads)
    bf16, channels_last = MODES[best[0]]
    threads = 0 if best[1] == default_threads else best[1]
    return {"mode": best[0], "threads_measured": best[1], "gain": round(gain(best), 3),
            "choice": {"bf16": bf16, "channels_last": channels_last, "threads": threads}}


def _run(args: argparse.Namespace, default_threads: int) -> dict:
    if args.smoke:
        args.sizes, args.width, args.batch_size, args.words = "8", 8, 16, 16
        args.threads, args.warmup, args.steps, args.rounds, args.matmul = "1", 1, 1, 1, 256
        args.matmul_reps = 2
    sizes = [int(s) for s in args.sizes.split(",")]
    thread_counts = sorted({int(t) for t in args.threads.split(",")} | {default_threads})

    peak: dict[int, dict[str, float]] = {}
    rates, flops, rows, fastest = {}, {}, [], {}
    for size in sizes:
        torch.set_num_threads(default_threads)
        flops[size] = step_flops(size, args.width, args.batch_size, args.words)
        rates[size] = measure_size(size, args, thread_counts, peak)
    torch.set_num_threads(default_threads)
    for size in sizes:
        base = rates[size][(BASELINE, default_threads)]
        print(f"\nconvnet w{args.width}, {size}x{size}, batch {args.batch_size}, K={args.words}: "
              f"{flops[size] / 1e9:.2f} GFLOP per step (fwd+bwd)")
        print(f"{'mode':<22}{'threads':>8}{'images/s':>11}{'ratio':>8}{'GFLOP/s':>9}")
        for (mode, threads), rate in rates[size].items():
            gflops = flops[size] * rate / args.batch_size / 1e9
            rows.append({"size": size, "mode": mode, "threads": threads,
                         "images_per_s": round(rate, 1), "ratio": round(rate / base, 3),
                         "gflops": round(gflops, 2)})
            print(f"{mode:<22}{threads:>8}{rate:>11.0f}{rate / base:>8.2f}{gflops:>9.1f}")
        (mode, threads), rate = max(rates[size].items(), key=lambda item: item[1])
        gflops = flops[size] * rate / args.batch_size / 1e9
        fastest[size] = {"mode": mode, "threads": threads, "images_per_s": round(rate, 1),
                         "ratio": round(rate / base, 3), "gflops": round(gflops, 2),
                         "fraction_of_fp32_matmul": round(gflops / peak[threads]["fp32"], 3),
                         "fraction_of_bf16_matmul": round(gflops / peak[threads]["bf16"], 3)}
        print(f"fastest: {mode} x{threads} threads = {gflops:.1f} GFLOP/s = "
              f"{gflops / peak[threads]['fp32']:.1%} of fp32 matmul, "
              f"{gflops / peak[threads]['bf16']:.1%} of bf16 matmul (at {threads} threads)")

    print(f"\ndense {args.matmul}x{args.matmul} matmul GFLOP/s: " + ", ".join(
        f"{t} threads fp32 {p['fp32']:.1f} bf16 {p['bf16']:.1f}" for t, p in peak.items()))
    choice = _choose(rates, sizes, default_threads, args.min_gain)
    print(f"choice for select_compute: {choice['mode']} x{choice['threads_measured']} threads "
          f"(geometric-mean gain {choice['gain']:.2f} over {sizes}) -> {choice['choice']}")
    result = {"sizes": sizes, "width": args.width, "batch_size": args.batch_size,
              "words": args.words, "default_threads": default_threads,
              "baseline": f"{BASELINE} x{default_threads} threads",
              "gflop_per_step": {str(s): round(f / 1e9, 3) for s, f in flops.items()},
              "matmul_n": args.matmul,
              "matmul_gflops": {str(t): {k: round(v, 1) for k, v in p.items()} for t, p in peak.items()},
              "modes": rows, "fastest": {str(s): f for s, f in fastest.items()}, **choice}
    if args.save:
        path = compute.save_choice(choice["choice"], {"benchmark": result})
        result["saved"] = str(path)
        print(f"saved to {path}")
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
