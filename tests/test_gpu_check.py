"""benchmarks/gpu_check.py's plan and checks, on the CPU (the run itself needs a GPU); run
as a person does, `python -m benchmarks.gpu_check`."""

import json

import pytest
import torch
from benchmark_cli import benchmark_result, run_benchmark


def test_the_plan_adds_the_nccl_case_with_two_gpus():
    one = benchmark_result("gpu_check", "--plan", 1)["cases"]
    assert [c["name"] for c in one] == ["cuda-fp32-channels-last", "cuda-bf16-channels-last"]
    two = benchmark_result("gpu_check", "--plan", 2)["cases"]
    assert two[:2] == one and two[2] == {"name": "cuda-nccl-2", "compute": "fp32-channels-last", "processes": 2}


def write(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_checks_pass_on_a_gpu_run_and_fail_on_a_cpu_one(tmp_path):
    metrics = tmp_path / "data/metrics/seed0"
    good = {"device": "cuda:0", "compute": "fp32-channels-last", "peak_gpu_mb": 80.0, "processes": 2}
    write(metrics / "train/g0.json", good)
    write(metrics / "vocab/g1.json", {"faiss_gpu": True})
    write(metrics / "eval/g0.json", {"linear_base": 1, "knn_all": 1, "few_shot": {}})
    check = ("gpu_check", "--check", tmp_path, "--case", "cuda-nccl-2")
    assert benchmark_result(*check, "--faiss-gpu") == {"failed": [], "checks": 6}
    write(metrics / "train/g0.json", {**good, "device": "cpu", "peak_gpu_mb": 0, "processes": 1})
    result = run_benchmark(*check, check=False)
    assert result.returncode == 1
    failed = json.loads(result.stdout.strip().splitlines()[-1][len("RESULT ") :])["failed"]
    assert failed == [
        "cuda-nccl-2: g0 trained on cuda",
        "cuda-nccl-2: g0 has a GPU memory peak",
        "cuda-nccl-2: g0 ran as 2 processes",
        "cuda-nccl-2: vocab g1 faiss on GPU = False",
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_2(tmp_path):
    result = run_benchmark("gpu_check", "--out", tmp_path / "x.json", check=False)
    assert result.returncode == 2 and "torch sees no CUDA GPU" in result.stderr
    assert not (tmp_path / "x.json").exists()
