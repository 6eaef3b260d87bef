"""The peer benchmark (benchmarks/bench_peer.py) and its time budget (benchmarks/peer_budget.py).

No lightly env is made here (it needs a pip install): the lightly runner is checked for what
it imports and reads. The budget rule is driven with simulated epoch seconds (exact
assertions), and bowflow's side is run for real; on real runs the only timing asserted is
the rule's own bound on the seconds it measured (|training seconds - budget| < the longest
epoch), never a speed.
"""
from __future__ import annotations

import json
import random

import pytest
import torch

from benchmarks import bench_peer as bp
from benchmarks.peer_budget import PROVISIONAL_EPOCHS, EpochBudget

LSCPU = """Architecture:                            x86_64
CPU(s):                                  2
Model name:                              Intel(R) Xeon(R) Platinum 8480+
Flags:                                   fpu sse4_2 avx avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile
"""


def run_budget(seconds: float, steps_per_epoch: int, epoch_seconds) -> EpochBudget:
    """Drive an EpochBudget with epoch_seconds(k, budget) for epochs k = 0, 1, ...; checks
    on the way that the schedules' total is always the plan, and never below the epochs done."""
    budget = EpochBudget(seconds, steps_per_epoch)
    assert budget.total_steps() == PROVISIONAL_EPOCHS * steps_per_epoch
    k = 0
    while budget.end_epoch(epoch_seconds(k, budget)):
        k += 1
        assert budget.planned > budget.epochs and budget.total_steps() == budget.planned * steps_per_epoch
    assert budget.stopped and budget.planned == budget.epochs == k + 1
    return budget


def within_an_epoch(budget: EpochBudget) -> None:
    assert abs(budget.elapsed - budget.seconds) < max(budget.epoch_seconds)


def test_budget_two_speeds_equal_seconds_not_equal_epochs():
    """The issue's case: one side has a DataLoader start-up in every epoch (lightly, 1 worker)
    and a one-off slow first epoch; the other is 2.4x faster per epoch. Both end within an
    epoch of 900 s (so within an epoch of each other), with very different epoch counts."""
    noise = random.Random(0)

    def lightly(k, _):            # 9 s of steps + 0.8 s worker start-up, first epoch +8 s
        return (9.0 + 0.8 + (8.0 if k == 0 else 0.0)) * noise.uniform(0.9, 1.1)

    def ours(k, _):
        return (4.1 + (1.0 if k == 0 else 0.0)) * noise.uniform(0.9, 1.1)

    slow, fast = run_budget(900, 39, lightly), run_budget(900, 39, ours)
    for side in (slow, fast):
        within_an_epoch(side)
    assert abs(slow.elapsed - fast.elapsed) < max(max(slow.epoch_seconds), max(fast.epoch_seconds))
    assert 85 <= slow.epochs <= 95 and 200 <= fast.epochs <= 225


def test_budget_follows_a_change_of_load():
    """The machine slows down 2x half way through (another job starts): the plan follows."""
    budget = run_budget(600, 10, lambda k, b: 5.0 if b.elapsed < 300 else 10.0)
    within_an_epoch(budget)
    assert budget.epochs == 60 + 30 and budget.schedule_epochs == budget.epochs
    assert budget.plans[0] == 1 + 119 and budget.plans[-1] == 90     # first plan from 5 s epochs


def test_budget_rule_cases():
    # steady 3 s epochs, 10 s budget: plans 1 + ceil(7/3) = 4, 4, 4 -> 4 epochs, 12 s (the
    # first boundary at or past 10 s), the schedules laid out over exactly those 4 epochs
    b = run_budget(10, 4, lambda k, _: 3.0)
    assert (b.epochs, b.elapsed, b.plans, b.schedule_epochs) == (4, 12.0, [4, 4, 4, 4], 4)
    assert b.record() == {"budget_seconds": 10.0, "training_seconds": 12.0, "epochs": 4,
                          "schedule_epochs": 4, "epoch_seconds": [3.0] * 4, "plans": [4, 4, 4, 4]}
    # an epoch slower than planned passes the budget one epoch early: stop there (schedule
    # laid out over 4 epochs, cut at 3)
    b = run_budget(10, 1, lambda k, _: [3.0, 3.0, 5.0][k])
    assert (b.epochs, b.elapsed, b.schedule_epochs) == (3, 11.0, 4)
    # the planned last epoch runs faster than its estimate: the plan ends short of the budget
    # (by less than the estimate), and the side stops with its schedules complete
    b = run_budget(10, 1, lambda k, _: [4.0, 4.0, 1.0][k])
    assert (b.epochs, b.elapsed, b.schedule_epochs, b.plans) == (3, 9.0, 3, [3, 3, 3])
    within_an_epoch(b)
    # a budget under one epoch: one epoch
    assert run_budget(1, 5, lambda k, _: 2.0).epochs == 1
    # the estimate is the mean of the last 3 epochs
    b = EpochBudget(100, 1)
    for s in (10.0, 2.0, 2.0, 2.0):
        b.end_epoch(s)
    assert b.estimate() == 2.0 and b.planned == 4 + 42
    with pytest.raises(ValueError):
        EpochBudget(0, 1)
    with pytest.raises(ValueError):
        EpochBudget(1, 0)
    with pytest.raises(ValueError):
        EpochBudget(10, 1).end_epoch(-1.0)
    stopped = run_budget(1, 1, lambda k, _: 2.0)
    with pytest.raises(RuntimeError):
        stopped.end_epoch(1.0)


