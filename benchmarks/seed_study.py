"""A seed study of a params file: run its whole pipeline in a scratch copy of the project with
the seeds and compute mode given, and keep the run as a record.

    python -m benchmarks.seed_study --seeds 0 1 2 3 4 --compute fp32-channels-last-t1 \
        --out docs/results/digits-seeds-fp32
    python -m benchmarks.seed_study --seeds 0 1 2 3 4 --compute bf16-channels-last-t1 \
        --out docs/results/digits-seeds-bf16 --baseline docs/results/digits-seeds-fp32

The copy (bowflow.scaffold.make_project, under --work) gets params.yaml (or --params) with
`seeds:` and `compute:` replaced, its dvc.yaml written for those seeds, and runs `bin/repro`
(every seed's stages side by side, then the report). The record (--out) is what
`benchmarks.records` reads: dvc.lock, metrics/, plots/, report.md, and `study.json` (the
command, machine and wall time). A study whose --work folder exists resumes: DVC reruns only
what is missing. Nothing of the project's own data/ is touched.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bowflow.compute import cpu_flags, cpu_model, relevant_flags
from bowflow.io import write_json
from bowflow.scaffold import ROOT, make_project, write_params
from bowflow.sections import load_yaml

RECORD_FILES = ("dvc.lock",)
RECORD_FOLDERS = {"data/metrics": "metrics", "data/plots": "plots"}


def study_params(params: dict, seeds: list[int], compute: str) -> dict:
    """params with the study's seeds and compute mode."""
    out = copy.deepcopy(params)
    out["seeds"], out["compute"] = list(seeds), compute
    return out


def keep_record(project: Path, out: Path) -> None:
    """Copy the run's lock, metrics, curves and report into the record folder `out`."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in RECORD_FILES:
        shutil.copy2(project / name, out / name)
    for source, target in RECORD_FOLDERS.items():
        shutil.copytree(project / source, out / target)
    for path in (project / "data/report").iterdir():
        shutil.copy2(path, out / path.name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--compute", required=True, help="params.yaml compute: mode of the study")
    parser.add_argument("--out", type=Path, required=True, help="record folder to write")
    parser.add_argument(
        "--baseline",
        help="the record this one is compared with, paired by seed "
        "(benchmarks.records table=modes), e.g. the same seeds in fp32",
    )
    parser.add_argument("--work", type=Path, help="scratch project (default: /tmp/bowflow-study-<out name>)")
    args = parser.parse_args(argv)
    work = args.work or Path("/tmp") / f"bowflow-study-{args.out.name}"
    params = study_params(load_yaml(args.params), args.seeds, args.compute)
    if (work / "params.yaml").exists():
        write_params(work, params)  # resume: DVC skips what is done
    else:
        make_project(work, params)
    started = time.perf_counter()
    subprocess.run(["bin/repro"], cwd=work, check=True)
    seconds = time.perf_counter() - started
    keep_record(work, args.out)
    study = {
        "command": "python -m benchmarks.seed_study " + " ".join(sys.argv[1:] if argv is None else argv),
        "seeds": args.seeds,
        "compute": args.compute,
        "params": str(args.params),
        "wall_seconds_this_call": round(seconds, 1),
        "cpu_model": cpu_model(),
        "cpu_flags": relevant_flags(cpu_flags()),
        "cpus": len(__import__("os").sched_getaffinity(0)),
        "python": platform.python_version(),
        **({"baseline": args.baseline} if args.baseline else {}),
    }
    write_json(args.out / "study.json", study)
    print(f"RESULT {json.dumps(study)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
