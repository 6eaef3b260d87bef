"""The benchmarks run (--smoke) and report what they promise; select_compute reads the cache
that bench_compute --save writes (the rest of the compute choice: tests/test_compute.py).
Each benchmark runs as a person runs it, `python -m benchmarks.NAME` (tests/benchmark_cli.py),
and is checked by its RESULT line and files; these runs are the full tier's (marked slow).
No timing is asserted anywhere."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

import pytest
import torch
from benchmark_cli import benchmark_result, run_benchmark

from bowflow import compute
from bowflow.methods.bownet import BoWNetParams
from bowflow.methods.rotnet import RotNetParams
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.roles.base import get_method
from bowflow.train import autocast_context


def half_unit(value: float, decimals: int | None = None) -> float:
    """Half the last place of a figure rounded to `decimals` places, or (None) to 3
    significant digits (bench_compute's `sig`): how far the RESULT's figure may be from
    the value it was rounded from."""
    if decimals is not None:
        return 0.5 * 10.0**-decimals
    return 0.5 * 10.0 ** (math.floor(math.log10(abs(value))) - 2) if value else 0.0


def assert_quotient(
    result: dict, key: str, numerator: str, denominator: str, decimals: tuple[int | None, int | None, int | None]
) -> None:
    """result[key] is result[numerator] / result[denominator] as the benchmark computed it
    from the unrounded figures: it lies in the interval the three roundings (`decimals`
    of the numerator, the denominator and the quotient; None = 3 significant digits)
    leave. An inverted ratio, or one of two other figures, falls outside it."""
    q, n, d = result[key], result[numerator], result[denominator]
    en, ed, eq = (half_unit(v, k) for v, k in zip((n, d, q), decimals))
    low = (n - en) / (d + ed) - eq
    high = (n + en) / (d - ed) + eq if d > ed else math.inf
    assert low <= q <= high, f"{key} = {q}, but {numerator} / {denominator} = {n} / {d} gives [{low}, {high}]"


def step_gflop(method: str, size: int, width: int, batch: int, words: int) -> float:
    """GFLOP of one eager fp32 training step, forward + backward, counted here on the
    method's own step (as bench_compute documents: FlopCounterMode over mm/conv and their
    backward), for comparison with the benchmark's gflop_per_step."""
    from torch.utils.flop_counter import FlopCounterMode

    context = {
        "normalizer": Normalizer([0.5] * 3, [0.25] * 3),
        "image_size": size,
        "codes": torch.randint(0, words, (batch, (size // 2) ** 2)),
        "num_words": words,
        "parent": {},
    }
    params = (RotNetParams if method == "rotnet" else BoWNetParams)(method=method, width=width, batch_size=batch)
    cls = get_method(method)
    model = cls(params, build_backbone("convnet", width), cls.inputs(**context)).train()
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = model.training_step(images, torch.arange(batch), torch.Generator().manual_seed(0))
        loss.backward()
    return counter.get_total_flops() / 1e9


# bench_compute rounds every figure to 3 significant digits (0.5 % at most each): a figure
# recomputed from two or three rounded ones is within 2 % of the RESULT's.
SIG3 = 0.021


def check_compute_result(result: dict) -> None:
    """What bench_compute's figures are: each mode's ratio is its rate over the baseline's
    (eager fp32 at torch's default thread count), its GFLOP/s is the step's GFLOP times
    its steps per second, its fraction of peak is that over the same thread count's fp32
    matmul; `fastest` is the row with the highest rate; the choice is the choosable mode
    (oneDNN on) with the highest ratio, kept at the baseline unless it gains 3 %
    (--min-gain's default); the step's GFLOP is what FlopCounterMode counts on the same
    step here. No figure is compared with a time or with another mode's speed."""
    batch = result["batch_size"]
    for size in result["sizes"]:
        rows = [r for r in result["modes"] if r["size"] == size]
        (base,) = (r for r in rows if r["mode"] == "eager_fp32" and r["threads"] == result["default_threads"])
        assert base["ratio"] == 1.0
        gflop = result["gflop_per_step"][str(size)]
        assert gflop == pytest.approx(
            step_gflop(result["method"], size, result["width"], batch, result["words"]), rel=0.005
        )
        for row in rows:
            peak = result["matmul_gflops"][str(row["threads"])]
            assert row["ratio"] == pytest.approx(row["images_per_s"] / base["images_per_s"], rel=SIG3), row
            assert row["gflops"] == pytest.approx(gflop * row["images_per_s"] / batch, rel=SIG3), row
            assert row["fraction_of_fp32_matmul"] == pytest.approx(row["gflops"] / peak["fp32"], rel=SIG3), row
            assert row["best_images_per_s"] >= row["images_per_s"]  # best round >= the median
        fastest = result["fastest"][str(size)]
        (top,) = (r for r in rows if (r["mode"], r["threads"]) == (fastest["mode"], fastest["threads"]))
        assert top["images_per_s"] == max(r["images_per_s"] for r in rows)
        assert {k: top[k] for k in ("images_per_s", "ratio", "gflops", "fraction_of_fp32_matmul")} == {
            k: fastest[k] for k in ("images_per_s", "ratio", "gflops", "fraction_of_fp32_matmul")
        }
        bf16_peak = result["matmul_gflops"][str(top["threads"])]["bf16"]
        assert fastest["fraction_of_bf16_matmul"] == pytest.approx(top["gflops"] / bf16_peak, rel=SIG3)
    if len(result["sizes"]) == 1:  # the choice's gain is then one row's ratio (rounding
        # to 3 digits keeps the order of figures, so the largest stays the largest)
        choosable = [r for r in result["modes"] if r["mode"] != "no_mkldnn_fp32"]
        (chosen,) = (r for r in choosable if (r["mode"], r["threads"]) == (result["mode"], result["threads_measured"]))
        best = max(r["ratio"] for r in choosable)
        if chosen["mode"] == "eager_fp32" and chosen["threads"] == result["default_threads"]:
            assert best <= 1.03, "a mode 3 % faster than the baseline was not chosen"
        else:
            assert chosen["ratio"] == best and result["gain"] >= 1.03
            assert result["gain"] == pytest.approx(chosen["ratio"], rel=SIG3)
    flags = {
        "eager_fp32": (False, False),
        "channels_last_fp32": (False, True),
        "bf16": (True, False),
        "bf16_channels_last": (True, True),
    }[result["mode"]]
    threads = 0 if result["threads_measured"] == result["default_threads"] else result["threads_measured"]
    assert result["choice"] == {"bf16": flags[0], "channels_last": flags[1], "threads": threads, "compile": False}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BOWFLOW_CACHE", str(tmp_path))
    monkeypatch.delenv(compute.ENV_OVERRIDE, raising=False)  # conftest pins "default"
    return tmp_path


# A stand-in for a stage command of dvc.lock (distill_seeds and ablate_generation rerun
# those): it records its argv in each JSON it writes and derives its figures from its flags.
FAKE_STAGE = """
import csv, json, sys
from pathlib import Path
argv = sys.argv[1:]
flags, i = {}, 0
while i < len(argv):
    j = i + 1
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    flags[argv[i]] = argv[i + 1:j]
    i = j
one = lambda name: flags[name][0]
def write(path, record):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**record, "argv": argv}))
kind = one("--kind")
if kind == "distill":
    write(one("--metrics"), {"top1": float(one("--base")) + float(one("--slope")) * int(one("--seed"))})
elif kind == "vocab":
    write(one("--out"), {})
    write(one("--metrics"), {"layer": one("--layer"), "size": int(one("--size")),
                             "target_entropy": 1.0, "mean_histogram_perplexity": 9.0})
elif kind == "student":
    write(one("--model"), {})
    write(one("--metrics"), {})
    Path(one("--history")).parent.mkdir(parents=True, exist_ok=True)
    with open(one("--history"), "w", newline="") as f:
        csv.writer(f).writerows([["epoch", "captured"], [1, 0.5], [2, 0.75]])
else:
    write(one("--out"), {"linear_base": 40.0, "knn_all": 30.0, "few_shot": {"1": {"mean": 20.0}}})
"""


def fake_stage(tmp_path: Path, kind: str, flags: str) -> str:
    script = tmp_path / "fake_stage.py"
    script.write_text(FAKE_STAGE)
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} --kind {kind} {flags}"


def write_lock(tmp_path: Path, stages: dict[str, str]) -> Path:
    """A dvc.lock of these stage commands; each is run once, as the pipeline's own run."""
    import subprocess

    from bowflow.scaffold import write_yaml

    for cmd in stages.values():
        subprocess.run(shlex.split(cmd), cwd=tmp_path, check=True)
    lock = tmp_path / "dvc.lock"
    write_yaml({"schema": "2.0", "stages": {name: {"cmd": cmd} for name, cmd in stages.items()}}, lock)
    return lock


def flags_of(argv: list[str]) -> dict[str, str]:
    return {a: argv[i + 1] for i, a in enumerate(argv) if a.startswith("--") and i + 1 < len(argv)}


@pytest.mark.parametrize("method", ["rotnet", "bownet"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_steps_run_under_cpu_bf16_autocast(method, channels_last):
    torch.manual_seed(0)  # inputs and weights must not depend on earlier tests
    images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    context = {
        "normalizer": Normalizer([0.5] * 3, [0.25] * 3),
        "image_size": 8,
        "codes": torch.randint(0, 16, (8, 16)),
        "num_words": 16,
        "parent": {},
    }
    params = (RotNetParams if method == "rotnet" else BoWNetParams)(method=method, width=8)
    model = get_method(method)(params, build_backbone("convnet", 8), get_method(method).inputs(**context))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    steps = {}
    for bf16 in (False, True):  # the same weights, views and batch in both
        model.zero_grad(set_to_none=True)
        with autocast_context(torch.device("cpu"), bf16=bf16):
            loss, stats = model.training_step(images, torch.arange(8), torch.Generator().manual_seed(0))
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        steps[bf16] = loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    (loss32, grad32), (loss16, grad16) = steps[False], steps[True]
    # The bf16 step is the fp32 step at bf16 precision: the loss differs (autocast did
    # run) by under 1 %, the gradient points the same way, every entry finite. Measured on
    # machine A over torch seeds 0-29 (8-bit mantissas in a tiny net): loss within 0.11 %
    # (RotNet) and 0.84 % (BoWNet); gradient cosine at least 0.977 (RotNet) and 0.931
    # (BoWNet), 0.986 at seed 0 for both. CPU classes round bf16 differently (AMX), hence
    # the margins; an unrelated gradient would give a cosine near 0.
    assert loss16 != loss32 and loss16 == pytest.approx(loss32, rel=0.02)
    assert torch.isfinite(grad16).all() and torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.9
    assert all(torch.isfinite(v) for v in stats.values())


@pytest.mark.slow
def test_bench_compute_smoke_saves_the_choice(cache_dir, monkeypatch):
    """bench_compute --save writes the cache; the automatic choice (compute: auto) reads it
    when it is fp32. A bf16 choice (bench_compute measures bf16 on a CPU with native bf16)
    is saved too, but auto never picks bf16: it measures the fp32 modes instead and
    replaces the cache."""
    result = benchmark_result(
        "bench_compute", "--smoke", "--save", env={"BOWFLOW_CACHE": str(cache_dir), compute.ENV_OVERRIDE: None}
    )
    assert {row["mode"] for row in result["modes"]} == {
        "eager_fp32",
        "channels_last_fp32",
        "bf16",
        "bf16_channels_last",
        "no_mkldnn_fp32",
    }
    check_compute_result(result)
    assert result["saved"].startswith(str(cache_dir))
    assert len(result["loadavg_before"]) == 3 and len(result["loadavg_after"]) == 3
    assert compute.load_record()["source"] == "bench_compute --save"
    assert compute.load_choice() == compute._normalise(result["choice"])
    measured = []
    monkeypatch.setattr(
        compute,
        "measure",
        lambda modes, **k: measured.append(modes) or {"seconds": [1.0] * len(modes), "rounds": 1, "elapsed_s": 0.1},
    )
    decision = compute.decide_compute(torch.device("cpu"))
    if not result["choice"]["bf16"]:
        assert decision.source == "cache" and decision.choice == result["choice"]
        assert "bench_compute --save" in decision.reason and not measured
    else:
        assert decision.source == "measured" and not decision.choice["bf16"]
        assert not any(m["bf16"] for m in measured[0]) and compute.load_choice() == decision.choice


@pytest.mark.slow
def test_bench_compute_smoke_rotnet_with_compile_modes_listed(cache_dir):
    result = benchmark_result(
        "bench_compute",
        "--smoke",
        "--method",
        "rotnet",
        "--modes",
        "channels_last_fp32",
        env={"BOWFLOW_CACHE": str(cache_dir), compute.ENV_OVERRIDE: None},
    )
    assert {row["mode"] for row in result["modes"]} == {"eager_fp32", "channels_last_fp32"}
    assert result["method"] == "rotnet" and "saved" not in result
    check_compute_result(result)  # rotnet's step: 4 network inputs per image


@pytest.mark.slow
def test_bench_targets_smoke_methods_agree():
    result = benchmark_result("bench_targets", "--smoke")
    # Agreement, what the benchmark is for: A and B bit-identical, the per-image baseline
    # differing only at near-ties, its mismatch count what its agreement fraction says.
    assert result["agree"] and result["mismatch_max_relative_gap"] < 1e-4
    assert result["code_agreement"]["A_vs_B"] == 1.0
    codes = result["images"] * result["codes_per_image"]
    assert result["baseline_code_mismatches"] == round((1 - result["code_agreement"]["baseline_vs_A"]) * codes)
    if result["baseline_code_mismatches"] == 0:
        assert result["targets_identical"] and result["targets_max_abs_diff"] == 0.0
    # Each ratio is its rate over the baseline's (rates rounded to 0.1, ratios to 0.01).
    for key in ("A", "B", "B_with_assign"):
        assert_quotient(result, f"ratio_{key}", f"{key}_images_per_s", "baseline_images_per_s", (1, 1, 2))
    # B with its one-time assignment is B's epoch plus assign_seconds: n / rate adds up.
    n = result["images"]
    assert n / result["B_with_assign_images_per_s"] - n / result["B_images_per_s"] == pytest.approx(
        result["assign_seconds"], abs=1e-4 + 1e-3 * result["assign_seconds"]
    )


@pytest.mark.slow
def test_bench_vocab_smoke():
    """faiss and sklearn cluster the same features into clusters of the same quality;
    the speed-up and the inertia ratio are what their fields make them."""
    result = benchmark_result("bench_vocab", "--smoke")
    assert_quotient(result, "speedup", "sklearn_seconds", "faiss_seconds", (3, 3, 2))
    assert result["inertia_ratio"] == pytest.approx(result["faiss_inertia"] / result["sklearn_inertia"], abs=5e-6)
    # Same recipe, different random initial centres: at this scale (2000 x 32, K=16, 3
    # iterations) seeds 0-5 gave ratios 0.980-1.024 (seed 0, run here, 1.024 at 1 and 2
    # threads). Wrong words are far outside: the initial random centres alone give ~1.5,
    # one Lloyd iteration 1.06-1.08, half the words (K=8) 1.11-1.14 of sklearn's inertia.
    assert 0.95 <= result["inertia_ratio"] <= 1.05, result


@pytest.mark.slow
def test_bench_pipeline_smoke():
    """After a params edit dvc reruns check_params alone (--smoke's target), stamped
    before dvc exits; the ratio is the no-op repro's median over the import's."""
    result = benchmark_result("bench_pipeline", "--smoke")
    assert result["rerun_stages"] == ["check_params"]
    assert set(result["rerun_seconds"]) == {"check_params", "done"}
    assert 0 < result["rerun_seconds"]["check_params"] <= result["rerun_seconds"]["done"]
    assert_quotient(result, "ratio_noop_vs_import", "noop_repro_seconds", "import_torch_seconds", (3, 3, 2))
    # --smoke never reaches the student: no startup figure rather than a made-up one
    assert result["student_startup_seconds"] is None and result["ratio_startup_vs_import"] is None


@pytest.mark.slow
def test_distill_seeds_reseeds_only_the_seed_and_the_outputs(tmp_path):
    """Each locked command reruns with --seed 3 and its outputs under --out/s3; the table is
    each row's top-1 over seeds with its margin over the vanilla row. The stage names of a
    dvc.lock recorded before stages were per seed (docs/results/), `teacher@v`."""
    common = (
        "--prepared data/prepared --seed 0 --history data/plots/train/{n}.csv "
        "--model data/models/{n}/model.pt --metrics data/metrics/train/{n}.json"
    )
    lock = write_lock(
        tmp_path,
        {
            "teacher@v": fake_stage(tmp_path, "distill", common.format(n="v") + " --base 50 --slope 1"),
            "distill@kd": fake_stage(
                tmp_path,
                "distill",
                common.format(n="kd") + " --base 53 --slope 0.5 "
                "--teacher_model data/models/resnet56/model.pt --method kd --gamma 0.0",
            ),
        },
    )
    out = tmp_path / "seeds"
    result = benchmark_result(
        "distill_seeds",
        "--lock",
        lock,
        "--vanilla",
        "teacher@v",
        "--stages",
        "distill@kd",
        "--seeds",
        "3",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert result["seeds"] == [0, 3]
    rows = {r["row"]: r for r in result["rows"]}
    assert rows["teacher@v"]["top1"] == [50.0, 53.0] and rows["distill@kd"]["top1"] == [53.0, 54.5]
    assert rows["distill@kd"]["margin"] == 2.25 and rows["distill@kd"]["margin_min"] == 1.5
    assert rows["distill@kd"]["margin_max"] == 3.0 and "margin" not in rows["teacher@v"]
    assert json.loads((out / "seeds.json").read_text()) == result
    flags = flags_of(json.loads((out / "s3" / "kd.json").read_text())["argv"])
    assert flags["--seed"] == "3"
    assert flags["--model"] == str(out / "s3" / "models" / "kd" / "model.pt")
    assert flags["--metrics"] == str(out / "s3" / "kd.json")
    assert flags["--history"] == str(out / "s3" / "kd.csv")
    assert flags["--checkpoints"] == str(out / "s3" / "checkpoints")
    unchanged = {
        "--prepared": "data/prepared",
        "--method": "kd",
        "--gamma": "0.0",
        "--teacher_model": "data/models/resnet56/model.pt",
    }
    assert {k: flags[k] for k in unchanged} == unchanged


def per_seed_distill_lock(tmp_path: Path, seeds: list[int]) -> Path:
    """A dvc.lock as the pipeline records it now: teacher_seed<S>@v and distill_seed<S>@kd
    for each seed, with per-seed paths (workflow/pipeline.py)."""
    common = (
        "--prepared data/prepared --seed {s} --history data/plots/seed{s}/train/{n}.csv "
        "--model data/models/seed{s}/{n}/model.pt --metrics data/metrics/seed{s}/train/{n}.json "
        "--compute fp32-channels-last-t1"
    )
    stages = {}
    for s in seeds:
        stages[f"teacher_seed{s}@v"] = fake_stage(
            tmp_path, "distill", common.format(s=s, n="v") + " --base 50 --slope 1"
        )
        stages[f"distill_seed{s}@kd"] = fake_stage(
            tmp_path,
            "distill",
            common.format(s=s, n="kd") + f" --base 53 --slope 0.5 "
            f"--teacher_model data/models/seed{s}/resnet56/model.pt --method kd --gamma 0.0",
        )
    return write_lock(tmp_path, stages)


@pytest.mark.slow
def test_distill_seeds_reads_every_seed_the_pipeline_ran(tmp_path):
    """A per-seed dvc.lock: `teacher@v` / `distill@kd` are every recorded seed's run (read,
    not rerun), --seeds adds others rerun from the lowest seed's command; an exact name
    (`distill_seed1@kd`) is that seed's run alone."""
    lock = per_seed_distill_lock(tmp_path, [0, 1])
    out = tmp_path / "seeds"
    result = benchmark_result(
        "distill_seeds",
        "--lock",
        lock,
        "--vanilla",
        "teacher@v",
        "--stages",
        "distill@kd",
        "--seeds",
        "1",
        "4",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert result["seeds"] == [0, 1, 4]  # seed 1 is the pipeline's: not rerun
    rows = {r["row"]: r for r in result["rows"]}
    assert rows["teacher@v"]["top1"] == [50.0, 51.0, 54.0] and rows["distill@kd"]["top1"] == [53.0, 53.5, 55.0]
    assert rows["distill@kd"]["margin_min"] == 1.0 and rows["distill@kd"]["margin_max"] == 3.0
    assert not (out / "s1").exists() and sorted(p.name for p in (out / "s4").glob("*.json")) == ["kd.json", "v.json"]
    flags = flags_of(json.loads((out / "s4" / "kd.json").read_text())["argv"])
    assert flags["--seed"] == "4" and flags["--model"] == str(out / "s4" / "models" / "kd" / "model.pt")
    assert flags["--teacher_model"] == "data/models/seed0/resnet56/model.pt"  # seed 0's teacher, fixed
    assert flags["--compute"] == "fp32-channels-last-t1"

    exact = benchmark_result(
        "distill_seeds",
        "--lock",
        lock,
        "--vanilla",
        "teacher_seed1@v",
        "--stages",
        "distill_seed1@kd",
        "--out",
        tmp_path / "exact",
        cwd=tmp_path,
    )
    assert exact["seeds"] == [1]
    assert [r["row"] for r in exact["rows"]] == ["teacher_seed1@v", "distill_seed1@kd"]
    assert exact["rows"][1]["top1"] == [53.5]

    missing = run_benchmark(
        "distill_seeds",
        "--lock",
        lock,
        "--vanilla",
        "teacher@v",
        "--stages",
        "distill@crd",
        "--out",
        tmp_path / "x",
        cwd=tmp_path,
        check=False,
    )
    assert missing.returncode != 0 and "no recorded stage ['distill@crd']" in missing.stderr
    (tmp_path / "lopsided").mkdir()
    lopsided = per_seed_distill_lock(tmp_path / "lopsided", [0, 1])
    text = lopsided.read_text().replace("distill_seed1@kd", "distill_seed7@kd")
    lopsided.write_text(text)
    uneven = run_benchmark(
        "distill_seeds",
        "--lock",
        lopsided,
        "--vanilla",
        "teacher@v",
        "--stages",
        "distill@kd",
        "--out",
        tmp_path / "y",
        cwd=tmp_path / "lopsided",
        check=False,
    )
    assert uneven.returncode != 0 and "no recorded distill@kd (seed 1)" in uneven.stderr, uneven.stderr


@pytest.mark.slow
def test_ablate_generation_changes_only_the_named_flags_and_the_outputs(tmp_path):
    lock = write_lock(
        tmp_path,
        {
            "vocab@g2": fake_stage(
                tmp_path,
                "vocab",
                "--teacher data/models/g1/model.pt --out data/models/g2/vocab.pt "
                "--metrics m.json --layer stage2 --size 64",
            ),
            "student@g2": fake_stage(
                tmp_path,
                "student",
                "--vocab data/models/g2/vocab.pt --model data/models/g2/model.pt "
                "--metrics t.json --history h.csv --epochs 60 --lr_decay_at 0.5 0.75 --init scratch",
            ),
            "evaluate_student@g2": fake_stage(
                tmp_path, "evaluate", "--model data/models/g2/model.pt --out e.json --few_shot_shots 1 5"
            ),
        },
    )
    out = tmp_path / "ablate"
    variant = "vocab.size=256,student.lr_decay_at=0.6 0.8"
    result = benchmark_result(
        "ablate_generation", "--lock", lock, "--generation", "g2", "--variant", variant, "--out", out, cwd=tmp_path
    )
    pipeline, row = result["rows"]
    assert (pipeline["variant"], pipeline["words"], row["variant"], row["words"]) == ("pipeline", 64, variant, 256)
    assert row["layer"] == "stage2" and row["epochs"] == 2 and row["captured"] == 0.75 and row["shot_1"] == 20.0
    root = next(p for p in (out / "g2").iterdir() if p.is_dir())
    vocab = json.loads((root / "vocab.json").read_text())["argv"]
    student = json.loads((root / "train.json").read_text())["argv"]
    evaluate = json.loads((root / "eval.json").read_text())["argv"]
    assert vocab[vocab.index("--size") + 1] == "256" and vocab[vocab.index("--layer") + 1] == "stage2"
    assert vocab[vocab.index("--teacher") + 1] == "data/models/g1/model.pt"  # the parent is shared
    assert student[student.index("--lr_decay_at") + 1 : student.index("--lr_decay_at") + 3] == ["0.6", "0.8"]
    assert student[student.index("--vocab") + 1] == vocab[vocab.index("--out") + 1] == str(root / "vocab.pt")
    assert evaluate[evaluate.index("--model") + 1] == student[student.index("--model") + 1]
    assert student[-2:] == ["--checkpoints", str(root / "checkpoints")]
    assert all(
        str(root) in argv[argv.index(f) + 1]
        for argv, f in [(vocab, "--metrics"), (student, "--history"), (evaluate, "--out")]
    )
    bad = run_benchmark(
        "ablate_generation",
        "--lock",
        lock,
        "--generation",
        "g2",
        "--variant",
        "size=256",
        "--out",
        out,
        cwd=tmp_path,
        check=False,
    )
    assert bad.returncode != 0 and "STAGE.FLAG=VALUE" in bad.stderr
    assert result["seed"] is None and (out / "g2" / "ablation.json").is_file()  # a lock without seeds
    # the record names its command and its CPU (the machine class comes from cpu_flags)
    assert result["command"].startswith("python -m benchmarks.ablate_generation --lock ")
    assert f"--variant '{variant}'" in result["command"] and isinstance(result["cpu_flags"], list)
    assert set(result["load_average"]) == {"before", "after"} and result["machine"]


@pytest.mark.slow
def test_ablate_generation_varies_one_seed_of_a_per_seed_lock(tmp_path):
    """dvc.lock with the generation's stages per seed (vocab_seed<S>@g2, ...): the lowest
    recorded seed by default, --seed picks another; outputs under --out/g2/seed<S>/."""
    stages = {}
    for s in (1, 2):
        stages |= {
            f"vocab_seed{s}@g2": fake_stage(
                tmp_path,
                "vocab",
                f"--teacher data/models/seed{s}/g1/model.pt "
                f"--out data/models/seed{s}/g2/vocab.pt "
                f"--metrics data/metrics/seed{s}/vocab/g2.json "
                f"--seed {s} --layer stage2 --size 64",
            ),
            f"student_seed{s}@g2": fake_stage(
                tmp_path,
                "student",
                f"--vocab data/models/seed{s}/g2/vocab.pt "
                f"--model data/models/seed{s}/g2/model.pt "
                f"--metrics data/metrics/seed{s}/train/g2.json "
                f"--history data/plots/seed{s}/train/g2.csv --seed {s} --epochs 60",
            ),
            f"evaluate_student_seed{s}@g2": fake_stage(
                tmp_path,
                "evaluate",
                f"--model data/models/seed{s}/g2/model.pt --out data/metrics/seed{s}/eval/g2.json --seed {s}",
            ),
        }
    lock = write_lock(tmp_path, stages)
    out = tmp_path / "ablate"
    result = benchmark_result(
        "ablate_generation",
        "--lock",
        lock,
        "--generation",
        "g2",
        "--variant",
        "vocab.size=128",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert result["seed"] == 1 and [r["words"] for r in result["rows"]] == [64, 128]
    root = out / "g2" / "seed1" / "vocab.size-128"
    vocab = json.loads((root / "vocab.json").read_text())["argv"]
    assert flags_of(vocab)["--teacher"] == "data/models/seed1/g1/model.pt" and flags_of(vocab)["--seed"] == "1"
    assert (out / "g2" / "seed1" / "ablation.json").is_file()
    second = benchmark_result(
        "ablate_generation",
        "--lock",
        lock,
        "--generation",
        "g2",
        "--seed",
        "2",
        "--variant",
        "vocab.size=128",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert second["seed"] == 2
    student = json.loads((out / "g2" / "seed2" / "vocab.size-128" / "train.json").read_text())["argv"]
    assert flags_of(student)["--seed"] == "2" and flags_of(student)["--vocab"] == str(
        out / "g2" / "seed2" / "vocab.size-128" / "vocab.pt"
    )
    absent = run_benchmark(
        "ablate_generation",
        "--lock",
        lock,
        "--generation",
        "g2",
        "--seed",
        "0",
        "--variant",
        "vocab.size=128",
        "--out",
        out,
        cwd=tmp_path,
        check=False,
    )
    assert absent.returncode != 0 and "vocab_seed0@g2" in absent.stderr and "[1, 2]" in absent.stderr