def test_bench_peer_arguments_and_helpers():
    args = bp.parse_args([])
    assert (args.source, args.size, args.images, args.threads, args.workers, args.only, args.seeds) == \
        ("imagefolder", 32, 5000, 1, 0, "both", [0])
    assert args.root == bp.DEFAULT_TARBALL and args.root.name == "cifar10-jpeg.tar.gz"
    args = bp.parse_args(["--source", "digits", "--seconds", "60", "--threads", "2", "--workers", "2",
                          "--seeds", "0", "1", "2"])
    assert (args.source, args.seconds, args.workers, args.seeds) == ("digits", 60.0, 2, [0, 1, 2])
    smoke = bp.parse_args(["--smoke", "--seeds", "3"])
    assert {k: getattr(smoke, k) for k in bp.SMOKE} == bp.SMOKE and smoke.seeds == [3]
    for bad in (["--workers", "2"], ["--seconds", "0"], ["--width", "0"], ["--images", "-1"],
                ["--seeds", "1", "1"]):
        with pytest.raises(SystemExit):
            bp.parse_args(bad)                       # lightly never gets more cores than ours

    assert [bp.side_order(i, False) for i in range(3)] == [("lightly", "ours"), ("ours", "lightly"),
                                                           ("lightly", "ours")]
    assert [bp.side_order(i, True) for i in range(2)] == [("ours", "lightly"), ("lightly", "ours")]
    rows = bp.subset(100, 10, seed=3)
    assert len(rows) == 10 and rows.unique().numel() == 10 and torch.equal(rows, rows.sort().values)
    assert torch.equal(rows, bp.subset(100, 10, seed=3)) and not torch.equal(rows, bp.subset(100, 10, seed=4))
    assert torch.equal(bp.subset(5, 0, 0), torch.arange(5)) and torch.equal(bp.subset(5, 9, 0), torch.arange(5))
    machine = bp.lscpu_machine(LSCPU)
    assert machine == {"model": "Intel(R) Xeon(R) Platinum 8480+", "cpus": "2",
                       "flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]}
    assert bp.lscpu_machine("")["model"] == "unknown"
    ours = {"images_per_second": 300.0, "knn": 40.0, "seconds": 905.0, "epoch_seconds": [5.0, 4.0]}
    lightly = {"images_per_second": 100.0, "knn": 42.5, "seconds": 902.5, "epoch_seconds": [9.0, 9.5]}
    assert bp.ratios(ours, lightly) == {"images_per_second_ratio": 3.0, "knn_points": -2.5,
                                        "seconds_gap": 2.5, "longest_epoch_seconds": 9.5}
    per_seed = [{"seed": s, "sides": {"ours": {"knn": 40.0 + s, "seconds": 900.0, "epochs": 200},
                                      "lightly": {"knn": 41.0, "seconds": 905.0, "epochs": 90},
                                      "init": {"knn": 30.0}},
                 "knn_points": s - 1.0, "images_per_second_ratio": 2.0, "seconds_gap": -5.0} for s in (0, 2)]
    summary = bp.summarize(per_seed)
    assert summary["seeds"] == [0, 2] and summary["ours"]["knn"] == {"mean": 41.0, "min": 40.0, "max": 42.0}
    assert summary["lightly"]["epochs"] == {"mean": 90.0, "min": 90, "max": 90}
    assert summary["knn_points"] == {"mean": 0.0, "min": -1.0, "max": 1.0}
    assert summary["init"] == {"knn": {"mean": 30.0, "min": 30.0, "max": 30.0}}


def test_bench_peer_missing_tarball_names_the_file(tmp_path):
    missing = tmp_path / "cifar10-jpeg.tar.gz"
    with pytest.raises(SystemExit, match="cifar10-jpeg.tar.gz.*--source digits"):
        bp.main(["--root", str(missing), "--only", "ours"])


def test_bench_peer_runner_imports_and_config_keys():
    """The lightly runner imports only lightly, torch, numpy, PIL, the standard library,
    bowflow.networks and the budget rule (itself standard library only), and reads no
    config key that bench_peer does not write."""
    import ast
    import re
    import sys

    from bowflow.models import Normalizer

    def imports(path):
        modules = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                modules.add(node.module)
        return {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names}

    source = bp.RUNNER.read_text()
    outside = {m for m in imports(bp.RUNNER) if m.split(".")[0] not in ("lightly", "torch", "numpy", "PIL")}
    assert outside == {"bowflow.networks", "benchmarks.peer_budget"}
    assert imports(bp.RUNNER.with_name("peer_budget.py")) == set()
    args = bp.parse_args(["--source", "digits", "--seconds", "30"])
    config = bp.lightly_config(args, Normalizer([0.5] * 3, [0.25] * 3), seed=4)
    assert set(re.findall(r'cfg\["(\w+)"\]', source)) <= set(config)
    assert config["lr"] == 0.1 and config["loss_scale"] == 4.0 and config["blur_p"] == [1.0, 0.1]
    assert config["seconds"] == 30.0 and config["seed"] == 4


def test_bench_peer_ours_two_speeds_get_equal_seconds(tmp_path):
    """bowflow's side for real, through bowflow.train.train with the budget hook: 128 and
    1,024 images (8x the steps per epoch) under the same 1.5 s budget. Each ends within its
    longest epoch of the budget, the faster-per-epoch one with more epochs; the trainer's
    history has exactly the budget's epochs."""
    from bowflow.models import Normalizer
    from bowflow.networks import build_backbone
    from bowflow.optim import learning_rate

    args = bp.parse_args(["--smoke", "--seconds", "1.5"])
    x_train, *_ = bp.load_images(args, seed=0)
    x_train = torch.cat([x_train] * 4)                       # 1,024 images of 8 px
    normalizer = Normalizer.fit(x_train)
    torch.manual_seed(0)
    init = build_backbone("convnet", args.width).state_dict()
    threads = torch.get_num_threads()
    runs = {}
    for n in (128, 1024):
        state, stats = bp.run_ours(x_train[:n], normalizer, init, args, 0, tmp_path)
        runs[n] = stats
        assert set(state) == set(init)
        assert stats["steps"] == stats["epochs"] * (n // args.batch_size) == len(stats["history"]) * (n // 32)
        assert stats["seconds"] == pytest.approx(sum(stats["epoch_seconds"]), abs=1e-2)
        assert abs(stats["seconds"] - 1.5) < max(stats["epoch_seconds"])
        assert stats["plans"][-1] == stats["epochs"] and stats["wall_seconds"] >= stats["seconds"]
        assert [h["epoch"] for h in stats["history"]] == list(range(1, stats["epochs"] + 1))
        # the trainer's lr schedule was laid out over the budget's last plan
        steps = n // 32
        last_lr = learning_rate(stats["steps"] - 1, stats["schedule_epochs"] * steps, steps, 0.1)
        assert stats["history"][-1]["lr"] == pytest.approx(last_lr, abs=1e-6)
    torch.set_num_threads(threads)
    assert runs[128]["epochs"] > runs[1024]["epochs"]
    assert not list(tmp_path.glob("*.ckpt"))


def test_bench_peer_smoke_ours_writes_the_record(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "record" / "peer.json"
    result = bp.main(["--smoke", "--only", "ours", "--seconds", "0.5", "--seeds", "0", "1",
                      "--json", str(out)])
    assert torch.get_num_threads() == threads
    assert "RESULT " in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["summary"] == result["summary"] and written["summary"]["seeds"] == [0, 1]
    for seed, run in zip((0, 1), written["per_seed"]):
        ours = run["sides"]["ours"]
        assert run["seed"] == seed and run["order"] == ["ours"]
        assert ours["epochs"] >= 1 and ours["steps"] == 8 * ours["epochs"] == 8 * len(run["history"]["ours"])
        assert ours["images_per_second"] > 0 and ours["cpu_seconds"] > 0 and ours["budget_seconds"] == 0.5
        assert 0 <= ours["knn"] <= 100 and 0 <= run["sides"]["init"]["knn"] <= 100
        assert "lightly" not in run["sides"] and "knn_points" not in run
    assert "knn_points" not in result["summary"]
