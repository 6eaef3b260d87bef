"""Fault injection on the real pipeline (`python -m benchmarks.bench_faults`, 2 trials):
`dvc repro` SIGKILLed during a training stage and during the report, then run again, must end
exactly as an uninterrupted run, with `dvc status` clean and nothing half-written left.

The pipeline here has one seed (0: stage names `student_seed0@g1`) and one generation (g1)
to keep the three runs short; where in a stage the
kill lands depends on the machine's speed, so the test asserts that each trial killed the run
and passed every check, never a time."""

import subprocess

import pytest
from benchmark_cli import run_benchmark

from bowflow.scaffold import core_params, make_project

pytestmark = pytest.mark.slow


def test_killed_dvc_repro_reruns_to_the_uninterrupted_result(tmp_path):
    result = run_benchmark(
        "bench_faults",
        "--trials",
        "2",
        "--seed",
        "0",
        "--workdir",
        tmp_path,
        "--generations",
        "g1",
        "--stages",
        "student_seed0@g1",
        "report",
        check=False,
    )
    report = result.stdout + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, report
    assert lines[-1] == "2 passed, 0 failed", report
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["#"])
    trials = [line.split() for line in lines[header + 1 : -1]]  # one line per trial
    assert len(trials) == 2, report
    for row in trials:
        assert row[-1] == "PASS", report  # the rerun passed every check (after removing
        # DVC's rwlock if the kill cut its write) ...
        assert "-" not in row[4:6], report  # ... and the run really was killed (stage, at s)


def test_unknown_stage_is_refused_before_the_baseline(tmp_path):
    """--stages names a stage of the per-seed pipeline (or `kind@run`, the first seed's);
    anything else stops at once, listing the stages there are."""
    result = run_benchmark(
        "bench_faults",
        "--trials",
        "1",
        "--workdir",
        tmp_path,
        "--generations",
        "g1",
        "--stages",
        "student@g2",
        check=False,
    )
    assert result.returncode == 2 and "no stage 'student@g2'" in result.stderr, result.stderr[-2000:]
    assert "student_seed0@g1" in result.stderr and not (tmp_path / "baseline").exists()


def test_a_kill_inside_dvcs_rwlock_write_is_undone_by_removing_the_file(tmp_path):
    """The one fault a rerun alone cannot fix, and the README's advice for it: DVC rewrites
    `.dvc/tmp/rwlock` in place, so a kill inside that write leaves it cut off, and DVC then
    refuses every command (treeverse/dvc#7615). Made here by hand: an empty rwlock."""
    project = make_project(tmp_path / "project", core_params())
    rwlock = project / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    rwlock.write_text("")
    refused = subprocess.run([".venv/bin/dvc", "repro", "check_params"], cwd=project, capture_output=True, text=True)
    assert refused.returncode != 0 and "Unable to read RWLock-file" in refused.stdout + refused.stderr
    rwlock.unlink()
    subprocess.run([".venv/bin/dvc", "repro", "check_params"], cwd=project, check=True, capture_output=True, text=True)
