"""dvc.yaml and the Snakemake workflow describe the same stages: same commands, same
inputs, same outputs. DVC's side comes from DVC's own resolver, Snakemake's from a real
dry run of the workflow, over the shipped params.yaml and over the tiny params (every
method, teachers and distillation runs). Directory outputs are declared in dvc.yaml
(`type: directory`); a wrong or missing declaration is an error (workflow/dvcstages.py)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo

from bowflow.scaffold import ROOT, make_project, tiny_params
from bowflow.sections import load_yaml

sys.path.insert(0, str(ROOT / "workflow"))
from dvcstages import DeclarationError, Pipeline  # noqa: E402

BIN = Path(sys.executable).parent
PREPARED = "    - data/prepared:"  # how dvc.yaml (workflow/pipeline.py) declares prepare's output folder


def relative(path: str, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def dvc_stages(root: Path = ROOT) -> dict[frozenset, dict]:
    stages = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            if not stage.cmd:
                continue
            outs = frozenset(relative(o.fs_path, root) for o in stage.outs)
            deps = [relative(d.fs_path, root) for d in stage.deps if not isinstance(d, ParamsDependency)]
            stages[outs] = {"name": stage.name, "cmd": " ".join(stage.cmd.split()), "deps": deps}
    return stages


def snakemake(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )


def snakemake_jobs(result: subprocess.CompletedProcess) -> dict[frozenset, dict]:
    assert result.returncode == 0, result.stderr + result.stdout
    jobs = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\nrule )", result.stdout + result.stderr):
        rule = re.search(r"^rule (\w+):", block, re.M)
        if not rule or rule.group(1) == "all":
            continue
        field = lambda name, block=block: re.search(rf"^\s+{name}: (.*)$", block, re.M)  # noqa: E731
        command = re.search(r"^Shell command: (.*)$", block, re.M)
        outputs = frozenset(field("output").group(1).split(", "))
        inputs = field("input").group(1).split(", ") if field("input") else []
        jobs[outputs] = {"rule": rule.group(1), "cmd": " ".join(command.group(1).split()), "inputs": inputs}
    return jobs


TRANSFER = {"sources": {"scenes": {"source": "shapes", "image_size": 12, "n_train": 80, "n_test": 60}}}


@pytest.fixture(scope="module", params=["repo", "tiny", "optional"])
def dry_run(request, tmp_path_factory):
    """(project, its Snakemake dry run): this repository, a scratch tiny project, and one with
    every optional section that adds stages (`finetune:`, `transfer:`, `detection:`: their
    stages must appear in both front-ends; one project for the three, one dry run)."""
    params = {
        "tiny": tiny_params,
        "optional": lambda: dict(tiny_params(every_method=False), finetune={}, transfer=TRANSFER, detection={}),
    }
    root = (
        ROOT
        if request.param == "repo"
        else make_project(tmp_path_factory.mktemp(request.param) / "p", params[request.param]())
    )
    return root, snakemake(root, "--dry-run", "--forceall", "--printshellcmds", "--cores", "1", "--nolock")


def test_same_stages_commands_inputs_outputs(dry_run):
    root, result = dry_run
    dvc, snakemake = dvc_stages(root), snakemake_jobs(result)
    assert set(dvc) == set(snakemake), "the two front-ends produce different sets of outputs"
    for outputs, stage in dvc.items():
        job = snakemake[outputs]
        assert job["rule"] == stage["name"].replace("@", "__")
        assert job["cmd"] == stage["cmd"], f"{stage['name']} vs rule {job['rule']}"
        inputs = set(job["inputs"])
        for dep in stage["deps"]:
            # A DVC directory dependency stands for the stage outputs inside it.
            covered = {i for i in inputs if i == dep or i.startswith(dep.rstrip("/") + "/")}
            assert covered, f"{stage['name']}: DVC dependency {dep} missing from Snakemake inputs"
        for path in inputs:
            assert any(path == d or path.startswith(d.rstrip("/") + "/") for d in stage["deps"]), (
                f"rule {job['rule']}: input {path} is not a DVC dependency of {stage['name']}"
            )


def test_the_optional_evaluation_stages_are_in_the_dry_run(dry_run):
    """With `finetune:`, `transfer:` and `detection:`, Snakemake runs each source's prepare job
    once and a finetune, transfer and detect job per run of every kind."""
    root, result = dry_run
    if "detection" not in load_yaml(root / "params.yaml"):
        pytest.skip("no optional evaluation section")
    rules = [job["rule"] for job in snakemake_jobs(result).values()]
    assert rules.count("prepare_detection") == 1 and rules.count("prepare_transfer__scenes") == 1
    for prefix in ("finetune", "transfer", "detect"):
        for kind in ("pretrain", "student", "teacher", "distill"):
            assert any(rule.startswith(f"{prefix}_{kind}_seed0__") for rule in rules), (prefix, kind, rules)


def test_dry_run_takes_no_dvc_lock_and_writes_nothing_tracked(dry_run):
    root, _ = dry_run
    if root == ROOT:
        pytest.skip("the repository's own working tree may hold edits and DVC state")
    assert not (root / ".dvc/tmp/lock").exists() and not (root / ".dvc/tmp/rwlock").exists()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    assert status.stdout == "", status.stdout


def test_directory_outputs_are_declared_and_agree_with_dvc_lock():
    declared = {o.path: o.directory for job in Pipeline(ROOT).jobs for o in job.outputs}
    assert {path for path, isdir in declared.items() if isdir} == {"data/prepared", "data/report"}
    with Repo(str(ROOT)) as repo:  # what DVC recorded of the last run: a folder's md5 ends in .dir
        locked = {
            relative(o.fs_path, ROOT): o.hash_info.isdir
            for s in repo.index.stages
            for o in s.outs
            if o.hash_info and o.hash_info.value
        }
    assert locked and all(declared[path] == isdir for path, isdir in locked.items())


def test_generation_chain_follows_parents():
    """Within each seed: a generation reads its parent of the same seed, never another's."""
    dvc = {s["name"]: s for s in dvc_stages().values()}
    seeds = load_yaml(ROOT / "params.yaml")["seeds"]
    assert len(seeds) > 1
    for seed in seeds:
        assert f"data/models/seed{seed}/g0/model.pt" in dvc[f"vocab_seed{seed}@g1"]["deps"]
        assert f"data/models/seed{seed}/g1/model.pt" in dvc[f"vocab_seed{seed}@g2"]["deps"]
        assert f"--parent-model data/models/seed{seed}/g1/model.pt" in dvc[f"student_seed{seed}@g2"]["cmd"]
        assert f"--seed {seed} " in dvc[f"student_seed{seed}@g2"]["cmd"]
        models = {d for d in dvc[f"student_seed{seed}@g2"]["deps"] if d.startswith("data/models/")}
        assert models == {f"data/models/seed{seed}/g1/model.pt", f"data/models/seed{seed}/g2/vocab.pt"}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("decl") / "p", tiny_params())


