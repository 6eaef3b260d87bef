"""Stage flags: Snakemake's rendering equals DVC's, and stages parse them back losslessly."""

import shlex
from dataclasses import asdict
from pathlib import Path

import pytest
from dvc.parsing.interpolate import to_str

from bowflow.cli import parse_section, render_args
from bowflow.runs import parse_method_section
from bowflow.sections import DataParams, EvalParams, load_yaml

ROOT = Path(__file__).resolve().parent.parent
DVC_PARSING = {"bool": "boolean_optional", "list": "nargs"}


def sections():
    params = load_yaml(ROOT / "params.yaml")
    yield params["data"]
    yield params["pretrain"]["g0"]
    yield params["evaluate"]
    for generation in params["generations"].values():
        yield generation["vocab"]
        yield generation["student"]
    yield {"root": "my photos/", "flag": True, "off": False, "names": ["a b", "c"], "x": 1e-05}


@pytest.mark.parametrize("section", list(sections()))
def test_render_matches_dvc(section):
    assert render_args(section) == to_str(section, config=DVC_PARSING)


def test_round_trip_through_argparse():
    params = load_yaml(ROOT / "params.yaml")
    data, _ = parse_section(DataParams, shlex.split(render_args(params["data"])))
    assert asdict(data) == params["data"]
    evaluate, _ = parse_section(EvalParams, shlex.split(render_args(params["evaluate"])))
    assert asdict(evaluate) == params["evaluate"]
    student_flags = shlex.split(render_args(params["generations"]["g1"]["student"]))
    student, _ = parse_method_section(student_flags, "", lambda parser: None)
    # params.yaml's runs leave arch_params out: it parses back as its default, {}
    assert asdict(student) == {**params["generations"]["g1"]["student"], "arch_params": {}}


def test_bad_value_is_a_clean_error(capsys):
    with pytest.raises(SystemExit):
        parse_section(EvalParams, ["--knn_k", "0"])
    assert "knn_k must be > 0" in capsys.readouterr().err
