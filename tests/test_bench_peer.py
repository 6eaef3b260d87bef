"""The peer benchmark, run as a person runs it (`python -m benchmarks.bench_peer`,
tests/benchmark_cli.py); its budget rule is tested in tests/test_budget.py.

No lightly env is made here (it needs a pip install): the lightly runner is checked for what
it imports and reads, from its source. bowflow's side is run for real; on real runs the only
timing asserted is the rule's own bound on the seconds it measured (|training seconds -
budget| < the longest epoch), never a speed.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from benchmark_cli import ROOT, imports, run_benchmark

BENCH = ROOT / "benchmarks" / "bench_peer.py"
RUNNER = ROOT / "benchmarks" / "peer_lightly_byol.py"


def record(tmp_path: Path, *args) -> dict:
    """Run bench_peer with `args` and --json; -> the measurements of the record it wrote
    (benchmarks/recording.py's format), with its settings as "args"."""
    out = tmp_path / "record" / "peer.json"
    result = run_benchmark("bench_peer", *args, "--json", out)
    assert "RESULT " in result.stdout
    written = json.loads(out.read_text())
    assert written["benchmark"] == "bench_peer" and written["command"].startswith("python -m benchmarks.bench_peer ")
    assert {"before", "after"} == set(written["load_average"])
    return {**written["measurements"], "args": written["settings"]}


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad, message",
    [
        (["--workers", "2"], "--workers must be between 0 and --threads"),  # lightly never gets more cores
        (["--seconds", "0"], "--seconds must be > 0"),
        (["--width", "0"], "--width must be >= 1"),
        (["--images", "-1"], "--images and --test-images must be >= 0"),
        (["--seeds", "1", "1"], "--seeds must be distinct"),
    ],
)
def test_bench_peer_rejects_bad_arguments(bad, message):
    result = run_benchmark("bench_peer", *bad, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.slow
def test_bench_peer_missing_tarball_names_the_file(tmp_path):
    missing = tmp_path / "cifar10-jpeg.tar.gz"
    result = run_benchmark("bench_peer", "--root", missing, "--only", "ours", check=False)
    assert result.returncode != 0
    assert "cifar10-jpeg.tar.gz" in result.stderr and "--source digits" in result.stderr, result.stderr


def lightly_config_keys() -> set[str]:
    """The keys of the dict bench_peer.lightly_config returns, read from its source."""
    for node in ast.walk(ast.parse(BENCH.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == "lightly_config":
            returned = [n.value for n in ast.walk(node) if isinstance(n, ast.Return)]
            assert len(returned) == 1 and isinstance(returned[0], ast.Dict)
            return {key.value for key in returned[0].keys}
    raise AssertionError("bench_peer.py has no lightly_config")


def test_bench_peer_runner_imports_and_config_keys():
    """The lightly runner imports only lightly, torch, numpy, PIL, the standard library,
    bowflow.networks and the budget rule (itself standard library only, in a package whose
    __init__ imports nothing), and reads no config key that bench_peer does not write."""
    import re

    outside = {m for m in imports(RUNNER) if m.split(".")[0] not in ("lightly", "torch", "numpy", "PIL")}
    assert outside == {"bowflow.networks", "bowflow.budget"}
    assert imports(ROOT / "bowflow" / "budget.py") == set()
    assert imports(ROOT / "bowflow" / "__init__.py") == set()
    keys = lightly_config_keys()
    assert set(re.findall(r'cfg\["(\w+)"\]', RUNNER.read_text())) <= keys
    assert {"lr", "loss_scale", "blur_p", "seconds", "seed", "threads", "workers"} <= keys


@pytest.mark.slow
def test_bench_peer_ours_two_speeds_get_equal_seconds(tmp_path):
    """bowflow's side for real, through bowflow.train.train with the budget hook: 128 and
    1,024 images (8x the steps per epoch) under the same 1.5 s budget. Each ends within its
    longest epoch of the budget, the faster-per-epoch one with more epochs; the trainer's
    history has exactly the budget's epochs, and its lr schedule was laid out over the
    budget's last plan."""
    from bowflow.optim import learning_rate

    runs = {}
    for n in (128, 1024):
        written = record(tmp_path / str(n), "--smoke", "--only", "ours", "--seconds", "1.5", "--images", str(n))
        (run,) = written["per_seed"]
        stats, history = run["sides"]["ours"], run["history"]["ours"]
        runs[n] = stats
        steps = n // 32
        assert stats["steps"] == stats["epochs"] * steps and len(history) == stats["epochs"]
        assert stats["seconds"] == pytest.approx(sum(stats["epoch_seconds"]), abs=1e-2)
        assert abs(stats["seconds"] - 1.5) < max(stats["epoch_seconds"])
        assert stats["plans"][-1] == stats["epochs"] and stats["wall_seconds"] >= stats["seconds"]
        assert [h["epoch"] for h in history] == list(range(1, stats["epochs"] + 1))
        last_lr = learning_rate(stats["steps"] - 1, stats["schedule_epochs"] * steps, steps, 0.1)
        assert history[-1]["lr"] == pytest.approx(last_lr, abs=1e-6)
    assert runs[128]["epochs"] > runs[1024]["epochs"]


@pytest.mark.slow
def test_bench_peer_smoke_ours_writes_the_record(tmp_path):
    written = record(tmp_path, "--smoke", "--only", "ours", "--seconds", "0.5", "--seeds", "0", "1")
    args = written["args"]
    assert (args["source"], args["size"], args["width"], args["images"], args["batch_size"]) == (
        "digits",
        8,
        4,
        256,
        32,
    )  # --smoke's sizes
    assert (args["threads"], args["workers"], args["only"], args["seeds"]) == (1, 0, "ours", [0, 1])
    assert set(written["machine"]) == {"model", "flags", "cpus"}
    assert written["summary"]["seeds"] == [0, 1]
    for seed, run in zip((0, 1), written["per_seed"]):
        ours = run["sides"]["ours"]
        assert run["seed"] == seed and run["order"] == ["ours"]
        assert ours["epochs"] >= 1 and ours["steps"] == 8 * ours["epochs"] == 8 * len(run["history"]["ours"])
        assert ours["images_per_second"] > 0 and ours["cpu_seconds"] > 0 and ours["budget_seconds"] == 0.5
        assert 0 <= ours["knn"] <= 100 and 0 <= run["sides"]["init"]["knn"] <= 100
        assert "lightly" not in run["sides"] and "knn_points" not in run
    knn = [run["sides"]["ours"]["knn"] for run in written["per_seed"]]
    assert written["summary"]["ours"]["knn"] == {"mean": round(sum(knn) / 2, 3), "min": min(knn), "max": max(knn)}
    assert "knn_points" not in written["summary"]


def render(root: Path, folder: str, kind: str) -> list[list[str]]:
    """`python -m benchmarks.records render FOLDER --table KIND` in `root`: the table's rows."""
    result = run_benchmark("records", "--root", root, "render", folder, "--table", kind)
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines if "---|" not in line]


@pytest.mark.slow
def test_peer_tables_from_a_record(tmp_path):
    """The published tables from a record: per seed each side and the untrained floor,
    each side's mean +- sd over the seeds, then ours over the peer per seed (kind `bench`,
    docs/BENCHMARKS.md); each side's mean +- sd and the mean and range of ours over the
    peer (kind `peer-summary`, the README)."""

    def side(images, cpu, seconds, knn, epochs):
        return {
            "images": images,
            "cpu_seconds": cpu,
            "seconds": seconds,
            "images_per_second": images / seconds,
            "knn": knn,
            "epochs": epochs,
        }

    per_seed = [
        {
            "seed": s,
            "sides": {
                "lightly": side(1000, 20, 10.0, 30.0 + s, 4),
                "ours": side(3000, 30, 10.5, 32.0, 9),
                "init": {"knn": 20.0},
            },
        }
        for s in (0, 1)
    ]
    folder = tmp_path / "docs" / "results" / "bench" / "bench_peer"
    folder.mkdir(parents=True)
    record = {"benchmark": "bench_peer", "cpu_flags": ["avx2"], "measurements": {"per_seed": per_seed}}
    (folder / "run.json").write_text(json.dumps(record))
    rows = render(tmp_path, "docs/results/bench/bench_peer", "bench")
    assert rows[0] == ["seed", "side", "epochs", "training s", "images/s", "images/CPU-s", "k-NN top-1 (%)"]
    assert rows[1] == ["0", "lightly", "4", "10.0", "100.0", "50.0", "30.00"]
    assert rows[3] == ["0", "untrained", "", "", "", "", "20.00"]
    assert rows[7] == [
        "mean ± sd (2 seeds)",
        "lightly",
        "4.0 ± 0.0",
        "10.0 ± 0.0",
        "100.0 ± 0.0",
        "50.0 ± 0.0",
        "30.50 ± 0.71",
    ]
    assert rows[9] == ["0", "ours vs lightly", "", "+0.5", "2.86x", "2.00x", "+2.00"]
    assert rows[10][-1] == "+1.00" and len(rows) == 11
    assert render(tmp_path, "docs/results/bench/bench_peer", "peer-summary") == [
        ["side", "seeds", "images/s", "images/CPU-s", "k-NN top-1 (%)"],
        ["lightly", "2", "100.0 ± 0.0", "50.0 ± 0.0", "30.50 ± 0.71"],
        ["ours", "2", "285.7 ± 0.0", "100.0 ± 0.0", "32.00 ± 0.00"],
        ["ours vs lightly", "2", "2.86x (2.86x to 2.86x)", "2.00x (2.00x to 2.00x)", "+1.50 (+1.00 to +2.00)"],
    ]
