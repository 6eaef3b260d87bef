"""The benchmarks run (--smoke) and report what they promise; select_compute reads the cache
that bench_compute --save writes (the rest of the compute choice: tests/test_compute.py).
No timing is asserted anywhere."""
from __future__ import annotations

import pytest
import torch

from bowflow import compute
from bowflow.methods.bownet import BoWNetParams
from bowflow.methods.rotnet import RotNetParams
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.roles.base import get_method
from bowflow.train import autocast_context


def positive(result: dict, *keys: str) -> None:
    for key in keys:
        assert result[key] > 0, key


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BOWFLOW_CACHE", str(tmp_path))
    monkeypatch.delenv(compute.ENV_OVERRIDE, raising=False)     # conftest pins "default"
    return tmp_path


@pytest.mark.parametrize("method", ["rotnet", "bownet"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_steps_run_under_cpu_bf16_autocast(method, channels_last):
    images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    context = {"normalizer": Normalizer([0.5] * 3, [0.25] * 3), "image_size": 8,
               "codes": torch.randint(0, 16, (8, 16)), "num_words": 16, "parent": {}}
    params = (RotNetParams if method == "rotnet" else BoWNetParams)(method=method, width=8)
    model = get_method(method)(params, build_backbone("convnet", 8), get_method(method).inputs(**context))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    with autocast_context(torch.device("cpu"), bf16=True):
        loss, stats = model.training_step(images, torch.arange(8), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bench_compute_smoke_saves_the_choice(cache_dir, capsys):
    from benchmarks.bench_compute import MODES, main

    threads = torch.get_num_threads()
    result = main(["--smoke", "--save"])
    assert torch.get_num_threads() == threads
    assert "RESULT " in capsys.readouterr().out
    assert {row["mode"] for row in result["modes"]} == set(MODES)
    for row in result["modes"]:
        positive(row, "images_per_s", "ratio", "gflops")
    for peak in result["matmul_gflops"].values():
        positive(peak, "fp32", "bf16")
    for fastest in result["fastest"].values():
        positive(fastest, "gflops", "fraction_of_fp32_matmul")
    assert all(v > 0 for v in result["gflop_per_step"].values())
    assert result["saved"].startswith(str(cache_dir))
    assert len(result["loadavg_before"]) == 3 and len(result["loadavg_after"]) == 3
    decision = compute.decide_compute(torch.device("cpu"))
    assert decision.source == "cache" and decision.choice == result["choice"]
    assert "bench_compute --save" in decision.reason


def test_bench_compute_smoke_rotnet_with_compile_modes_listed(cache_dir, capsys):
    from benchmarks.bench_compute import main

    result = main(["--smoke", "--method", "rotnet", "--modes", "channels_last_fp32"])
    assert {row["mode"] for row in result["modes"]} == {"eager_fp32", "channels_last_fp32"}
    assert result["method"] == "rotnet" and "saved" not in result


def test_bench_targets_smoke_methods_agree(capsys):
    from benchmarks.bench_targets import main

    result = main(["--smoke"])
    assert "RESULT " in capsys.readouterr().out
    positive(result, "baseline_images_per_s", "A_images_per_s", "B_images_per_s",
             "B_with_assign_images_per_s", "ratio_A", "ratio_B", "assign_seconds")
    assert result["agree"]
    assert result["code_agreement"]["A_vs_B"] == 1.0


def test_bench_vocab_smoke(capsys):
    from benchmarks.bench_vocab import main

    result = main(["--smoke"])
    assert "RESULT " in capsys.readouterr().out
    positive(result, "sklearn_seconds", "faiss_seconds", "speedup", "sklearn_inertia",
             "faiss_inertia", "inertia_ratio")


def test_bench_pipeline_smoke(capsys):
    from benchmarks.bench_pipeline import main

    result = main(["--smoke"])
    assert "RESULT " in capsys.readouterr().out
    positive(result, "initial_repro_seconds", "import_torch_seconds", "noop_repro_seconds",
             "ratio_noop_vs_import")
    assert result["rerun_stages"] == ["check_params"]
    positive(result["rerun_seconds"], "check_params", "done")


def test_distill_seeds_reseeds_only_the_seed_and_the_outputs(tmp_path):
    from benchmarks.distill_seeds import reseeded_command, spread
    cmd = ("bin/python -m stages.distill --prepared data/prepared --model data/models/kd/model.pt "
           "--metrics data/metrics/train/kd.json --history data/plots/train/kd.csv --seed 0 "
           "--teacher_model data/models/resnet56/model.pt --method kd --gamma 0.0")
    argv, metrics = reseeded_command(cmd, 3, tmp_path)
    flags = dict(zip(argv[3::2], argv[4::2]))
    assert flags["--seed"] == "3"
    assert flags["--model"] == str(tmp_path / "s3" / "models" / "kd" / "model.pt")
    assert flags["--metrics"] == str(metrics) == str(tmp_path / "s3" / "kd.json")
    assert flags["--history"] == str(tmp_path / "s3" / "kd.csv")
    assert flags["--checkpoints"] == str(tmp_path / "s3" / "checkpoints")
    unchanged = {"--prepared": "data/prepared", "--method": "kd", "--gamma": "0.0",
                 "--teacher_model": "data/models/resnet56/model.pt"}
    assert {k: flags[k] for k in unchanged} == unchanged
    rows = {r["row"]: r for r in spread({"v": [50.0, 52.0], "kd": [53.0, 53.5]}, "v")}
    assert rows["kd"]["margin"] == 2.25 and rows["kd"]["margin_min"] == 1.5
    assert rows["kd"]["margin_max"] == 3.0 and "margin" not in rows["v"]


def test_ablate_generation_changes_only_the_named_flags_and_the_outputs(tmp_path):
    from benchmarks.ablate_generation import parse_variant, variant_commands
    locked = {"vocab@g2": {"cmd": "bin/python -m stages.vocab --teacher data/models/g1/model.pt "
                                  "--out data/models/g2/vocab.pt --metrics m.json --layer stage2 --size 64"},
              "student@g2": {"cmd": "bin/python -m stages.student --vocab data/models/g2/vocab.pt "
                                    "--model data/models/g2/model.pt --metrics t.json --history h.csv "
                                    "--epochs 60 --lr_decay_at 0.5 0.75 --init scratch"},
              "evaluate_student@g2": {"cmd": "bin/python -m stages.evaluate --model data/models/g2/model.pt "
                                             "--out e.json --few_shot_shots 1 5"}}
    changes = parse_variant("vocab.size=256,student.lr_decay_at=0.6 0.8")
    vocab, student, evaluate = variant_commands(locked, "g2", changes, tmp_path)
    assert vocab[vocab.index("--size") + 1] == "256" and vocab[vocab.index("--layer") + 1] == "stage2"
    assert vocab[vocab.index("--teacher") + 1] == "data/models/g1/model.pt"      # the parent is shared
    assert student[student.index("--lr_decay_at") + 1:student.index("--lr_decay_at") + 3] == ["0.6", "0.8"]
    assert student[student.index("--vocab") + 1] == vocab[vocab.index("--out") + 1] == str(tmp_path / "vocab.pt")
    assert evaluate[evaluate.index("--model") + 1] == student[student.index("--model") + 1]
    assert student[-2:] == ["--checkpoints", str(tmp_path / "checkpoints")]
    assert all(str(tmp_path) in argv[argv.index(f) + 1]
               for argv, f in [(vocab, "--metrics"), (student, "--history"), (evaluate, "--out")])
    with pytest.raises(SystemExit, match="STAGE.FLAG=VALUE"):
        parse_variant("size=256")
