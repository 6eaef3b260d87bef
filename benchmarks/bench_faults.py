"""Fault injection: `dvc repro` killed with SIGKILL at random moments, then run again.

Everything runs in scratch copies of the project (`bowflow.scaffold.make_project` with the
tiny params: digits at 8 px, seconds per stage), with the project venv's bin first on PATH,
PYTHONUNBUFFERED=1 and one BOWFLOW_CACHE shared by the baseline and every trial (the
machine's compute choice is measured once, by the baseline, as on a user's machine; the
user's own cache does not leak in).

Stage names are per seed (dvc.yaml is generated for params.yaml's `seeds:`; the tiny params
have one, 0): `pretrain_seed0@g0`, `student_seed0@g1`, ...; `--stages` takes these names (or
`student@g1` for the run's stage of the params' first seed).

1. Baseline: `dvc repro` once, uninterrupted, in a fresh project. Its final state is
   recorded (every data/metrics/**/*.json and every training curve data/plots/seed<S>/train/*.csv,
   minus timing values: `wall_seconds`, `train_min` (the summary's), `peak_rss_mb`, `images_per_second`, `seconds`,
   any `*_seconds` / `*_per_second` / `peak_*` key or column, and minus the compute choice's
   provenance `compute_source` / `compute_reason` (measured here or read from the cache: the
   chosen mode itself, `compute`, is compared), and each stage's window:
   from its `Running stage '...'` line to the next one (or to the end of the run), so the
   window covers the stage process and DVC's own work after it (hashing, cache, dvc.lock).
2. Plan: trial i kills in stage `rotation[i % n]`, at a uniform fraction of that stage's
   window drawn from `random.Random(--seed)`. The rotation is every stage, longest window
   first, so 10 trials on the 11-stage tiny pipeline leave out only the shortest stage.
3. Each trial, in a fresh project: `dvc repro` in a new process group
   (start_new_session=True); when the planned stage's `Running stage` line appears, wait
   the planned fraction of its baseline window, then `os.killpg(pgid, SIGKILL)` (DVC and
   the stage process die together, as on a power cut or an OOM kill of the group). If the
   run ends before the planned moment (a faster machine, a lighter load), the trial starts
   over in a fresh project at half the delay, up to 4 times. Then
   `dvc repro` again, to completion (if the kill cut DVC's write of its own
   `.dvc/tmp/rwlock`, that file is removed first, as DVC advises, and the line says so:
   see `rerun_after_kill`), and check:
     - it exits 0;
     - the final state equals the baseline's exactly (non-timing values);
     - `dvc status --json` is clean;
     - nothing half-written is left: no `*.tmp` file, no `.report-*` folder, no file under
       data/checkpoints, no stray file next to the outputs (every file under data/ is an
       output or metric of a stage in dvc.lock, or inside a directory output).
   One line per trial: the stage the kill landed in (the last `Running stage` line before
   it), seconds after launch, whether the rerun resumed a training checkpoint, whether
   DVC's rwlock had to be removed, and the result.

    python -m benchmarks.bench_faults                       # 10 trials, seed 0
    python -m benchmarks.bench_faults --trials 3 --seed 1
    python -m benchmarks.bench_faults --trials 2 --generations g1 --stages student_seed0@g1 report
    python -m benchmarks.bench_faults --workdir W --reuse-baseline --first 6   # trials 6.. only,
                                                            # on the uninterrupted run kept in W
Exits 1 if any trial fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bowflow import scaffold
from bowflow.scaffold import make_project

ROOT = Path(__file__).resolve().parent.parent
STAGE_LINE = re.compile(r"Running stage '([^']+)'")
TIMING_KEYS = {
    "wall_seconds",
    "train_min",
    "peak_rss_mb",
    "peak_gpu_mb",
    "feature_images_per_second",
    "images_per_second",
    "seconds",
}
PROVENANCE_KEYS = {"compute_source", "compute_reason"}
KILL_ATTEMPTS = 4


def is_timing(key: str) -> bool:
    """Keys (or CSV columns) whose values are measurements of time or memory, or the compute
    choice's provenance, not results."""
    return (
        key in TIMING_KEYS
        or key in PROVENANCE_KEYS
        or key.endswith("_seconds")
        or key.endswith("per_second")
        or key.startswith("peak_")
    )


