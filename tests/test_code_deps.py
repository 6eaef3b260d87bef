"""Every pipeline stage declares, as DVC dependencies, exactly the code it runs.

The code a stage runs is the import closure of its `-m` module (workflow/imports.py), plus
the method module its `--method` flag names (methods load lazily by name). dvc.yaml is
generated from those closures by workflow/pipeline.py; these tests check its output against
them independently, and that the committed dvc.yaml is what it writes. A file in the
closure but not declared would let an edit leave the stage's cached output stale; a
declared file outside it would rerun the stage for nothing. The edit-and-`dvc status`
proof on a real pipeline is `test_every_code_edit_reruns_what_runs_it` in test_pipeline.py.
"""

import functools
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo

from bowflow.roles.base import available_methods
from bowflow.scaffold import make_project, tiny_params
from workflow.imports import ROOT, closure

CODE_FOLDERS = ("bowflow", "stages")


def code_run_by(cmd: str) -> set[str]:
    """Project files the stage command runs."""
    module = re.search(r"-m (\S+)", cmd).group(1)
    files = closure(module)
    if module == "bowflow.config":  # validates every method a params file names
        files |= set().union(*(closure(f"bowflow.methods.{m}") for m in method_modules()))
    method = re.search(r"--method (\S+)", cmd)
    if method:
        files |= closure(f"bowflow.methods.{method.group(1)}")
    return files


def method_modules() -> list[str]:
    available_methods()
    return sorted(p.stem for p in (ROOT / "bowflow/methods").glob("*.py") if p.stem not in ("__init__", "base"))


def declared_code(stage) -> list[str]:
    deps = [
        str(Path(d.fs_path).relative_to(stage.repo.root_dir)) for d in stage.deps if not isinstance(d, ParamsDependency)
    ]
    return [d for d in deps if d.split("/")[0] in CODE_FOLDERS]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@functools.cache
def pipeline_stages():
    """Every stage of dvc.yaml expanded over the tiny params, which have an entry of every
    kind (pretrain runs of each method, generations, teachers, distillation runs), with
    every optional evaluation section (finetune, transfer) so that their stages are checked too."""
    params = tiny_params() | {
        "finetune": {"fractions": [0.5], "epochs": [1], "batch_size": 8},
        "transfer": {"sources": {"scenes": {"source": "shapes", "image_size": 12}}},
        "detection": {},
    }
    project = make_project(Path(tempfile.mkdtemp(prefix="bowflow-deps-")) / "project", params)
    with Repo(str(project)) as repo:
        return [s for s in repo.index.stages if s.cmd]


def test_committed_dvc_yaml_is_what_workflow_pipeline_writes():
    """dvc.yaml is generated (workflow/pipeline.py, from params.yaml's seeds and the import
    closures): the committed file must be what `python -m workflow.pipeline` writes now."""
    result = subprocess.run(
        [sys.executable, "-m", "workflow.pipeline", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_the_readme_picture_is_the_pipeline_graph():
    """The README's Mermaid chart of the pipeline is what `workflow.pipeline --mermaid` prints
    from DVC's graph of the committed dvc.yaml and params.yaml (so it cannot go stale), and
    it shows one seed's stages, from check_params to the report."""
    result = subprocess.run(
        [sys.executable, "-m", "workflow.pipeline", "--mermaid"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    chart = result.stdout
    blocks = re.findall(r"```mermaid\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks == [chart], "README.md's mermaid block is stale: paste `bin/python -m workflow.pipeline --mermaid`"
    lines = chart.splitlines()
    assert lines[0] == "flowchart TD" and "_seed" not in chart
    assert {
        "  check_params --> prepare",
        "  prepare --> pretrain_g0",
        "  pretrain_g0 --> vocab_g1",
        "  vocab_g1 --> student_g1",
        "  evaluate_student_g2 --> report",
    } <= set(lines)
    assert "  prepare --> vocab_g1" not in lines  # implied by prepare -> pretrain@g0 -> vocab@g1


def test_every_stage_declares_the_code_it_runs():
    stages = pipeline_stages()
    assert len(stages) >= 8 and all(
        any(s.name.startswith(kind) for s in stages)
        for kind in ("finetune_", "prepare_transfer", "transfer_", "prepare_detection", "detect_")
    )
    for stage in stages:
        declared = declared_code(stage)
        missing = sorted(f for f in code_run_by(stage.cmd) if not covered(f, declared))
        assert not missing, f"{stage.addressing}: runs {missing} but does not list them as deps"


def test_no_stage_declares_code_it_does_not_run():
    # A training stage may list what any method's module imports (augment, bow, losses):
    # its method is chosen in params, so that part of the list is shared by all methods.
    any_method = set().union(*(closure(f"bowflow.methods.{m}") for m in method_modules()))
    any_method -= {f"bowflow/methods/{m}.py" for m in method_modules()}
    for stage in pipeline_stages():
        runs = code_run_by(stage.cmd)
        allowed = runs | (any_method if "--method" in stage.cmd else set())
        for dep in declared_code(stage):
            inside = {f for f in allowed if f == dep or f.startswith(dep + "/")}
            assert inside, f"{stage.addressing}: declares {dep}, which it never runs"


def test_stages_that_train_nothing_run_no_method_code():
    """prepare, vocab, evaluate and report import no method, role or loss module, so a
    method edit can never rerun them; only the preparing stages (prepare, prepare_transfer,
    prepare_detection) run
    the decoding side of bowflow/data (the others read tables: prepared.py, box_tables.py)."""
    stages = (
        "prepare",
        "prepare_transfer",
        "prepare_detection",
        "vocab",
        "evaluate",
        "finetune",
        "transfer",
        "detect",
        "report",
    )
    for module in (f"stages.{stage}" for stage in stages):
        files = closure(module)
        method_code = sorted(
            f
            for f in files
            if f.startswith(("bowflow/methods/", "bowflow/roles/"))
            or f in ("bowflow/losses.py", "bowflow/heads.py", "bowflow/views.py")
        )
        assert not method_code, f"{module} runs {method_code}"
        if module not in ("stages.prepare", "stages.prepare_transfer", "stages.prepare_detection"):
            preparing = sorted(
                f
                for f in files
                if f.startswith("bowflow/data/")
                and f
                not in (
                    "bowflow/data/__init__.py",
                    "bowflow/data/prepared.py",
                    "bowflow/data/box_tables.py",
                    "bowflow/data/specs.py",
                )
            )
            assert not preparing, f"{module} runs the preparing side of bowflow/data: {preparing}"


def test_the_library_imports_no_method():
    """Plug-ins depend on the library, never the reverse: no module outside bowflow/methods/
    imports one of its modules (the registry loads them by name)."""
    for path in sorted((ROOT / "bowflow").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel.startswith("bowflow/methods/"):
            continue
        imported = closure(".".join(path.relative_to(ROOT).with_suffix("").parts))
        plugins = sorted(f for f in imported if f.startswith("bowflow/methods/") and not f.endswith("__init__.py"))
        assert not plugins, f"{rel} imports the method modules {plugins}"
