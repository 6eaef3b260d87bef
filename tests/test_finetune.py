"""Semi-supervised fine-tuning (bowflow/finetune.py, stages/finetune.py, the `finetune:`
section): the labelled subset, the run's determinism, the params check, the stages it adds
to dvc.yaml and the report's columns. That fine-tuning a pretrained network beats fine-tuning
the untrained control is tests/test_method_learning.py's
`test_fine_tuning_a_pretrained_network_beats_the_untrained_control`; the pipeline run is
tests/test_pipeline_small.py's `test_adding_fine_tuning_reruns_only_its_stages_and_the_report`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from bowflow import report
from bowflow.config import ParamsError, load_yaml, validate_params
from bowflow.finetune import FineTuneRecipe, balanced_subset, fine_tuned_top1
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.paramcheck.dvc_sync import check_pipeline_layout
from workflow.pipeline import render

ROOT = Path(__file__).resolve().parent.parent


def test_the_subset_is_balanced_seeded_and_keeps_every_class():
    labels = torch.tensor([0] * 200 + [1] * 100 + [2] * 7)
    rows = balanced_subset(labels, 0.1, seed=0)
    assert torch.bincount(labels[rows]).tolist() == [20, 10, 1]  # round(0.7) = 1: at least one
    assert torch.equal(rows, balanced_subset(labels, 0.1, seed=0)) and torch.equal(rows, rows.sort().values)
    assert not torch.equal(rows, balanced_subset(labels, 0.1, seed=1))
    assert len(balanced_subset(labels, 1.0, seed=3)) == len(labels)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction must be in"):
            balanced_subset(labels, bad, seed=0)


def tiny_task(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator)
    return images, torch.arange(n) % 4


def test_fine_tuning_is_a_function_of_its_seed_and_trains_the_backbone():
    (train_x, train_y), (test_x, test_y) = tiny_task(80, 0), tiny_task(40, 1)
    normalizer = Normalizer.fit(train_x)
    recipe = FineTuneRecipe(epochs=3, batch_size=16, lr=0.05)

    def run(seed):
        torch.manual_seed(0)
        backbone = build_backbone("convnet", 8)
        before = {k: v.clone() for k, v in backbone.state_dict().items()}
        result = fine_tuned_top1(
            backbone, normalizer, train_x, train_y, test_x, test_y, 4, 0.5, recipe, seed, torch.device("cpu")
        )
        return result, before, backbone.state_dict()

    first, before, after = run(0)
    again, _, after_again = run(0)
    assert first == again and all(torch.equal(after[k], after_again[k]) for k in after)
    assert first["train_images"] == 40 and first["steps"] == 3 * 3 and 0 <= first["top1"] <= 100
    assert any(not torch.equal(before[k], after[k]) for k in before if "weight" in k), "backbone not trained"
    other, _, after_other = run(1)
    assert any(not torch.equal(after[k], after_other[k]) for k in after)


@pytest.fixture(scope="module")
def params():
    return load_yaml(ROOT / "params.yaml")


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"fractions": [0.01, 1.5]}, "finetune.fractions: fractions must be in (0, 1], got [0.01, 1.5]"),
        ({"fractions": [0.0]}, "finetune.fractions: fractions must be in (0, 1]"),
        ({"fractions": [0.01, 0.1], "epochs": [60]}, "finetune.epochs: epochs must give one count per fraction"),
        ({"fractions": []}, "finetune.fractions: fractions must list at least one"),
        ({"fractions": [0.1, 0.1], "epochs": [3, 3]}, "finetune.fractions: fractions lists a fraction more than once"),
        ({"lr": 0}, "finetune.lr: lr must be > 0"),
        ({"epoch": [3]}, "finetune.epoch: unknown key"),
        (None, "finetune: expected a mapping"),
    ],
)
def test_bad_finetune_params_are_named(params, section, expected):
    with pytest.raises(ParamsError) as info:
        validate_params(dict(params, finetune=section))
    assert str(info.value).startswith(expected), str(info.value)


def test_the_section_is_optional_and_its_defaults_are_simclrs(params):
    assert "finetune" not in validate_params(params)
    checked = validate_params(dict(params, finetune={}))["finetune"]
    assert (checked.fractions, checked.epochs, checked.lr) == ([0.01, 0.1], [60, 30], 0.05)


def test_the_section_adds_a_finetune_stage_per_evaluated_run_and_seed(params):
    without, with_it = render([0, 1], params), render([0, 1], dict(params, finetune={}))
    assert "stages.finetune" not in without
    for seed in (0, 1):
        for group in (f"finetune_{kind}_seed{seed}:" for kind in ("pretrain", "student", "teacher", "distill")):
            assert group in with_it
        assert f"--out data/metrics/seed{seed}/finetune/${{key}}.json" in with_it
    assert "--pipeline-layout finetune" in with_it and "--pipeline-layout" not in without
    # check_params stops when params.yaml and dvc.yaml disagree on the section, naming it
    check_pipeline_layout(params, [])
    check_pipeline_layout(dict(params, finetune={}), ["finetune"])
    for given, layout in ((dict(params, finetune={}), []), (params, ["finetune"])):
        with pytest.raises(ParamsError, match=r"^finetune: params\.yaml has.*workflow\.pipeline"):
            check_pipeline_layout(given, layout)


def evaluation(name: str, linear: float) -> dict:
    return {
        "name": name,
        "parent": "",
        "generation": 0,
        "method": "rotnet",
        "method_label": "RotNet",
        "linear_base": linear,
        "knn_all": linear,
        "few_shot": {"1": {"mean": linear, "ci95": 1.0}},
    }


def test_the_report_reads_fine_tuning_beside_the_evaluation(tmp_path):
    for seed, top1 in ((0, (31.0, 55.0)), (1, (33.0, 57.0))):
        folder = tmp_path / f"seed{seed}"
        (folder / "eval").mkdir(parents=True)
        (folder / "finetune").mkdir()
        (folder / "eval/g0.json").write_text(json.dumps(evaluation("g0", 50.0)))
        (folder / "finetune/g0.json").write_text(
            json.dumps({"name": "g0", "finetune": {"0.01": {"top1": top1[0]}, "0.1": {"top1": top1[1]}}})
        )
    per_seed = report.load_seeds(tmp_path)
    table = report.seed_table(per_seed)
    assert "| Fine-tuned 1% | Fine-tuned 10% |" in table and "| 32.0 ± 1.4 | 56.0 ± 1.4 |" in table
    summary = report.summary(per_seed, {})["g0"]
    assert (summary["ft_1pct"], summary["ft_10pct"]) == (32.0, 56.0)
    assert list(summary)[-3:] == ["ft_1pct", "ft_10pct", "n_seeds"]
    plain = copy.deepcopy(per_seed)
    for by_seed in plain.values():
        for record in by_seed.values():
            del record["finetune"]
    assert "Fine-tuned" not in report.seed_table(plain)
