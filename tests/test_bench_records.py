"""Benchmark records (`--json PATH`, benchmarks/recording.py) and the `bench` table kind of
`python -m benchmarks.records`: each benchmark of docs/BENCHMARKS.md sections 1-6 writes a
record in its smoke mode, its `table()` renders from it, and a published `bench` table
whose cell differs from its record fails the check. Benchmarks and the check run as
subprocesses (no test imports a benchmark module)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_cli import run_benchmark

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = (
    "bench_augment",
    "bench_compute",
    "bench_targets",
    "bench_vocab",
    "bench_fewshot",
    "bench_pipeline",
    "bench_methods",
)
MACHINE_A = ["avx2", "fma", "avx512f", "avx512_bf16"]  # docs/BENCHMARKS.md's machine A class


def records(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.records", "--root", str(root), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def smoke_record(root: Path, name: str, *args: str) -> Path:
    """Run `python -m benchmarks.<name> --smoke --json` into root/docs/results/bench/<name>/;
    -> the record folder (relative to root)."""
    folder = Path("docs/results/bench") / name
    run_benchmark(name, "--smoke", *args, "--json", root / folder / "smoke.json", timeout=600)
    return folder


@pytest.mark.parametrize("name", BENCHMARKS)
def test_smoke_record_renders_its_table(tmp_path, name):
    """The record holds what docs/results/bench records hold, and `table()` renders a
    header and at least one row of as many cells from it."""
    folder = smoke_record(tmp_path, name)
    record = json.loads((tmp_path / folder / "smoke.json").read_text())
    assert record["benchmark"] == name
    assert record["command"].startswith(f"python -m benchmarks.{name} --smoke")
    assert record["cpus"] >= 1 and isinstance(record["cpu_flags"], list) and record["machine"]
    assert len(record["load_average"]["before"]) == 3 and len(record["load_average"]["after"]) == 3
    assert record["torch"] and record["settings"]["smoke"] is True and record["measurements"]
    result = records(tmp_path, "render", str(folder), "--table", "bench")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(rows) >= 3, result.stdout  # header, separator, a row
    cells = [len(row.strip("|").split("|")) for row in rows]
    assert len(set(cells)) == 1, result.stdout


def publish(root: Path, folder: Path, edit=lambda rows: rows) -> None:
    """docs/BENCHMARKS.md of `root`: the record's table as `render` gives it (rows passed
    through `edit`), with its claims as the prose and the machine class named."""
    rendered = records(root, "render", str(folder), "--table", "bench")
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    lines = rendered.stdout.splitlines()
    table = [line for line in lines if line.startswith(("<!--", "|"))]
    claims = [line[len("claim: ") :] for line in lines if line.startswith("claim: ")]
    text = "\n".join(
        [
            "# Benchmarks",
            "",
            "## 5. Few-shot",
            "",
            "Measured on machine A. " + " ".join(f"It {c}." for c in claims),
            "",
            *table[:3],
            *edit(table[3:]),
            "",
        ]
    )
    (root / "docs" / "BENCHMARKS.md").write_text(text)


@pytest.fixture
def fewshot_root(tmp_path):
    folder = smoke_record(tmp_path, "bench_fewshot")
    path = tmp_path / folder / "smoke.json"
    record = json.loads(path.read_text())
    record["cpu_flags"] = MACHINE_A  # whatever CPU runs the tests: the prose names A
    # fixed timings, so that the prose has its figures (a smoke run may draw its episodes
    # slower than it evaluates them, and then claims nothing)
    record["measurements"]["seconds"] = {"loop": [0.5], "batched": [0.2], "draw": [0.05]}
    path.write_text(json.dumps(record))
    shutil.copy(ROOT / folder / "claims.yaml", tmp_path / folder)  # the published claims
    return tmp_path, folder


def test_untampered_bench_table_passes(fewshot_root):
    root, folder = fewshot_root
    publish(root, folder)
    result = records(root, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 tables checked" in result.stdout


def test_tampered_bench_cell_fails(fewshot_root):
    root, folder = fewshot_root

    def tamper(rows):
        cells = rows[0].strip().strip("|").split("|")
        cells[2] = " 9.999 s "  # the batched seconds
        return ["|" + "|".join(cells) + "|", *rows[1:]]

    publish(root, folder, tamper)
    result = records(root, "check")
    assert result.returncode == 1, result.stdout
    assert "table=bench" in result.stdout and "published '9.999 s'" in result.stdout, result.stdout


def test_bench_table_on_another_machine_class_fails(fewshot_root):
    """The record's cpu_flags give its machine class; prose naming another one fails."""
    root, folder = fewshot_root
    publish(root, folder)
    doc = root / "docs" / "BENCHMARKS.md"
    doc.write_text(doc.read_text().replace("machine A", "machine C"))
    result = records(root, "check")
    assert result.returncode == 1 and "machine A's class" in result.stdout, result.stdout


def test_bench_prose_figure_not_the_records_fails(fewshot_root):
    """A figure the claims.yaml beside the record derives must be in the prose as derived."""
    root, folder = fewshot_root
    publish(root, folder)
    doc = root / "docs" / "BENCHMARKS.md"
    text = doc.read_text()
    start = text.index("It takes ") + len("It takes ")
    doc.write_text(text[:start] + "9" + text[start + 1 :])
    result = records(root, "check")
    assert result.returncode == 1 and "claim not found" in result.stdout, result.stdout
