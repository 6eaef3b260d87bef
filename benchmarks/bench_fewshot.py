"""Few-shot evaluation: per-episode Python loop vs batched episodes, on the same episodes.

What runs: `bowflow.evaluation.few_shot_reference_loop` (BASELINE: one Python iteration per
episode) and `bowflow.evaluation.few_shot` (episodes_per_batch episodes per gather + bmm),
both end to end on the same synthetic frozen features: C classes x P images, D dims, Gaussian
class means scaled so accuracies sit mid-range (argmax decisions are not trivial). Both draw
identical episodes from the labels and the seed, so their outputs must be equal; the script
exits with status 1 if they are not.

Timing: one untimed warm-up call of each, then `--rounds` rounds that alternate the two
(so a change of machine load hits both alike); each reports its median round. Episode
drawing (shared by both, part of both timings) is also timed on its own. Everything runs
on one torch intra-op thread, as both evaluated functions do whatever the process setting
(see `bowflow.evaluation._one_intra_op_thread`).

    python -m benchmarks.bench_fewshot            # 5 x 1000 x D=256, shots 1/5/10/50, 1000 eps.
    python -m benchmarks.bench_fewshot --smoke    # tiny, about a second

The last line is `RESULT {json}`. --json PATH also writes the run's record
(benchmarks/recording.py): every round's seconds of both and of drawing the episodes;
`table(records)` gives docs/BENCHMARKS.md section 5, one row per record (medians and the
speed-up recomputed from the rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.recording import load_average, load_range, write_record
from bowflow.evaluation import few_shot, few_shot_reference_loop, sample_episodes


def synthetic_features(
    n_classes: int, per_class: int, dim: int, seed: int = 0, separation: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [C*P, D] float32 = separation * class mean + unit Gaussian noise; y [C*P] int64.

    separation 0.15 puts 5-way accuracy at roughly 30 % (1-shot) to 75 % (50-shot).
    """
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n_classes, dim, generator=gen)  # [C, D]
    y = torch.arange(n_classes).repeat_interleave(per_class)  # [C*P]
    x = separation * means[y] + torch.randn(len(y), dim, generator=gen)
    return x, y


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def benchmark(smoke: bool, rounds: int | None = None) -> dict:
    """Time both implementations on the same episodes, print a table; return the RESULT dict."""
    if smoke:
        n_classes, per_class, dim, shots, episodes = 5, 100, 64, [1, 5], 100
    else:
        n_classes, per_class, dim, shots, episodes = 5, 1000, 256, [1, 5, 10, 50], 1000
    rounds = rounds or (1 if smoke else 3)
    n_way, n_query, seed, per_batch = 5, 15, 0, 256

    x, y = synthetic_features(n_classes, per_class, dim)
    run = dict(n_way=n_way, shots=shots, n_query=n_query, n_episodes=episodes, seed=seed)

    # Warm-up: first-call allocations and lazy initialisation stay out of the timings.
    warm = dict(run, shots=[1], n_episodes=8)
    few_shot_reference_loop(x, y, **warm)
    few_shot(x, y, **warm, episodes_per_batch=per_batch)

    loop_times, batched_times, draw_times = [], [], []
    for _ in range(rounds):
        t, loop_res = timed(lambda: few_shot_reference_loop(x, y, **run))
        loop_times.append(t)
        t, batched_res = timed(lambda: few_shot(x, y, **run, episodes_per_batch=per_batch))
        batched_times.append(t)
        t, _ = timed(lambda: sample_episodes(y, n_way, max(shots), n_query, episodes, seed))
        draw_times.append(t)
    loop_s = statistics.median(loop_times)
    batched_s = statistics.median(batched_times)
    draw_s = statistics.median(draw_times)
    match = loop_res == batched_res

    print(
        f"few-shot {n_way}-way, {n_query} queries/class, {episodes} episodes per shot count, "
        f"shots {shots}; features {n_classes} x {per_class} x D={dim}; "
        f"{os.cpu_count()} CPUs, 1 torch thread; median of {rounds} rounds"
    )
    print(f"{'shots':>5}  {'mean %':>8}  {'ci95 %':>7}")
    for n in shots:
        print(f"{n:>5}  {batched_res[n]['mean']:8.3f}  {batched_res[n]['ci95']:7.3f}")
    print(f"reference loop (BASELINE)   {loop_s:8.3f} s")
    print(f"batched ({per_batch}/batch)         {batched_s:8.3f} s   speed-up x{loop_s / batched_s:.2f}")
    print(f"  of which episode drawing  {draw_s:8.3f} s (shared by both)")
    print(f"results identical: {match}")

    return {
        "benchmark": "fewshot",
        "smoke": smoke,
        "n_classes": n_classes,
        "per_class": per_class,
        "dim": dim,
        "n_way": n_way,
        "n_query": n_query,
        "shots": shots,
        "episodes": episodes,
        "episodes_per_batch": per_batch,
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "loop_s": round(loop_s, 4),
        "batched_s": round(batched_s, 4),
        "draw_s": round(draw_s, 4),
        "speedup": round(loop_s / batched_s, 2),
        "match": match,
        "rounds_s": {"loop": loop_times, "batched": batched_times, "draw": draw_times},
        "accuracy": {
            str(n): {"mean": round(r["mean"], 3), "ci95": round(r["ci95"], 3)} for n, r in batched_res.items()
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, about a second")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3, smoke 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the run's record here")
    args = parser.parse_args(argv)
    load_before = load_average()

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as few_shot / few_shot_reference_loop do internally anyway
    try:
        result = benchmark(args.smoke, args.rounds)
    finally:
        torch.set_num_threads(previous_threads)
    rounds_s = result.pop("rounds_s")
    if args.json is not None:
        write_record(
            args.json,
            "bench_fewshot",
            argv,
            load_before,
            settings={
                k: result[k]
                for k in (
                    "smoke",
                    "n_classes",
                    "per_class",
                    "dim",
                    "n_way",
                    "n_query",
                    "shots",
                    "episodes",
                    "episodes_per_batch",
                    "rounds",
                )
            }
            | {"threads": 1},
            measurements={"seconds": rounds_s, "match": result["match"], "accuracy": result["accuracy"]},
        )
    print("RESULT " + json.dumps(result))
    if not result["match"]:
        raise SystemExit("batched few_shot differs from the reference loop")
    return result


def medians(record: dict) -> dict[str, float]:
    """Median seconds over the record's rounds: loop, batched, draw (drawing the episodes)."""
    return {k: statistics.median(v) for k, v in record["measurements"]["seconds"].items()}


def table(records: list[dict]) -> list[list[str]]:
    """docs/BENCHMARKS.md section 5: one row per record, the median seconds of the
    per-episode loop and of the batched episodes, the speed-up, whether both agree."""
    per_batch = {r["settings"]["episodes_per_batch"] for r in records}
    rows = [
        [
            "run (load)",
            "per-episode loop",
            f"batched ({'/'.join(map(str, sorted(per_batch)))} episodes per bmm)",
            "speed-up",
            "results",
        ]
    ]
    for i, r in enumerate(records, 1):
        t = medians(r)
        rows.append(
            [
                f"{i} ({load_range(r)})",
                f"{t['loop']:.3f} s",
                f"{t['batched']:.3f} s",
                f"{t['loop'] / t['batched']:.1f}x",
                "identical" if r["measurements"]["match"] else "differ",
            ]
        )
    return rows


if __name__ == "__main__":
    main()