def strip_timing(value):
    """`value` with every timing key removed, recursively through dicts and lists."""
    if isinstance(value, dict):
        return {k: strip_timing(v) for k, v in value.items() if not is_timing(k)}
    if isinstance(value, list):
        return [strip_timing(v) for v in value]
    return value


def final_state(project: Path) -> dict:
    """{relative path: content without timing values} of every metrics JSON and training
    curve CSV (data/plots/seed<S>/train/<run>.csv)."""
    state = {}
    data = project / "data"
    for path in sorted((data / "metrics").rglob("*.json")):
        state[str(path.relative_to(project))] = strip_timing(json.loads(path.read_text()))
    for path in sorted(p for p in (data / "plots").rglob("*.csv") if p.parent.name == "train"):
        rows = [line.split(",") for line in path.read_text().splitlines()]
        keep = [i for i, name in enumerate(rows[0]) if not is_timing(name)]
        state[str(path.relative_to(project))] = [[row[i] for i in keep] for row in rows]
    return state


def environment(cache_dir: Path) -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "BOWFLOW_CACHE": str(cache_dir),
    }


@dataclass
class Run:
    """One `dvc repro`: exit code, merged output, and (stage, seconds since launch) starts."""

    returncode: int
    output: str
    starts: list[tuple[str, float]]
    seconds: float
    killed_at: float | None = None

    def stage_at(self, seconds: float) -> str:
        """The stage running `seconds` after launch (DVC's own start-up counts as 'dvc')."""
        current = "dvc"
        for name, start in self.starts:
            if start <= seconds:
                current = name
        return current


