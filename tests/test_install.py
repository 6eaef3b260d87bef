"""The two installs (CPU: `make install`; GPU: `make install-gpu`) and the package build.

faiss-cpu and faiss-gpu both write the `faiss` module, so each requirements file must name
exactly one of them, and the GPU install must not end up with both."""

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip"]


def pins(name: str) -> dict[str, str]:
    """{package: version} of a requirements file, following its `-r` includes."""
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            out.update(pins(line[3:].strip()))
        elif line:
            package, version = line.split("==")
            out[package.lower()] = version
    return out


def faiss_builds(p: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in p.items() if k.startswith("faiss")}


def test_each_install_names_one_faiss_build_of_the_same_version():
    cpu, gpu = pins("requirements.txt"), pins("requirements-gpu.txt")
    assert faiss_builds(cpu) == {"faiss-cpu": "1.15.1"}
    assert list(faiss_builds(gpu)) == ["faiss-gpu"]
    assert faiss_builds(gpu)["faiss-gpu"] == faiss_builds(cpu)["faiss-cpu"]
    # every other pin is shared, so the two environments differ in faiss alone
    assert {k: v for k, v in cpu.items() if not k.startswith("faiss")} == {
        k: v for k, v in gpu.items() if not k.startswith("faiss")
    }


def make_dry_run(tmp_path: Path, gpu_marked: bool) -> str:
    venv = tmp_path / "venv"
    venv.mkdir(parents=True)
    if gpu_marked:
        (venv / ".gpu").touch()
    return subprocess.run(
        ["make", "-n", "install", f"VENV={venv}"], cwd=ROOT, text=True, capture_output=True, check=True
    ).stdout


def test_make_keeps_the_gpu_choice_once_made(tmp_path):
    assert "-r requirements.txt" in make_dry_run(tmp_path / "a", gpu_marked=False)
    assert "-r requirements-gpu.txt" in make_dry_run(tmp_path / "b", gpu_marked=True)
    gpu = subprocess.run(
        ["make", "-n", "install-gpu", f"VENV={tmp_path / 'c'}"], cwd=ROOT, text=True, capture_output=True, check=True
    ).stdout
    # faiss-cpu leaves before faiss-gpu comes
    assert gpu.index("uninstall --quiet --yes faiss-cpu") < gpu.index("-r requirements-gpu.txt")


@pytest.mark.slow
def test_gpu_requirements_resolve_without_faiss_cpu(tmp_path):
    """pip's resolver, asked for the GPU file in this environment (where faiss-cpu is
    installed), installs faiss-gpu and its CUDA wheels and no faiss-cpu. Needs the package
    index; skipped without it."""
    report = tmp_path / "report.json"
    run = subprocess.run(
        PIP + ["install", "--dry-run", "--quiet", "--report", str(report), "-r", str(ROOT / "requirements-gpu.txt")],
        text=True,
        capture_output=True,
        timeout=600,
    )
    if run.returncode and re.search(r"(?i)connection|resolve host|network|no matching distribution", run.stderr):
        pytest.skip(f"package index unreachable: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr
    names = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert names.get("faiss-gpu") == "1.15.1"
    assert "faiss-cpu" not in names


def test_the_package_builds_with_the_library_only(tmp_path):
    """`pip install .` used to stop at 'Multiple top-level packages discovered'."""
    source = tmp_path / "source"  # a copy: setuptools writes build/ in the tree
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", ".dvc", "data", "docs"))
    subprocess.run(
        PIP + ["wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = tmp_path.glob("bowflow-*.whl")
    tops = {Path(n).parts[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert "bowflow" in tops and not tops & {"tests", "stages", "benchmarks", "workflow"}
