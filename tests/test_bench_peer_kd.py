"""The torchdistill peer benchmark, run as a person runs it (`python -m benchmarks.bench_peer_kd`,
tests/benchmark_cli.py).

No torchdistill env is made here (it needs a pip install): the runner is checked for what it
imports and reads, from its source. bowflow's side and the teacher are run for real; the only
timing asserted is the budget rule's own bound on the seconds it measured, never a speed.
"""

from __future__ import annotations

import ast
import json
import re

import pytest
from benchmark_cli import ROOT, imports, run_benchmark

BENCH = ROOT / "benchmarks" / "bench_peer_kd.py"
RUNNER = ROOT / "benchmarks" / "peer_torchdistill_kd.py"


def config_keys() -> set[str]:
    """The keys bench_peer_kd.torchdistill_config writes: its dict literal's and those of
    THEIRS (the dict it unpacks), read from the source."""
    tree = ast.parse(BENCH.read_text())
    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "torchdistill_config":
            (returned,) = [n.value for n in ast.walk(node) if isinstance(n, ast.Return)]
            keys |= {key.value for key in returned.keys if key is not None}
        elif isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["THEIRS"]:
            keys |= {key.value for key in node.value.keys}
    assert "lr" in keys and "teacher_arch" in keys, keys
    return keys


def test_runner_imports_and_config_keys():
    """The torchdistill runner imports only torchdistill, torch, torchvision, numpy, PIL, the
    standard library, bowflow.networks and the budget rule, and reads no config key that
    bench_peer_kd does not write (`out` is the runner's own)."""
    outside = {
        m for m in imports(RUNNER) if m.split(".")[0] not in ("torchdistill", "torch", "torchvision", "numpy", "PIL")
    }
    assert outside == {"bowflow.networks", "bowflow.budget"}
    read = set(re.findall(r'cfg\["(\w+)"\]', RUNNER.read_text()))
    assert read - {"out"} <= config_keys()
    assert {"lr", "weight_decay", "alpha", "temperature", "milestone_fractions", "seconds", "seed"} <= read


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad, message",
    [
        (["--workers", "2"], "--workers must be between 0 and --threads"),
        (["--seconds", "0"], "--seconds must be > 0"),
        (["--teacher-epochs", "0"], "--teacher-epochs must be >= 1"),
        (["--seeds", "1", "1"], "--seeds must be distinct"),
        (["--teacher", "/nonexistent/teacher.pt"], "--teacher: /nonexistent/teacher.pt does not exist"),
    ],
)
def test_rejects_bad_arguments(bad, message):
    result = run_benchmark("bench_peer_kd", *bad, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.slow
def test_smoke_ours_writes_the_record_and_its_table(tmp_path):
    """--smoke --only ours at two seeds: the teacher trained once (and saved), bowflow's KD
    within the budget at each seed, the record in benchmarks/recording.py's format, and the
    table the records check derives from it. A second run loads the saved teacher."""
    out, teacher = tmp_path / "record" / "run.json", tmp_path / "teacher.pt"
    args = ["--smoke", "--only", "ours", "--seconds", "0.5", "--seeds", "0", "1"]
    result = run_benchmark("bench_peer_kd", *args, "--save-teacher", teacher, "--json", out)
    assert "RESULT " in result.stdout and teacher.is_file()
    written = json.loads(out.read_text())
    assert written["benchmark"] == "bench_peer_kd"
    settings, measured = written["settings"], written["measurements"]
    assert (settings["source"], settings["size"], settings["images"], settings["batch_size"]) == ("digits", 8, 256, 32)
    assert measured["teacher"]["epochs"] == 1 and 0 <= measured["teacher"]["top1"] <= 100
    for seed, run in zip((0, 1), measured["per_seed"]):
        ours = run["sides"]["ours"]
        assert run["seed"] == seed and run["order"] == ["ours"] and "torchdistill" not in run["sides"]
        assert ours["steps"] == 8 * ours["epochs"] == 8 * len(run["history"]["ours"])
        assert abs(ours["seconds"] - 0.5) < max(ours["epoch_seconds"])  # the budget rule's bound
        assert 0 <= ours["top1"] <= 100 and 0 <= run["sides"]["init"]["top1"] <= 100
    rendered = run_benchmark("records", "--root", tmp_path, "render", "record", "--table", "bench").stdout
    rows = [line.strip("|").split("|") for line in rendered.splitlines() if line.startswith("|") and "---" not in line]
    rows = [[cell.strip() for cell in row] for row in rows]
    assert rows[0][-1] == "student top-1 (%)"
    assert [r[:2] for r in rows[1:]] == [
        ["0", "ours"],
        ["0", "untrained"],
        ["1", "ours"],
        ["1", "untrained"],
        ["mean ± sd (2 seeds)", "ours"],
    ]

    again = tmp_path / "again.json"
    run_benchmark("bench_peer_kd", *args[:-2], "0", "--teacher", teacher, "--json", again)
    loaded = json.loads(again.read_text())["measurements"]["teacher"]
    assert loaded["loaded_from"] == str(teacher) and loaded["top1"] == measured["teacher"]["top1"]
