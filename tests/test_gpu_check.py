"""benchmarks/gpu_check.py's plan and checks, on the CPU (the script itself needs a GPU)."""
import json

import pytest
import torch

from benchmarks import gpu_check
from bowflow.config import validate_params


def test_two_gpus_add_the_nccl_case():
    assert [c["name"] for c in gpu_check.cases(1)] == ["cuda-fp32-channels-last", "cuda-bf16-channels-last"]
    assert gpu_check.cases(2)[-1] == {"name": "cuda-nccl-2", "compute": "fp32-channels-last", "processes": 2}


@pytest.mark.parametrize("gpus", [1, 2])
def test_every_case_is_valid_params(gpus):
    for case in gpu_check.cases(gpus):
        checked = validate_params(gpu_check.case_params(case))
        assert checked["resources"]["pretrain"].gpus == (case["processes"] if case["processes"] > 1 else 0)


def write(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_checks_pass_on_a_gpu_run_and_fail_on_a_cpu_one(tmp_path):
    case = gpu_check.cases(2)[-1]
    metrics = tmp_path / "data/metrics/seed0"
    good = {"device": "cuda:0", "compute": "fp32-channels-last", "peak_gpu_mb": 80.0, "processes": 2}
    write(metrics / "train/g0.json", good)
    write(metrics / "vocab/g1.json", {"faiss_gpu": True})
    write(metrics / "eval/g0.json", {"linear_base": 1, "knn_all": 1, "few_shot": {}})
    assert all(ok for _, ok, _ in gpu_check.check_case(tmp_path, case, faiss_gpu=True))
    write(metrics / "train/g0.json", {**good, "device": "cpu", "peak_gpu_mb": 0, "processes": 1})
    failed = [name for name, ok, _ in gpu_check.check_case(tmp_path, case, faiss_gpu=False) if not ok]
    assert failed == ["cuda-nccl-2: g0 trained on cuda", "cuda-nccl-2: g0 has a GPU memory peak",
                      "cuda-nccl-2: g0 ran as 2 processes", "cuda-nccl-2: vocab g1 faiss on GPU = False"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_2(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "x.json")]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
