"""A run asking for GPUs (resources.KIND.gpus) on a machine without them: the training stage
stops before any work, check_params warns, and device: cpu with gpus > 0 is an error."""

import subprocess
import sys

import pytest
import torch

from bowflow import config
from bowflow.config import ParamsError, validate_params
from bowflow.runs import gpu_request
from bowflow.scaffold import tiny_params, write_yaml

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def test_asking_for_no_gpu_is_always_fine():
    assert gpu_request("0") == 0


@no_gpu
def test_asking_for_a_gpu_here_is_refused_with_the_reason():
    with pytest.raises(Exception, match=r"1 GPU\(s\) asked for .* torch sees 0 .* gpus: 0"):
        gpu_request("1")


@no_gpu
def test_a_training_stage_stops_before_reading_any_data(tmp_path):
    """The prepared path does not exist: the stage must stop on --gpus first (argparse, exit 2)."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.pretrain",
            "--gpus",
            "1",
            "--prepared",
            str(tmp_path / "missing"),
            "--model",
            str(tmp_path / "m.pt"),
            "--metrics",
            str(tmp_path / "m.json"),
            "--history",
            str(tmp_path / "h.csv"),
            "--seed",
            "0",
            "--method",
            "rotnet",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "argument --gpus: 1 GPU(s) asked for" in run.stderr and "missing" not in run.stderr


def with_gpus(device: str, gpus: int) -> dict:
    params = tiny_params(every_method=False)
    params["device"] = device
    params["resources"]["pretrain"].update(gpus=gpus, processes=gpus)
    return params


def test_device_cpu_with_gpus_is_an_error_naming_the_key():
    with pytest.raises(ParamsError, match=r"resources\.pretrain\.gpus: 2 GPU\(s\) asked for, but device: cpu"):
        validate_params(with_gpus("cpu", 2))
    validate_params(with_gpus("auto", 2))  # auto: fine, the GPUs may be elsewhere


@no_gpu
def test_check_params_warns_and_passes(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    write_yaml(with_gpus("auto", 1), path)
    assert config.main([str(path), "--manifest", str(tmp_path / "none.json")]) == 0
    err = capsys.readouterr().err
    assert "warning: resources.pretrain.gpus = 1, but torch sees 0 GPU(s)" in err
    assert "resources.student" not in err  # only the kind that asks
