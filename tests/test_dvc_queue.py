"""DVC's experiment queue on the real pipeline: two experiments that differ in one params
value, queued with `dvc exp run --queue -S ...`, run by `dvc queue start`'s background
workers, read back with `dvc exp show --json` and one of them brought into the workspace
with `dvc exp apply`, as the README's "Many runs on one machine" section types them.

What the queue needs from the project, and what this test checks of it:
- A queued experiment runs in a temporary clone of the git repository
  (`.dvc/tmp/exps/tmp*`) made from the commit, the tracked changes and the `-S` change:
  only what git tracks is there, not the ignored `.venv`. `bin/python` then falls back to `python3`
  on PATH, and `dvc queue start` spawns its workers as a bare `dvc` looked up on PATH:
  both find the project's environment only when `.venv/bin` is on PATH. The test types
  `dvc queue start` with it prepended, from a shell that otherwise lacks it (as the
  README does); without it the workers never start and the tasks stay queued.
- An experiment commit holds dvc.lock, params.yaml and the stages' `cache: false`
  outputs (metrics, plots) only where git does not ignore them: the repository's own
  .gitignore is used here, so a rule that hides data/metrics/ shows up as experiments
  without metrics.
- The temporary clones share the project's DVC cache: the two runs' common stages
  (`prepare`) record the same output, and each run's model is in the one cache.

Cost: one tiny RotNet run (digits at 8 px, 300 images, 2 epochs) and its evaluation per
experiment (`dvc exp run` with the target `evaluate_pretrain@g0`: check_params, prepare,
pretrain@g0, evaluate_pretrain@g0; no report). Measured on the 2-core AVX2 machine while
other jobs held its load average at 2-7: 94-144 s for the whole test (a plain `dvc repro` of
the same target took 25 s there idle and 91 s at load 7).
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bowflow.scaffold import ROOT, core_params, make_project

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# A user's fresh shell: the project's environment is not on PATH (the README's commands
# start with `.venv/bin/`), no activated venv, an empty per-machine compute cache.
USER_PATH = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                            if p and Path(p).resolve() != BIN.resolve())
ENV = {**{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "BOWFLOW_PYTHON")},
       "PATH": USER_PATH, "BOWFLOW_CACHE": tempfile.mkdtemp(prefix="bowflow-test-cache-")}

TARGET = "evaluate_pretrain@g0"          # check_params, prepare, pretrain@g0 and its evaluation
KEY = "pretrain.g0.lr"
RUNS = {"q-lr-low": 0.02, "q-lr-high": 0.2}  # experiment name -> learning rate (tiny default 0.1)
# The README's command, as typed: one worker per core, so both experiments run at once;
# the workers pass their environment on to every stage, and BOWFLOW_COMPUTE holds each
# training stage to one thread (the automatic choice on the 2-core AVX2 machine), so the two
# never ask for more than the 2 cores (conftest's BOWFLOW_COMPUTE=default would give each
# torch's default of 2). Measured back to back at load ~7: 176 s for the queue with
# --jobs 2, 210 s with --jobs 1 (2 threads each); two workers also overlap DVC's own
# single-threaded work between stages. `.venv/bin` on PATH: see the module's docstring.
JOBS = 2
START = f'PATH="$PWD/.venv/bin:$PATH" BOWFLOW_COMPUTE=fp32-channels-last-t1 .venv/bin/dvc queue start --jobs {JOBS}'
QUEUE_TIMEOUT_S = 420
POLL_S = 2
STATUS_EVERY_S = 20


def queue_params() -> dict:
    """The tiny configuration with its RotNet run alone: no generations, no teachers, no
    distillation (their stages would not run with the target anyway; fewer stages to
    resolve at every DVC command)."""
    params = core_params()
    params["generations"] = {}
    return params


def sh(project: Path, command: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `command` as typed in a user's shell at the project's root."""
    result = subprocess.run(["bash", "-c", command], cwd=project, capture_output=True, text=True, env=ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def queue_status(project: Path) -> tuple[dict[str, str], int]:
    """`dvc queue status` -> ({experiment name: Queued | Running | Success | Failed}, the
    number of workers it sees, active or idle)."""
    out = sh(project, ".venv/bin/dvc queue status").stdout
    tasks = {m.group(1): m.group(2) for m in
             re.finditer(r"^\S+\s+(\S+)\s+.*?\s(Queued|Running|Success|Failed)\s*$", out, re.M)}
    workers = re.search(r"Worker status: (\d+) active, (\d+) idle", out)
    return tasks, int(workers.group(1)) + int(workers.group(2)) if workers else 0


def diagnostics(project: Path) -> str:
    """Every experiment's `dvc queue logs` and the workers' own logs, for a failure message."""
    parts = [sh(project, ".venv/bin/dvc queue status", check=False).stdout]
    for name in RUNS:
        logs = sh(project, f".venv/bin/dvc queue logs {name}", check=False)
        parts.append(f"--- dvc queue logs {name}\n{logs.stdout[-4000:]}{logs.stderr[-2000:]}")
    for out in sorted((project / ".dvc/tmp/exps/celery").glob("*.out")):
        parts.append(f"--- {out.name}\n{out.read_text(errors='replace')[-2000:]}")
    return "\n".join(parts)


def committed_experiments(project: Path) -> set[str]:
    """Names of the experiments whose commits exist (git refs under refs/exps/): a cheap
    check, where each `dvc queue status` costs a second of CPU."""
    out = sh(project, "git for-each-ref --format='%(refname:lstrip=-1)' refs/exps/").stdout
    return set(out.split()) & set(RUNS)


def wait_for_queue(project: Path, started: float) -> dict[str, str]:
    """Wait until no task of RUNS is queued or running; -> their final statuses. Asks
    `dvc queue status` every STATUS_EVERY_S (a failed task shows there), and every POLL_S
    once both experiments have their commits (the status follows within seconds)."""
    asked = -math.inf
    while True:
        now = time.monotonic()
        if committed_experiments(project) == set(RUNS) or now - asked >= STATUS_EVERY_S:
            status, workers = queue_status(project)
            asked = now
            mine = {name: status.get(name) for name in RUNS}
            if not {"Queued", "Running", None} & set(mine.values()):
                return mine
            if workers == 0 and now - started > 60 and set(mine.values()) == {"Queued"}:
                pytest.fail("no queue worker is running and nothing started: `dvc queue start` spawns "
                            "its workers as `dvc` found on PATH\n" + diagnostics(project))
        if now - started > QUEUE_TIMEOUT_S:
            pytest.fail(f"the queue did not finish in {QUEUE_TIMEOUT_S} s: {status}\n{diagnostics(project)}")
        time.sleep(POLL_S)


def experiments(show: list) -> dict[str, dict]:
    """`dvc exp show --json` -> {experiment name: its record (rev, params, metrics)}."""
    found = {}
    for baseline in show:
        for group in baseline.get("experiments") or []:
            for rev in group.get("revs") or []:
                if rev.get("name"):
                    found[rev["name"]] = rev
    return found


def metrics_of(record: dict) -> dict:
    """The numbers of one experiment that the lr changes: the final training loss and
    rotation accuracy, and every evaluation accuracy."""
    metrics = record["data"]["metrics"]
    missing = {path: entry["error"] for path, entry in metrics.items()
               if path.endswith("/g0.json") and "error" in entry}
    assert not missing, (f"{record['name']}: metrics not in the experiment commit {missing}; is "
                         "data/metrics/ ignored by .gitignore? DVC commits only what git tracks")
    train = metrics["data/metrics/train/g0.json"]["data"]
    evaluation = metrics["data/metrics/eval/g0.json"]["data"]
    return {"loss": train["final"]["loss"], "rotation_accuracy": train["final"]["rotation_accuracy"],
            "linear_base": evaluation["linear_base"], "knn_all": evaluation["knn_all"],
            **{f"few_shot_{n}": shot["mean"] for n, shot in evaluation["few_shot"].items()}}


def locked_out(project: Path, rev: str, stage: str) -> str:
    """The md5 that the experiment commit's dvc.lock records for `stage`'s first output."""
    from ruamel.yaml import YAML

    lock = YAML(typ="safe").load(sh(project, f"git show {rev}:dvc.lock").stdout)
    return lock["stages"][stage]["outs"][0]["md5"]


def test_queued_experiments_run_and_differ_where_their_params_do(tmp_path):
    started = time.monotonic()
    project = make_project(tmp_path / "project", queue_params())
    # A fresh clone's ignore rules (the repository's .gitignore), plus the scaffold's
    # `.venv` symlink, which `.venv/` (a folder pattern) does not match.
    (project / ".gitignore").write_text((ROOT / ".gitignore").read_text() + "/.venv\n")
    for command in ("git config user.name bowflow-test", "git config user.email test@bowflow.invalid",
                    "git add .gitignore", "git commit -qm 'the repository .gitignore'"):
        sh(project, command)
    # The experiment commits must be able to hold the metrics (see the module's docstring).
    ignored = sh(project, "git check-ignore -q data/metrics/eval/g0.json", check=False)
    assert ignored.returncode == 1, ".gitignore hides data/metrics/: queued experiments would have no metrics"

    for name, lr in RUNS.items():
        queued = sh(project, f".venv/bin/dvc exp run --queue -n {name} -S '{KEY}={lr}' {TARGET}")
        assert f"Queued experiment '{name}'" in queued.stdout + queued.stderr, queued.stdout + queued.stderr
    assert set(queue_status(project)[0]) >= set(RUNS)

    queue_started = time.monotonic()
    try:
        sh(project, START)
        status = wait_for_queue(project, queue_started)
    except BaseException:   # no worker outlives a failed test (idle ones stop by themselves)
        sh(project, ".venv/bin/dvc queue stop --kill", check=False)
        raise
    queue_seconds = time.monotonic() - queue_started
    assert set(status.values()) == {"Success"}, f"{status}\n{diagnostics(project)}"

    show = json.loads(sh(project, ".venv/bin/dvc exp show --json").stdout)
    found = experiments(show)
    assert set(RUNS) <= set(found), f"experiments {sorted(found)} lack {sorted(set(RUNS) - set(found))}"
    metrics = {}
    for name, lr in RUNS.items():
        params = found[name]["data"]["params"]["params.yaml"]["data"]
        assert params["pretrain"]["g0"]["lr"] == lr and params["seed"] == 0
        metrics[name] = metrics_of(found[name])
        assert all(math.isfinite(v) for v in metrics[name].values()), metrics[name]
        assert 0 <= metrics[name]["knn_all"] <= 100 and metrics[name]["loss"] > 0
    low, high = (metrics[name] for name in RUNS)
    assert low["loss"] != high["loss"], "a different learning rate trained to the same loss"
    assert low != high and any(low[k] != high[k] for k in ("linear_base", "knn_all", "few_shot_1")), \
        "the evaluations of two different models agree in every number"

    # One cache for both: what does not depend on the lr is the same output, the models
    # differ, and each is in the project's cache (where `dvc exp apply` checks it out from).
    revs = {name: found[name]["rev"] for name in RUNS}
    assert len({locked_out(project, rev, "prepare") for rev in revs.values()}) == 1
    models = {locked_out(project, rev, "pretrain@g0") for rev in revs.values()}
    assert len(models) == 2
    for md5 in models:
        assert (project / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).is_file()
    # The training curves (cache: false plots) travel with each experiment too.
    for rev in revs.values():
        assert "epoch" in sh(project, f"git show {rev}:data/plots/train/g0.csv").stdout

    # The queue leaves the workspace alone: the committed params, nothing run there. Then
    # `dvc exp apply` brings one experiment in: its params, metrics and (from the cache) model.
    assert sh(project, "git status --porcelain params.yaml").stdout == ""
    assert not (project / "data/models").exists()
    applied = sh(project, ".venv/bin/dvc exp apply q-lr-high", check=False)
    # The targeted experiments never ran the report, which DVC then reports as missing (and
    # exits 255); every output they did produce must be checked out.
    failed = re.search(r"Checkout failed for following targets:\n(.*?)\nIs your cache", applied.stderr, re.S)
    assert applied.returncode == 0 or (failed and failed.group(1).split() == ["data/report"]), applied.stderr
    workspace = json.loads((project / "data/metrics/eval/g0.json").read_text())
    assert workspace["knn_all"] == high["knn_all"] and workspace["linear_base"] == high["linear_base"]
    assert f"lr: {RUNS['q-lr-high']}" in (project / "params.yaml").read_text()
    assert (project / "data/models/g0/model.pt").is_file()
    assert "up to date" in sh(project, f".venv/bin/dvc status {TARGET}").stdout
    print(f"\nqueue of {len(RUNS)} with --jobs {JOBS}: {queue_seconds:.0f} s; "
          f"whole test {time.monotonic() - started:.0f} s; metrics {metrics}")