def repro(project: Path, env: dict, kill: tuple[str, float] | None = None) -> Run:
    """`dvc repro` in its own process group; with `kill=(stage, delay)`, SIGKILL the whole
    group `delay` seconds after `stage`'s `Running stage` line appears."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["dvc", "repro"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    starts: list[tuple[str, float]] = []
    lines: list[str] = []
    seen = threading.Event()

    def read():
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace")
            lines.append(line)
            match = STAGE_LINE.search(line)
            if match:
                starts.append((match.group(1), time.perf_counter() - start))
                if kill is not None and match.group(1) == kill[0]:
                    seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    killed_at = None
    if kill is not None:
        while not seen.wait(0.05) and proc.poll() is None:
            pass
        if seen.is_set():
            deadline = start + dict(starts)[kill[0]] + kill[1]
            while proc.poll() is None and time.perf_counter() < deadline:
                time.sleep(min(0.01, max(0.0, deadline - time.perf_counter())))
            if proc.poll() is None:
                killed_at = time.perf_counter() - start
                os.killpg(proc.pid, signal.SIGKILL)
    returncode = proc.wait()
    if killed_at is not None:  # wait until init has reaped the orphaned stage process too
        for _ in range(1000):
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
        else:
            raise RuntimeError(f"process group {proc.pid} still exists 10 s after SIGKILL")
    reader.join()
    return Run(returncode, "".join(lines), starts, time.perf_counter() - start, killed_at)


RWLOCK_CORRUPTED = "Unable to read RWLock-file"


def rerun_after_kill(project: Path, env: dict) -> tuple[Run, bool]:
    """`dvc repro` after a kill, as a user would: -> (the run, whether DVC's rwlock had to go).

    DVC (3.x) rewrites `.dvc/tmp/rwlock` in place (open "w", then json.dump) when a stage
    starts and ends; a SIGKILL inside that write leaves an empty or cut-off file, and every
    later DVC command stops with "Unable to read RWLock-file ... JSON structure is corrupted"
    (treeverse/dvc#7615). It holds only the PIDs of running DVC commands, and the killed
    group is gone, so the fix is DVC's own advice: remove the file and run again. The
    trial reports that it was needed; everything else must still pass."""
    run = repro(project, env)
    if run.returncode == 0 or RWLOCK_CORRUPTED not in run.output:
        return run, False
    (project / ".dvc" / "tmp" / "rwlock").unlink()
    return repro(project, env), True


def resolve_stages(names: list[str], known: list[str], seeds: list[int]) -> list[str]:
    """--stages as stage names of the pipeline: each as given when the pipeline has it, or
    `kind@run` (the spelling before stages were per seed) as `kind_seed<S>@run` of the
    first seed. Raises ValueError naming the stages there are."""
    out = []
    for name in names:
        kind, at, run = name.partition("@")
        seeded = f"{kind}_seed{seeds[0]}{at}{run}" if seeds else name
        if name in known:
            out.append(name)
        elif seeded in known:
            out.append(seeded)
        else:
            raise ValueError(f"--stages: no stage {name!r} in the pipeline (its stages: {', '.join(known)})")
    return out


def pipeline_stages(params: dict) -> list[str]:
    """Every stage name of the pipeline dvc.yaml defines for `params` (as workflow/pipeline.py
    writes it for their seeds, `foreach` groups expanded over their params sections)."""
    from workflow.pipeline import params_seeds, stages

    names = []
    for group, stage in stages(params_seeds(params)).items():
        if "foreach" in stage:  # "${pretrain}" -> params["pretrain"]
            names += [f"{group}@{key}" for key in params[stage["foreach"][2:-1]]]
        else:
            names.append(group)
    return names


def windows(run: Run) -> dict[str, tuple[float, float]]:
    """{stage: (start, end)} seconds since launch, each ending where the next begins."""
    bounds = [s for _, s in run.starts[1:]] + [run.seconds]
    return {name: (start, end) for (name, start), end in zip(run.starts, bounds)}


def plan(
    stage_windows: dict[str, tuple[float, float]], trials: int, seed: int, stages: list[str] | None = None
) -> list[tuple[str, float]]:
    """[(stage, seconds after its start)] for each trial: stages round-robin (longest window
    first, or the given `stages` in order), a uniform moment inside each stage's window."""
    rng = random.Random(seed)
    if stages is None:
        order = list(stage_windows)
        stages = sorted(order, key=lambda s: (-(stage_windows[s][1] - stage_windows[s][0]), order.index(s)))
    out = []
    for i in range(trials):
        stage = stages[i % len(stages)]
        begin, end = stage_windows[stage]
        out.append((stage, rng.uniform(0.0, end - begin)))
    return out


def leftovers(project: Path) -> list[str]:
    """Files under data/ that no completed stage owns: temporary files, report work folders,
    training checkpoints, stray partial outputs."""
    lock = _lock_paths(project)
    found = []
    data = project / "data"
    for path in sorted(data.rglob("*")):
        relative = path.relative_to(project).as_posix()
        if path.name.endswith(".tmp") or path.name.startswith(".report-"):
            found.append(relative)
        elif path.is_file():
            if relative.startswith("data/checkpoints/"):
                found.append(relative)
            elif not any(relative == p or relative.startswith(p + "/") for p in lock):
                found.append(relative)
    return found


def _lock_paths(project: Path) -> set[str]:
    """Every output path (file or directory) recorded in dvc.lock."""
    import yaml  # PyYAML is a DVC dependency

    lock = yaml.safe_load((project / "dvc.lock").read_text()) or {}
    return {out["path"] for stage in lock.get("stages", {}).values() for out in stage.get("outs", [])}


def status_clean(project: Path, env: dict) -> tuple[bool, str]:
    result = subprocess.run(["dvc", "status", "--json"], cwd=project, env=env, capture_output=True, text=True)
    text = result.stdout.strip()
    return result.returncode == 0 and text in ("{}", ""), (text or result.stderr)[-500:]


@dataclass
class Trial:
    index: int
    planned: tuple[str, float]
    killed_stage: str = ""
    killed_at: float | None = None
    attempts: int = 0  # projects started until a kill landed (see KILL_ATTEMPTS)
    delay: float = 0.0  # seconds after the stage's start actually used
    checkpoints_after_kill: int = 0
    resumed: bool = False
    rwlock_removed: bool = False  # the kill cut DVC's own rwlock write (see rerun_after_kill)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def baseline(scratch: Path, params: dict, reuse: bool = False) -> tuple[Run, dict]:
    """The uninterrupted run: -> (its Run, its final state). Its stage starts are saved to
    scratch/baseline.json; with `reuse`, an earlier baseline in `scratch` is read instead."""
    project, saved = scratch / "baseline", scratch / "baseline.json"
    if reuse and saved.exists():
        record = json.loads(saved.read_text())
        return Run(0, "", [tuple(s) for s in record["starts"]], record["seconds"]), final_state(project)
    env = environment(scratch / "cache")
    project = make_project(project, params)
    run = repro(project, env)
    if run.returncode != 0:
        raise RuntimeError(f"baseline dvc repro failed:\n{run.output[-3000:]}")
    saved.write_text(json.dumps({"starts": run.starts, "seconds": run.seconds}))
    return run, final_state(project)


def run_trial(
    index: int, planned: tuple[str, float], scratch: Path, params: dict, expected: dict, keep: bool = False
) -> Trial:
    """Kill one `dvc repro` as planned, rerun it, and check the result (see the module doc)."""
    trial = Trial(index, planned)
    where = scratch / f"trial{index}"
    env = environment(scratch / "cache")
    stage, delay = planned
    for attempt in range(KILL_ATTEMPTS):  # noqa: B007  (read after the loop)
        shutil.rmtree(where, ignore_errors=True)
        project = make_project(where / "project", params)
        killed = repro(project, env, kill=(stage, delay))
        if killed.killed_at is not None or killed.returncode != 0:
            break
        delay /= 2  # the run ended before the kill: start over, sooner
    trial.attempts, trial.delay = attempt + 1, delay
    if killed.killed_at is None and killed.returncode != 0:
        trial.problems.append(f"dvc repro failed before the kill (exit {killed.returncode}): {killed.output[-800:]}")
    elif killed.killed_at is None:
        trial.problems.append(f"not killed in {KILL_ATTEMPTS} attempts: dvc repro ended first")
    else:
        trial.killed_at = killed.killed_at
        trial.killed_stage = killed.stage_at(killed.killed_at)
    trial.checkpoints_after_kill = (
        sum(1 for p in (project / "data/checkpoints").glob("*") if p.is_file())
        if (project / "data/checkpoints").exists()
        else 0
    )
    rerun, trial.rwlock_removed = rerun_after_kill(project, env)
    trial.resumed = "resumed from checkpoint" in rerun.output
    if rerun.returncode != 0:
        trial.problems.append(f"rerun exit {rerun.returncode}: {rerun.output[-1500:]}")
    else:
        state = final_state(project)
        if state != expected:
            differ = sorted(k for k in set(state) | set(expected) if state.get(k) != expected.get(k))
            trial.problems.append(f"final state differs from the uninterrupted run in {differ}")
        clean, text = status_clean(project, env)
        if not clean:
            trial.problems.append(f"dvc status not clean: {text}")
        left = leftovers(project)
        if left:
            trial.problems.append(f"left behind: {left}")
    if trial.passed and not keep:
        shutil.rmtree(where, ignore_errors=True)
    return trial


def trial_line(trial: Trial) -> str:
    when = "-" if trial.killed_at is None else f"{trial.killed_at:.1f}"
    result = "PASS" if trial.passed else "FAIL: " + "; ".join(trial.problems)
    return (
        f"{trial.index:>3}  {trial.planned[0]:<{STAGE_WIDTH}}{trial.delay:>7.2f}{trial.attempts:>4}  "
        f"{trial.killed_stage:<{STAGE_WIDTH}}{when:>7}  {trial.checkpoints_after_kill:>5}  "
        f"{'yes' if trial.resumed else 'no':<7}  {'removed' if trial.rwlock_removed else '-':<7}  "
        f"{result}"
    )


STAGE_WIDTH = 26  # evaluate_student_seed0@g2 and a space
HEADER = (
    f"{'#':>3}  {'planned stage':<{STAGE_WIDTH}}{'+s':>7}{'try':>4}  {'killed in':<{STAGE_WIDTH}}{'at s':>7}  "
    f"{'ckpts':>5}  {'resumed':<7}  {'rwlock':<7}  result"
)


def run_faults(
    trials: int,
    seed: int,
    scratch: Path,
    params: dict | None = None,
    stages: list[str] | None = None,
    keep: bool = False,
    say=print,
    reuse_baseline: bool = False,
    first: int = 1,
) -> list[Trial]:
    """The whole check: baseline, plan, trials. Returns the trials (see `Trial.passed`)."""
    params = core_params() if params is None else params
    base_run, expected = baseline(scratch, params, reuse_baseline)
    stage_windows = windows(base_run)
    if stages is not None:
        stages = resolve_stages(stages, list(stage_windows), list(params.get("seeds", [0])))
    say(
        f"uninterrupted dvc repro: {base_run.seconds:.1f} s; stage windows (s after launch): "
        + ", ".join(f"{s} {a:.1f}-{b:.1f}" for s, (a, b) in stage_windows.items())
    )
    say(HEADER)
    results = []
    for i, planned in enumerate(plan(stage_windows, trials, seed, stages)):
        if i + 1 < first:
            continue
        trial = run_trial(i + 1, planned, scratch, params, expected, keep)
        say(trial_line(trial))
        results.append(trial)
    failed = sum(not t.passed for t in results)
    say(f"{len(results) - failed} passed, {failed} failed")
    return results


def core_params() -> dict:
    """The tiny configuration with only the RotNet -> BoWNet chain (11 stages at its one
    seed), so that 10 trials reach every stage; the family's pretrain runs and the teacher/distill runs are
    stages of the same kind (run_training: checkpoint, resume, atomic writes)."""
    return scaffold.core_params()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep every trial's project")
    parser.add_argument("--reuse-baseline", action="store_true", help="use the uninterrupted run already in --workdir")
    parser.add_argument("--first", type=int, default=1, help="start at this trial of the plan")
    parser.add_argument(
        "--generations",
        nargs="+",
        default=None,
        metavar="GEN",
        help="keep only these BoWNet generations of the tiny params (e.g. g1: shorter runs)",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        default=None,
        metavar="STAGE",
        help="kill in these stages, round-robin (default: every stage, longest first)",
    )
    args = parser.parse_args(argv)
    params = core_params()
    if args.generations is not None:
        unknown = sorted(set(args.generations) - set(params["generations"]))
        if unknown:
            parser.error(f"--generations: no generation {unknown} in the tiny params")
        params["generations"] = {g: v for g, v in params["generations"].items() if g in args.generations}
    if args.stages is not None:  # checked before the baseline's minutes
        try:
            resolve_stages(args.stages, pipeline_stages(params), list(params.get("seeds", [0])))
        except ValueError as error:
            parser.error(str(error))
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run_faults(
            args.trials,
            args.seed,
            args.workdir,
            params,
            args.stages,
            keep=args.keep,
            reuse_baseline=args.reuse_baseline,
            first=args.first,
        )
    else:
        with tempfile.TemporaryDirectory(prefix="bowflow-faults-") as scratch:
            results = run_faults(args.trials, args.seed, Path(scratch), params, args.stages, keep=args.keep)
    return 0 if all(t.passed for t in results) else 1


if __name__ == "__main__":
    sys.exit(main())
