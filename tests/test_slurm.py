"""The Snakemake SLURM profile (workflow/profiles/slurm) against a real SLURM: a one-node
cluster on this machine (workflow/profiles/slurm/local_cluster.sh installs and starts it,
as root, with apt-get), no mocks. Every stage of a tiny project is submitted with sbatch,
its state read with squeue (no accounting here), and the metrics equal those of `dvc
repro` of the same project.

Skipped, with the reason, where a cluster cannot be brought up: not Linux, not root, no
apt-get, or no network to download the packages. Anywhere else (CI: root on Debian with
its mirror reachable) it runs. Measured on a 2-core machine: 1.5 minutes in all when idle,
installing SLURM included (the SLURM run itself about 65 s; `dvc repro` runs beside it),
2.5 to 3.5 minutes while other jobs loaded its cores. With -s the fixture prints its times.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_pipeline import ENV, TIMING_KEYS

from bowflow.scaffold import ROOT, core_params, make_project, write_params
from bowflow.sections import RESOURCE_KINDS, load_yaml

sys.path.insert(0, str(ROOT / "workflow"))
from dvcstages import Pipeline  # noqa: E402

pytestmark = pytest.mark.slow

PROFILE = "workflow/profiles/slurm"  # as a user types it, from the project root
BRINGUP = ROOT / PROFILE / "local_cluster.sh"
# Fields that measure the run rather than its result (time, speed, memory), at any depth:
# a training record's `final` and history rows carry seconds and images_per_second.
UNTIMED = TIMING_KEYS | {"images_per_second", "seconds", "train_min"}  # train_min: summary.json's
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/")


@pytest.fixture(scope="module")
def cluster() -> str:
    """Bring the local one-node cluster up (or find it up); -> the SLURM node's name."""
    if not sys.platform.startswith("linux"):
        pytest.skip("a local SLURM cluster needs Linux")
    if os.geteuid() != 0:
        pytest.skip("bringing up a local SLURM cluster needs root (apt-get, /etc/slurm, daemons)")
    if not shutil.which("apt-get"):
        pytest.skip("bringing up a local SLURM cluster needs apt-get (Debian/Ubuntu)")
    result = subprocess.run(["bash", str(BRINGUP)], capture_output=True, text=True, timeout=900)
    if result.returncode == 3:  # the script's code for "cannot download the packages"
        pytest.skip(f"cannot install SLURM: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, f"{BRINGUP.name} failed:\n{result.stdout}\n{result.stderr}"
    node = subprocess.run(
        ["sinfo", "--noheader", "--Node", "--format=%N"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(node) == 1, node
    return node[0]


def tiny_project(where: Path, threads: int) -> Path:
    """The smallest pipeline with a training stage, an evaluation and the report (the
    RotNet teacher g0 alone, one seed: check_params, prepare, pretrain_seed0@g0,
    evaluate_pretrain_seed0@g0, report), every stage asking for `threads` threads."""
    params = core_params()
    assert params["seeds"] == [0]
    params["generations"] = {}
    # mem_mb: every stage here peaks under 1 GB; small enough for any CI machine's node.
    params["resources"] = {
        kind: {"processes": 1, "gpus": 0, "threads": threads, "mem_mb": 2000, "runtime": 30} for kind in RESOURCE_KINDS
    }
    return make_project(where, params)


def untimed(record):
    """A metrics record without the fields that measure the run (UNTIMED), at any depth."""
    if isinstance(record, dict):
        return {key: untimed(value) for key, value in record.items() if key not in UNTIMED}
    if isinstance(record, list):
        return [untimed(value) for value in record]
    return record


def all_metrics(project: Path) -> dict:
    """Every metrics JSON under data/metrics, by path, untimed."""
    return {
        path.relative_to(project).as_posix(): untimed(json.loads(path.read_text()))
        for path in sorted((project / "data/metrics").rglob("*.json"))
    }


def slurmctld_log() -> str:
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    path = re.search(r"^SlurmctldLogFile\s*=\s*(\S+)", config, re.M).group(1)
    return Path(path).read_text(errors="replace")


def snakemake(project: Path, *args: str, timeout: float = 1200) -> str:
    """Run Snakemake with the SLURM profile in `project` (as a user types it, from the
    project root); -> its output. It polls every second or so (the profile's 40 s suits a
    shared cluster, not a test) and keeps the SLURM logs of successful jobs too."""
    process = subprocess.Popen(
        [
            ".venv/bin/snakemake",
            "--profile",
            PROFILE,
            "--slurm-init-seconds-before-status-checks",
            "1",
            "--slurm-keep-successful-logs",
            *args,
        ],
        cwd=project,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        subprocess.run(["scancel", *(jobid for jobid, _ in SUBMITTED.findall(output))], check=False)
        raise AssertionError(f"snakemake {' '.join(args)} took over {timeout:.0f} s:\n{output[-5000:]}") from None
    return output if process.returncode == 0 else f"exit status {process.returncode}\n{output}"


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The same tiny project run twice: every stage a SLURM job, and `dvc repro`."""
    # The thread count `dvc repro`'s stages get (torch's default, or OMP_NUM_THREADS when
    # set): the SLURM jobs ask for as many (Snakemake exports OMP_NUM_THREADS=threads), so
    # both runs compute the same numbers.
    threads = torch.get_num_threads()
    where = tmp_path_factory.mktemp("slurm")
    dvc_project, slurm_project = tiny_project(where / "dvc", threads), tiny_project(where / "slurm", threads)

    # `dvc repro` runs beside the SLURM run: most of the SLURM run's time is Snakemake
    # waiting between squeue polls, and the numbers do not depend on what else runs.
    start = time.monotonic()
    with open(where / "dvc.log", "w") as dvc_log:
        dvc = subprocess.Popen(
            [".venv/bin/dvc", "repro"], cwd=dvc_project, env=ENV, stdout=dvc_log, stderr=subprocess.STDOUT
        )
        output = snakemake(slurm_project, "--verbose")  # verbose: the sbatch calls
        slurm_seconds = time.monotonic() - start
        assert dvc.wait(timeout=1200) == 0, (where / "dvc.log").read_text()[-5000:]
    print(
        f"\nSLURM run {slurm_seconds:.0f} s, with dvc repro beside it {time.monotonic() - start:.0f} s "
        f"(threads {threads})"
    )
    logs = "\n".join(
        f"--- {path}\n{path.read_text()[-2000:]}"
        for path in sorted((slurm_project / ".snakemake/slurm_logs").rglob("*.log"))
    )
    assert not output.startswith("exit status"), f"{output[-5000:]}\n{logs}"
    return {
        "node": cluster,
        "threads": threads,
        "slurm": slurm_project,
        "dvc": dvc_project,
        "output": output,
        "logs": logs,
    }


def test_every_stage_is_a_slurm_job(runs):
    """Every rule was submitted with sbatch asking for its resources (threads, mem_mb and
    runtime of tiny_project), and slurmctld itself started each job on the node and saw it
    exit 0."""
    rules = {job.rule for job in Pipeline(runs["slurm"]).jobs}
    assert rules == {"check_params", "prepare", "pretrain_seed0__g0", "evaluate_pretrain_seed0__g0", "report"}
    jobs = {rule: jobid for jobid, rule in SUBMITTED.findall(runs["output"])}
    assert set(jobs) == rules, f"submitted {sorted(jobs)}, the workflow has {sorted(rules)}"
    calls = {
        re.search(r"--comment rule_(\w+)", call).group(1): f"{call} "
        for call in re.findall(r"^sbatch call: (.*)$", runs["output"], re.M)
    }
    assert set(calls) == rules
    for rule, call in calls.items():
        for request in (f"--cpus-per-task={runs['threads']} ", "--mem 2000 ", "-t 30 "):
            assert request in call, f"{rule}: {request.strip()} not asked for: {call}"
        assert "--gpus" not in call, call
    controller = slurmctld_log()
    node = re.escape(runs["node"])
    for rule, jobid in jobs.items():
        # the main scheduler logs "Allocate JobId=N NodeList=node", the backfill one "Started"
        started = (
            rf"(sched: Allocate JobId={jobid} NodeList={node} |"
            rf"_start_job: Started JobId={jobid} in \S+ on {node}$)"
        )
        assert re.search(started, controller, re.M), f"{rule}: SLURM job {jobid} never started on {node}"
        assert f"_job_complete: JobId={jobid} WEXITSTATUS 0" in controller, f"{rule}: job {jobid}"
    # ...and their states came from squeue: this cluster has no accounting, sacct fails.
    sacct = subprocess.run(["sacct", "--noheader"], capture_output=True, text=True)
    assert sacct.returncode != 0 and "accounting storage is disabled" in sacct.stdout + sacct.stderr


def test_slurm_run_computes_what_dvc_repro_computes(runs):
    """Same params, seed and threads: every metrics file equal to dvc repro's, timings aside."""
    slurm, dvc = all_metrics(runs["slurm"]), all_metrics(runs["dvc"])
    assert {"data/metrics/seed0/train/g0.json", "data/metrics/seed0/eval/g0.json"} <= set(dvc)
    assert slurm == dvc, runs["logs"]
    assert (runs["slurm"] / "data/report/report.md").stat().st_size > 0


def test_a_gpu_stage_asks_slurm_for_its_gpus(runs):
    """resources.pretrain.gpus reaches sbatch as --gpus. This cluster has no GPU, so SLURM
    refuses the job at submission: only the request is checked (in seconds)."""
    project = runs["slurm"].parent / "gpu"  # a copy: the runs stay as they were
    shutil.copytree(runs["slurm"], project, symlinks=True)
    params = load_yaml(project / "params.yaml")
    params["device"] = "auto"  # device: cpu with gpus > 0 is a params error
    params["resources"]["pretrain"].update(gpus=1, processes=1)
    write_params(project, params)
    output = snakemake(
        project, "--verbose", "--forcerun", "pretrain_seed0__g0", "--until", "pretrain_seed0__g0", timeout=300
    )
    calls = re.findall(r"^sbatch call: (.*)$", output, re.M)
    assert len(calls) == 1 and "rule_pretrain_seed0__g0" in calls[0], output[-5000:]
    assert " --gpus=1 " in calls[0] and " --cpus-per-task=" in calls[0], calls[0]
