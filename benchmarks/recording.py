"""The JSON record a benchmark writes with `--json PATH` (docs/results/bench/<name>/*.json).

    {"benchmark": "bench_augment", "command": "python -m benchmarks.bench_augment --threads 1",
     "machine": CPU model, "cpu_flags": bowflow.compute.relevant_flags of the CPU,
     "cpus": CPUs this process may run on, "load_average": {"before": [1, 5, 15 min],
     "after": [...]}, "torch": version, "settings": {...}, "measurements": {...}}

`settings` are what the run was asked to do (sizes, threads, counts), `measurements` the
raw figures it took (seconds, images/s per round, inertias), never formatted strings or
ratios: each benchmark's `table(records)` derives its Markdown rows (ratios included) from
one or more such records, and `python -m benchmarks.records check` compares them with the
published table (table kind `bench`).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import torch

from bowflow.compute import cpu_flags, cpu_model, relevant_flags
from bowflow.io import write_json


def load_average() -> list[float]:
    """os.getloadavg(), rounded to 2 decimals (1, 5, 15 min)."""
    return [round(x, 2) for x in os.getloadavg()]


def command(benchmark: str, argv: list[str] | None) -> str:
    """The command line that ran the benchmark (argv None: this process's arguments)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python -m benchmarks." + benchmark, shlex.join(args)]).strip()


def write_record(
    path: str | os.PathLike,
    benchmark: str,
    argv: list[str] | None,
    load_before: list[float],
    settings: dict,
    measurements: dict,
) -> dict:
    """Write the record (atomically, bowflow.io.write_json) and return it."""
    record = {
        "benchmark": benchmark,
        "command": command(benchmark, argv),
        "machine": cpu_model(),
        "cpu_flags": relevant_flags(cpu_flags()),
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": {"before": load_before, "after": load_average()},
        "torch": torch.__version__,
        "settings": settings,
        "measurements": measurements,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return record


def load_range(record: dict) -> str:
    """The 1-minute load average before and after the run: '2.4-3.7' (low-high), or '2.4'."""
    a, b = sorted([record["load_average"]["before"][0], record["load_average"]["after"][0]])
    return f"{a:.1f}" if f"{a:.1f}" == f"{b:.1f}" else f"{a:.1f}-{b:.1f}"


def thousands(x: float) -> str:
    """12,345 (rounded to an integer)."""
    return f"{x:,.0f}"
