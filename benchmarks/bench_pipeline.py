"""Pipeline overhead: a no-op `dvc repro`, and the way from a params edit to training.

Everything runs in a scratch copy of the project (`bowflow.scaffold.make_project` with
the tiny params: digits at 8 px, seconds per stage), with the project venv's bin first on
PATH and PYTHONUNBUFFERED=1:

1. `dvc repro` once, so that everything is cached (timed, for reference).
2. BASELINE: a bare `python -c "import torch"`, the fixed cost of one stage process.
   Candidate: a no-op `dvc repro` (nothing changed, nothing runs). Both are repeated
   --repeats times, alternately; medians and their ratio are reported.
3. `generations.g2.student.epochs` += 1 (via `write_params`), then `dvc repro`, reading
   its merged output line by line (tqdm's carriage returns split lines too) and stamping
   the wall time since launch of:
       check_params   "Running stage 'check_params'" (params.yaml changed)
       student_start  "Running stage 'student_seed0@g2'" (the tiny params' one seed)
       first_log      the stage's first "[bowflow ...]" log line (process up, imports done)
       first_step     tqdm's first render of "epoch 1/": the loop is about to run step 1
       first_epoch    the "epoch=1 " log line: epoch 1 done
       done           dvc exits (evaluate_student_seed0@g2 and report rerun after the student)
   The student's startup (student_start -> first_step) is also given as a ratio to the
   bare `import torch` baseline. No project code is changed for any of this.

    python -m benchmarks.bench_pipeline            # full tiny pipeline, ~minutes
    python -m benchmarks.bench_pipeline --smoke    # only the check_params stage, seconds

--json PATH also writes the run's record (benchmarks/recording.py): every repeat's seconds
and the stamps; `table(records)` gives docs/BENCHMARKS.md section 6 (medians and ratios
recomputed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.recording import load_average, write_record

ROOT = Path(__file__).resolve().parent.parent
SEED = 0  # the training seed whose student is timed (tiny_params has seeds [0])
STUDENT = f"student_seed{SEED}@g2"
EVENTS = {  # name -> regex of the line that marks it (searched after the previous event)
    "check_params": r"Running stage 'check_params'",
    "student_start": rf"Running stage '{re.escape(STUDENT)}'",
    "first_log": r"^\[bowflow \d\d:\d\d:\d\d\]",
    "first_step": r"epoch 1/\d+",
    "first_epoch": r"\bepoch=1 ",
}


def _env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}


def timed(command: list[str], cwd: Path) -> float:
    """Wall seconds of one command (which must succeed)."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def stamped_run(command: list[str], cwd: Path, events: dict[str, str]) -> tuple[dict, list[str]]:
    """Run `command`, stamping (seconds since launch) the first line matching each event's
    regex in order. -> ({event: seconds or None, "done": seconds}, names of stages run)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pending = list(events.items())
    stamps: dict[str, float | None] = {name: None for name in events}
    lines, buffer = [], b""
    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        now = time.perf_counter() - start
        parts = re.split(rb"[\r\n]", buffer + chunk)
        buffer = parts.pop()
        for raw in parts:
            line = raw.decode(errors="replace")
            lines.append(line)
            while pending and re.search(pending[0][1], line):
                stamps[pending.pop(0)[0]] = now
        partial = buffer.decode(errors="replace")  # tqdm's first render ends in no newline
        while pending and re.search(pending[0][1], partial):
            stamps[pending.pop(0)[0]] = now
    lines.append(buffer.decode(errors="replace"))
    code = proc.wait()
    stamps["done"] = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n" + "\n".join(lines[-40:]))
    stages = re.findall(r"Running stage '([^']+)'", "\n".join(lines))
    return stamps, stages


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="no-op repro / import torch runs")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--smoke", action="store_true", help="only the check_params stage")
    parser.add_argument("--json", type=Path, default=None, help="also write the run's record here")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.smoke:
        args.repeats = 1
    if args.workdir is not None:
        return _run(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="bowflow-bench-") as scratch:
        return _run(args, Path(scratch))


def _run(args: argparse.Namespace, scratch: Path) -> dict:
    from bowflow.scaffold import make_project, tiny_params, write_params

    load_before = load_average()
    params = tiny_params()
    params["seeds"] = [SEED]
    project = make_project(scratch / "project", params)
    target = ["check_params"] if args.smoke else []
    repro = ["dvc", "repro", *target]
    initial = timed(repro, project)
    initial_stages = len(yaml.safe_load((project / "dvc.lock").read_text())["stages"])

    imports, noops = [], []
    for _ in range(args.repeats):
        imports.append(timed([sys.executable, "-c", "import torch"], project))
        noops.append(timed(repro, project))
    import_s, noop_s = statistics.median(imports), statistics.median(noops)

    params["generations"]["g2"]["student"]["epochs"] += 1
    write_params(project, params)
    events = {"check_params": EVENTS["check_params"]} if args.smoke else EVENTS
    stamps, stages = stamped_run(repro, project, events)
    startup = (
        stamps["first_step"] - stamps["student_start"]
        if stamps.get("first_step") is not None and stamps.get("student_start") is not None
        else None
    )

    print(
        f"scratch project {project} ({'check_params only' if args.smoke else 'tiny params'}); "
        f"first {' '.join(repro)} {initial:.1f} s"
    )
    print(f"{'process':<40}{'seconds':>10}{'ratio':>8}")
    baseline = 'BASELINE python -c "import torch"'
    print(f"{baseline:<40}{import_s:>10.2f}{1.0:>8.2f}")
    print(f"{'no-op dvc repro':<40}{noop_s:>10.2f}{noop_s / import_s:>8.2f}")
    print(f"after editing generations.g2.student.epochs, dvc repro reran {stages}:")
    for name, seconds in stamps.items():
        shown = "-" if seconds is None else f"{seconds:.2f} s"
        print(f"  {name:<16}{shown:>10}")
    if startup is not None:
        print(
            f"{STUDENT} startup (stage start -> first step) {startup:.2f} s = {startup / import_s:.2f} x import torch"
        )
    result = {
        "smoke": args.smoke,
        "repeats": args.repeats,
        "initial_repro_seconds": round(initial, 3),
        "import_torch_seconds": round(import_s, 3),
        "noop_repro_seconds": round(noop_s, 3),
        "ratio_noop_vs_import": round(noop_s / import_s, 2),
        "rerun_stages": stages,
        "rerun_seconds": {k: (None if v is None else round(v, 3)) for k, v in stamps.items()},
        "student_startup_seconds": None if startup is None else round(startup, 3),
        "ratio_startup_vs_import": None if startup is None else round(startup / import_s, 2),
    }
    if args.json is not None:
        write_record(
            args.json,
            "bench_pipeline",
            args.argv,
            load_before,
            settings={
                "smoke": args.smoke,
                "repeats": args.repeats,
                "params": "bowflow.scaffold.tiny_params, seeds [0]",
                "edit": "generations.g2.student.epochs += 1",
                "student": STUDENT,
            },
            measurements={
                "initial_repro_seconds": initial,
                "initial_repro_stages": initial_stages,
                "import_torch_seconds": imports,
                "noop_repro_seconds": noops,
                "rerun_stages": stages,
                "rerun_seconds": stamps,
            },
        )
    print("RESULT " + json.dumps(result))
    return result


def table(records: list[dict]) -> list[list[str]]:
    """docs/BENCHMARKS.md section 6 from one record: the first repro, the medians of the
    bare `import torch` and the no-op repro (their ratio), the stamps after the params edit."""
    (record,) = records
    m = record["measurements"]
    imp, noop = statistics.median(m["import_torch_seconds"]), statistics.median(m["noop_repro_seconds"])
    stamps = m["rerun_seconds"]
    rows = [
        ["measurement", "seconds"],
        [f"first `dvc repro` (all {m['initial_repro_stages']} stages)", f"{m['initial_repro_seconds']:.1f}"],
        ['bare `python -c "import torch"` (baseline: the cost of one stage process)', f"{imp:.2f}"],
        ["no-op `dvc repro`", f"{noop:.2f} ({noop / imp:.2f}x the baseline)"],
    ]
    if stamps.get("student_start") is not None:
        rows += [
            [
                f"params change (`generations.g2.student.epochs`) -> `{record['settings']['student']}` starts",
                f"{stamps['student_start']:.2f}",
            ],
            ["-> the stage's first training step", f"{stamps['first_step']:.2f}"],
            ["-> the stage's first epoch done", f"{stamps['first_epoch']:.2f}"],
            ["-> `dvc repro` done (evaluate and report rerun too)", f"{stamps['done']:.2f}"],
        ]
    else:
        rows.append(["params change -> `dvc repro` done", f"{stamps['done']:.2f}"])
    return rows


if __name__ == "__main__":
    main()