@pytest.fixture
def project(scratch):
    """The scratch tiny project, restored after each test that edits it."""
    pristine = (scratch / "dvc.yaml").read_text()
    yield scratch
    (scratch / "dvc.yaml").write_text(pristine)
    (scratch / "dvc.lock").unlink(missing_ok=True)
    subprocess.run(["rm", "-rf", str(scratch / "data")], check=True)


def undeclare(project: Path) -> None:
    text = (project / "dvc.yaml").read_text()
    start = text.index(PREPARED)
    end = text.index("\n", text.index("type: directory", start)) + 1
    (project / "dvc.yaml").write_text(text[:start] + "    - data/prepared\n" + text[end:])


def test_undeclared_directory_output_is_an_error(project):
    undeclare(project)
    Pipeline(project)  # nothing says what data/prepared is yet
    (project / "data/prepared").mkdir(parents=True)
    with pytest.raises(
        DeclarationError,
        match=r"prepare output data/prepared is a directory according "
        r"to the path on disk, but is declared as a file",
    ):
        Pipeline(project)
    result = snakemake(project, "--dry-run", "--cores", "1")
    assert result.returncode != 0 and "data/prepared is a directory" in result.stderr + result.stdout


def test_directory_in_dvc_lock_must_be_declared(project):
    undeclare(project)
    (project / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: x\n    outs:\n    - path: data/prepared\n"
        "      hash: md5\n      md5: 0123456789abcdef0123456789abcdef.dir\n"
    )
    with pytest.raises(DeclarationError, match="directory according to dvc.lock"):
        Pipeline(project)


def test_declared_directory_that_is_a_file_is_an_error(project):
    (project / "data").mkdir()
    (project / "data/prepared").write_text("not a folder")
    with pytest.raises(DeclarationError, match="is a file according to the path on disk"):
        Pipeline(project)


def test_unknown_output_type_is_an_error(project):
    text = (project / "dvc.yaml").read_text()
    (project / "dvc.yaml").write_text(text.replace("type: directory", "type: dir", 1))
    with pytest.raises(DeclarationError, match="has type 'dir'"):
        Pipeline(project)


def test_dependency_inside_a_directory_output_is_an_error(project):
    text = (project / "dvc.yaml").read_text()
    report_deps = "    - data/prepared\n    - data/metrics"
    assert report_deps in text
    (project / "dvc.yaml").write_text(text.replace(report_deps, "    - data/prepared/images.npz\n    - data/metrics"))
    with pytest.raises(DeclarationError, match="inside the directory output data/prepared"):
        Pipeline(project)
