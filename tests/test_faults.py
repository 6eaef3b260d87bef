"""Fault injection on the real pipeline (benchmarks/bench_faults.py's core, 2 trials):
`dvc repro` SIGKILLed during a training stage and during the report, then run again, must end
exactly as an uninterrupted run, with `dvc status` clean and nothing half-written left.

The pipeline here has one generation (g1) to keep the three runs short; where in a stage the
kill lands depends on the machine's speed, so the test asserts that each trial killed the run
and passed every check, never a time."""
import pytest

from benchmarks import bench_faults

pytestmark = pytest.mark.slow


def test_killed_dvc_repro_reruns_to_the_uninterrupted_result(tmp_path):
    params = bench_faults.core_params()
    del params["generations"]["g2"]
    lines = []
    trials = bench_faults.run_faults(2, seed=0, scratch=tmp_path, params=params,
                                     stages=["student@g1", "report"], say=lines.append)
    report = "\n".join(lines)
    assert len(trials) == 2, report
    for trial in trials:
        assert trial.killed_at is not None, report      # the run really was killed ...
        assert trial.passed, report                     # ... and its rerun passed every check
    assert lines[-1] == "2 passed, 0 failed"
