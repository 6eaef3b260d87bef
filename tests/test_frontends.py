"""dvc.yaml and the Snakemake workflow describe the same stages: same commands, same
inputs, same outputs. DVC's side comes from DVC's own resolver, Snakemake's from a real
dry run of the workflow over the shipped params.yaml."""
import os
import re
import subprocess
import sys
from pathlib import Path

from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo

ROOT = Path(__file__).resolve().parent.parent


def dvc_stages() -> dict[frozenset, dict]:
    stages = {}
    with Repo(str(ROOT)) as repo:
        for stage in repo.index.stages:
            if not stage.cmd:
                continue
            outs = frozenset(str(Path(o.fs_path).relative_to(ROOT)) for o in stage.outs)
            deps = [str(Path(d.fs_path).relative_to(ROOT)) for d in stage.deps
                    if not isinstance(d, ParamsDependency)]
            stages[outs] = {"name": stage.addressing, "cmd": " ".join(stage.cmd.split()), "deps": deps}
    return stages


def snakemake_jobs() -> dict[frozenset, dict]:
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "snakemake"), "--dry-run", "--forceall", "--printshellcmds",
                             "--cores", "1", "--nolock"],
                            cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr + result.stdout
    jobs = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\nrule )", result.stdout + result.stderr):
        rule = re.search(r"^rule (\w+):", block, re.M)
        if not rule or rule.group(1) == "all":
            continue
        field = lambda name: re.search(rf"^\s+{name}: (.*)$", block, re.M)  # noqa: E731
        command = re.search(r"^Shell command: (.*)$", block, re.M)
        outputs = frozenset(field("output").group(1).split(", "))
        inputs = field("input").group(1).split(", ") if field("input") else []
        jobs[outputs] = {"rule": rule.group(1), "cmd": " ".join(command.group(1).split()), "inputs": inputs}
    return jobs


def test_same_stages_commands_inputs_outputs():
    dvc, snakemake = dvc_stages(), snakemake_jobs()
    assert set(dvc) == set(snakemake), "the two front-ends produce different sets of outputs"
    for outputs, stage in dvc.items():
        job = snakemake[outputs]
        assert job["cmd"] == stage["cmd"], f"{stage['name']} vs rule {job['rule']}"
        inputs = set(job["inputs"])
        for dep in stage["deps"]:
            # A DVC directory dependency stands for the stage outputs inside it.
            covered = {i for i in inputs if i == dep or i.startswith(dep.rstrip("/") + "/")}
            assert covered, f"{stage['name']}: DVC dependency {dep} missing from Snakemake inputs"
        for path in inputs:
            assert any(path == d or path.startswith(d.rstrip("/") + "/") for d in stage["deps"]), \
                f"rule {job['rule']}: input {path} is not a DVC dependency of {stage['name']}"


def test_generation_chain_follows_parents():
    dvc = {s["name"]: s for s in dvc_stages().values()}
    assert "data/models/g0/model.pt" in dvc["vocab@g1"]["deps"]
    assert "data/models/g1/model.pt" in dvc["vocab@g2"]["deps"]
    assert "--parent-model data/models/g1/model.pt" in dvc["student@g2"]["cmd"]
