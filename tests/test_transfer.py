"""Linear transfer (bowflow/transfer.py, bowflow/data/transfer.py, stages/prepare_transfer.py,
stages/transfer.py, the `transfer:` section): the AP against its reference formula, the VOC07
SVM protocol on a separable toy set and its determinism, the stages on a generated
multi-label source and on a single-label one, the params check, the stages it adds to
dvc.yaml and the report's columns. That a trained backbone transfers better than the
untrained control is tests/test_method_learning.py's
`test_linear_transfer_of_a_pretrained_network_beats_the_untrained_control`; the pipeline run
is tests/test_pipeline_small.py's `test_adding_transfer_reruns_only_its_stages_and_the_report`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bowflow import report
from bowflow.config import ParamsError, check_environment, load_yaml, validate_params
from bowflow.data.boxes import generate_shapes, write_voc
from bowflow.models import Normalizer, save_model
from bowflow.networks import build_backbone
from bowflow.paramcheck.dvc_sync import check_pipeline_layout
from bowflow.roles.base import TrainParams
from bowflow.transfer import APPENDED_COSTS, SvmRecipe, average_precision, l2_normalise, voc07_svm_map
from stages import prepare_transfer, transfer
from workflow.pipeline import render

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- average precision


def reference_ap(scores: list[float], positive: list[bool]) -> float:
    """The formula, written out: rank by score; at each rank k where a positive is found,
    recall rises by 1 / P; add that rise times the highest precision at rank k or below it
    (the interpolated precision). The VOC devkit from 2010 on, and the benchmark's
    svm_helper.calculate_ap."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits = [positive[i] for i in order]
    total = sum(hits)
    precision = [sum(hits[: k + 1]) / (k + 1) for k in range(len(hits))]
    return sum(max(precision[k:]) / total for k in range(len(hits)) if hits[k])


def test_average_precision_is_the_interpolated_area_of_the_reference_formula():
    # positives at ranks 1 and 3: precision 1 and 2/3, each half the recall
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True])) == pytest.approx(5 / 6)
    # interpolation: rank 4's precision (3/4) lifts ranks 2 and 3 (1/2, 2/3); without it 0.639
    scores, positive = np.array([4.0, 3.0, 2.0, 1.0]), np.array([False, True, True, True])
    assert average_precision(scores, positive) == pytest.approx(3 / 4)
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        s, p = rng.normal(size=n), rng.random(n) < 0.4
        p[int(rng.integers(n))] = True
        assert average_precision(s, p) == pytest.approx(reference_ap(s.tolist(), p.tolist()), abs=1e-12)
    assert average_precision(np.arange(5.0), np.array([0, 0, 0, 1, 1], bool)) == 1.0
    with pytest.raises(ValueError, match="at least one positive"):
        average_precision(np.zeros(3), np.zeros(3, bool))


def test_it_is_not_the_eleven_point_average():
    """VOC07's devkit averaged the interpolated precision at 11 recalls; the benchmark's AP
    (and this one) is the area under the whole interpolated curve."""
    scores, positive = np.array([3.0, 2.0, 1.0]), np.array([False, True, False])
    eleven = np.mean([0.5 if r <= 1.0 else 0.0 for r in np.linspace(0, 1, 11)])
    assert average_precision(scores, positive) == pytest.approx(0.5) and eleven == pytest.approx(0.5)
    scores, positive = np.array([3.0, 2.0, 1.0]), np.array([True, False, True])
    eleven = np.mean([1.0 if r <= 0.5 else 2 / 3 for r in np.linspace(0, 1, 11)])
    assert average_precision(scores, positive) == pytest.approx(5 / 6) != pytest.approx(eleven)


def test_features_are_divided_by_their_norm_plus_a_small_constant():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out = l2_normalise(x)
    assert out.dtype == np.float64 and np.allclose(out[0], [3 / (5 + 1e-5), 4 / (5 + 1e-5)]) and not out[1].any()


# ---------------------------------------------------------------- the SVM protocol


def toy_multi_label(n: int, seed: int, classes: int = 3, dim: int = 16):
    """Features [n, dim] where class c's positives have +8 on feature c (separable), and
    targets [n, C] in 1 / 0 / -1 (a few 'difficult only' zeros, which must not count)."""
    rng = np.random.default_rng(seed)
    targets = np.where(rng.random((n, classes)) < 0.4, 1, -1).astype(np.int8)
    targets[:classes, :] = np.eye(classes, dtype=np.int8) * 2 - 1  # every class has positives
    x = rng.normal(size=(n, dim))
    x[:, :classes] += 8.0 * (targets == 1)
    targets[rng.random((n, classes)) < 0.05] = 0
    return x, targets


def test_the_svm_protocol_separates_a_separable_set_and_is_deterministic():
    (train_x, train_t), (test_x, test_t) = toy_multi_label(240, 0), toy_multi_label(120, 1)
    names = ["a", "b", "c"]
    first = voc07_svm_map(train_x, train_t, test_x, test_t, names, seed=0)
    assert first["map"] >= 99.0 and set(first["per_class"]) == set(names), first
    recipe = SvmRecipe()
    assert all(c in recipe.all_costs() for c in first["costs"].values())
    assert recipe.all_costs()[-16:] == list(APPENDED_COSTS) and APPENDED_COSTS[0] == 0.5**4
    assert voc07_svm_map(train_x, train_t, test_x, test_t, names, seed=0) == first
    # noise features only: chance, far below
    shuffled = voc07_svm_map(np.random.default_rng(2).normal(size=train_x.shape), train_t, test_x, test_t, names)
    assert shuffled["map"] < 80.0, shuffled


def test_difficult_only_images_are_left_out_of_the_test_ap():
    (train_x, train_t), (test_x, test_t) = toy_multi_label(240, 0), toy_multi_label(120, 1)
    # an image marked 'difficult only' for class a whose features say 'a': left out, it cannot
    # count as a false positive; scored as a negative it would lower a's AP
    test_x, test_t = test_x.copy(), test_t.copy()
    negatives = np.flatnonzero(test_t[:, 0] == -1)[:20]
    test_x[negatives, 0] += 8.0
    test_t[negatives, 0] = 0
    kept = voc07_svm_map(train_x, train_t, test_x, test_t, ["a", "b", "c"], seed=0)
    test_t[negatives, 0] = -1
    counted = voc07_svm_map(train_x, train_t, test_x, test_t, ["a", "b", "c"], seed=0)
    assert kept["per_class"]["a"] > counted["per_class"]["a"] + 5, (kept, counted)


# ---------------------------------------------------------------- the stages


def write_model(path: Path, width: int = 8) -> None:
    torch.manual_seed(0)
    params = TrainParams(method="rotnet", arch="convnet", width=width)
    save_model(
        path,
        build_backbone("convnet", width),
        Normalizer([0.3] * 3, [0.3] * 3),
        params,
        16,
        extra={"name": "g0", "parent": "", "generation": 0, "seed": 0, "method_label": "RotNet"},
    )


def test_the_stages_prepare_each_source_once_and_score_a_model_on_them(tmp_path):
    shapes, digits = tmp_path / "transfer/shapes", tmp_path / "transfer/digits"
    prepare_transfer.main(
        [
            "--name",
            "shapes",
            "--out",
            str(shapes),
            "--seed",
            "0",
            "--source",
            "shapes",
            "--image_size",
            "16",
            "--n_train",
            "120",
            "--n_test",
            "80",
        ]
    )
    prepare_transfer.main(
        ["--name", "digits", "--out", str(digits), "--seed", "0", "--source", "digits", "--image_size", "8"]
    )
    shapes_manifest = json.loads((shapes / "manifest.json").read_text())
    assert shapes_manifest["task"] == "multi_label" and shapes_manifest["totals"] == {"train": 120, "test": 80}
    assert sorted(p.name for p in shapes.iterdir()) == ["manifest.json", "test.boxes.parquet", "train.boxes.parquet"]
    digits_manifest = json.loads((digits / "manifest.json").read_text())
    assert digits_manifest["source"]["task"] == "single_label" and digits_manifest["novel_classes"] == []
    model, out = tmp_path / "model.pt", tmp_path / "seed0/transfer/g0.json"
    write_model(model)
    flags = [
        "--data",
        str(shapes),
        str(digits),
        "--model",
        str(model),
        "--out",
        str(out),
        "--seed",
        "0",
        "--device",
        "cpu",
        "--linear_epochs",
        "5",
        "--svm_costs",
        "0.1",
        "1.0",
        "--sources.shapes.source",
        "shapes",
        "--sources.digits.source",
        "digits",
    ]
    transfer.main(flags)
    record = json.loads(out.read_text())
    assert record["name"] == "g0" and set(record["transfer"]) == {"shapes", "digits"}
    shape, digit = record["transfer"]["shapes"], record["transfer"]["digits"]
    assert (shape["metric"], shape["train_images"], shape["test_images"], shape["classes"]) == ("map", 120, 80, 4)
    assert set(shape["per_class"]) == {"T", "L", "F", "P"} and 0 < shape["value"] <= 100
    assert digit["metric"] == "top1" and digit["classes"] == 10 and 0 <= digit["value"] <= 100
    assert digit["train_images"] + digit["test_images"] == 1797 and digit["seconds"] >= 0
    again = tmp_path / "again.json"
    transfer.main([*flags[:6], str(again), *flags[7:]])
    values = {s: (r["value"], r.get("per_class")) for s, r in record["transfer"].items()}
    assert {s: (r["value"], r.get("per_class")) for s, r in json.loads(again.read_text())["transfer"].items()} == values


def test_a_voc_root_is_read_with_its_difficult_flags(tmp_path):
    train, test = generate_shapes(40, 16, seed=0), generate_shapes(30, 16, seed=1)
    test.difficult[0][:] = True  # one image whose objects are all difficult
    root = tmp_path / "VOC2007"
    write_voc(train, root, "trainval")
    write_voc(test, root, "test")
    out = tmp_path / "transfer/voc"
    prepare_transfer.main(
        [
            "--name",
            "voc",
            "--out",
            str(out),
            "--seed",
            "0",
            "--source",
            "voc",
            "--root",
            str(root),
            "--image_size",
            "16",
        ]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"] == {"train": 40, "test": 30} and sum(
        manifest["counts"]["test"]["difficult_only"].values()
    )


def test_bad_sources_stop_the_prepare_stage_naming_the_key(tmp_path):
    with pytest.raises(SystemExit, match=r"transfer\.sources\.v: .*not found"):
        prepare_transfer.main(
            [
                "--name",
                "v",
                "--out",
                str(tmp_path / "v"),
                "--seed",
                "0",
                "--source",
                "voc",
                "--root",
                str(tmp_path / "missing"),
                "--image_size",
                "16",
            ]
        )
    with pytest.raises(SystemExit, match=r"transfer\.sources\.f: .*transfer\.sources\.f\.root"):
        prepare_transfer.main(
            [
                "--name",
                "f",
                "--out",
                str(tmp_path / "f"),
                "--seed",
                "0",
                "--source",
                "imagefolder",
                "--root",
                str(tmp_path / "missing"),
                "--image_size",
                "16",
            ]
        )
    assert not (tmp_path / "v").exists() and not (tmp_path / "f").exists()


# ---------------------------------------------------------------- params, dvc.yaml


@pytest.fixture(scope="module")
def params():
    return load_yaml(ROOT / "params.yaml")


SHAPES = {"sources": {"shapes": {"source": "shapes"}}}


@pytest.mark.parametrize(
    "section, expected",
    [
        (
            {"sources": {"v": {"source": "voc", "root": "no/such/VOC2007"}}},
            "transfer.sources.v.root: 'no/such/VOC2007' does not exist",
        ),
        (
            {"sources": {"v": {"source": "voc", "root": str(ROOT / "bowflow")}}},
            f"transfer.sources.v.root: '{ROOT / 'bowflow'}' is not a VOC year folder: it has no Annotations",
        ),
        (
            {"sources": {"f": {"source": "imagefolder", "root": "no/such/folder"}}},
            "transfer.sources.f.root: 'no/such/folder' does not exist",
        ),
        (
            {"sources": {"c": {"source": "cifar100", "root": "no/such/cifar"}}},
            "transfer.sources.c.root: 'no/such/cifar' does not exist",
        ),
        ({"sources": {"x": {"source": "places205"}}}, "transfer.sources.x.source: source must be one of"),
        ({"sources": {"x": {"root": "data"}}}, "transfer.sources.x.source: source must be one of"),
        (
            {"sources": {"x": {"source": "shapes", "image_size": 10}}},
            "transfer.sources.x.image_size: image_size must be >= 12 pixels",
        ),
        (
            {"sources": {"x": {"source": "digits", "image_size": 0}}},
            "transfer.sources.x.image_size: image_size must be >= 8",
        ),
        ({"sources": {"x": {"source": "voc"}}}, "transfer.sources.x.root: root must name"),
        (
            {"sources": {"x": {"source": "shapes", "imag_size": 16}}},
            "transfer.sources.x.imag_size: unknown key (did you mean 'image_size'?)",
        ),
        ({"sources": {"a b": {"source": "shapes"}}}, "transfer.sources.a b: a source name must"),
        ({"sources": {}}, "transfer.sources: sources must name at least one source"),
        ({"sources": {"x": "shapes"}}, "transfer.sources.x: expected a mapping"),
        (dict(SHAPES, svm_costs=[]), "transfer.svm_costs: svm_costs must list at least one"),
        (dict(SHAPES, svm_costs=[0.1, -1.0]), "transfer.svm_costs: svm_costs must be > 0"),
        (dict(SHAPES, svm_folds=1), "transfer.svm_folds: svm_folds must be >= 2"),
        (dict(SHAPES, layer="pool5"), "transfer.layer: layer must be 'last' or 'stageN'"),
        (dict(SHAPES, layer="stage9"), "transfer.layer: 'stage9' is not a stage of 'g0'"),
        (None, "transfer: expected a mapping"),
    ],
)
def test_bad_transfer_params_are_named(params, section, expected):
    """As check_params checks them: the file (validate_params), then the disk (check_environment)."""
    given = dict(params, transfer=section)
    with pytest.raises(ParamsError) as info:
        check_environment(validate_params(given), given)
    assert str(info.value).startswith(expected), str(info.value)


def test_the_section_is_optional_and_its_svm_defaults_are_the_benchmarks(params):
    assert "transfer" not in validate_params(params)
    checked = validate_params(dict(params, transfer=SHAPES))["transfer"]
    assert checked.sources["shapes"].source == "shapes"
    assert (checked.svm_costs, checked.svm_folds, checked.svm_positive_weight, checked.svm_max_iter) == (
        [0.05, 0.1, 0.3, 0.5, 1.0, 3.0, 5.0],
        3,
        2.0,
        2000,
    )


def test_the_section_adds_a_prepare_stage_per_source_and_a_transfer_stage_per_run_and_seed(params):
    two = {"sources": {"shapes": {"source": "shapes"}, "digits": {"source": "digits"}}}
    without, with_it = render([0, 1], params), render([0, 1], dict(params, transfer=two))
    assert "stages.transfer" not in without and "prepare_transfer" not in without
    assert with_it.count("prepare_transfer:") == 1 and "--out data/transfer/${key}" in with_it
    for seed in (0, 1):
        for kind in ("pretrain", "student", "teacher", "distill"):
            assert f"transfer_{kind}_seed{seed}:" in with_it
        assert f"--out data/metrics/seed{seed}/transfer/${{key}}.json" in with_it
    assert "--data data/transfer/shapes data/transfer/digits" in with_it
    assert "--pipeline-layout transfer transfer.sources.shapes transfer.sources.digits" in with_it
    # check_params stops when params.yaml and dvc.yaml disagree on the section or its sources
    layout = ["transfer", "transfer.sources.shapes", "transfer.sources.digits"]
    check_pipeline_layout(dict(params, transfer=two), layout)
    for given, written in ((dict(params, transfer=two), []), (params, layout)):
        with pytest.raises(ParamsError, match=r"^transfer: params\.yaml has.*workflow\.pipeline"):
            check_pipeline_layout(given, written)
    with pytest.raises(ParamsError, match=r"^transfer\.sources: dvc\.yaml was written for other transfer sources"):
        check_pipeline_layout(dict(params, transfer=SHAPES), layout)


# ---------------------------------------------------------------- the report


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


def test_the_report_reads_transfer_beside_the_evaluation(tmp_path):
    for seed, (top1, map_) in ((0, (41.0, 70.0)), (1, (43.0, 74.0))):
        folder = tmp_path / f"seed{seed}"
        (folder / "eval").mkdir(parents=True)
        (folder / "transfer").mkdir()
        (folder / "eval/g0.json").write_text(json.dumps(evaluation("g0", 50.0)))
        (folder / "transfer/g0.json").write_text(
            json.dumps(
                {
                    "name": "g0",
                    "transfer": {"svhn": {"metric": "top1", "value": top1}, "voc07": {"metric": "map", "value": map_}},
                }
            )
        )
    per_seed = report.load_seeds(tmp_path)
    table = report.seed_table(per_seed)
    assert "| Transfer svhn top-1 | Transfer voc07 mAP |" in table and "| 42.0 ± 1.4 | 72.0 ± 2.8 |" in table
    summary = report.summary(per_seed, {})["g0"]
    assert (summary["tr_svhn_top1"], summary["tr_voc07_map"]) == (42.0, 72.0)
    plain = copy.deepcopy(per_seed)
    for by_seed in plain.values():
        for record in by_seed.values():
            del record["transfer"]
    assert "Transfer" not in report.seed_table(plain)


def test_transfer_columns_enter_the_paired_comparisons(tmp_path):
    """A generation against its parent, paired by seed, on each transfer source as on every
    accuracy column."""
    for seed in (0, 1):
        folder = tmp_path / f"seed{seed}"
        (folder / "eval").mkdir(parents=True)
        (folder / "transfer").mkdir()
        for name, parent, value in (("g0", "", 60.0), ("g1", "g0", 65.0 + seed)):
            record = dict(evaluation(name, 50.0), parent=parent, generation=int(bool(parent)))
            (folder / f"eval/{name}.json").write_text(json.dumps(record))
            (folder / f"transfer/{name}.json").write_text(
                json.dumps({"name": name, "transfer": {"voc07": {"metric": "map", "value": value}}})
            )
    compared = {
        (c["run"], c["partner"], c["metric"]): c for c in report.paired_comparisons(report.load_seeds(tmp_path))
    }
    row = compared["g1", "g0", "transfer_voc07_map"]
    assert (row["mean"], row["verdict"], row["n"]) == (5.5, "above at every seed", 2)


def test_a_voc_root_needs_its_split_lists_and_every_part_of_a_joined_root_is_checked(params, tmp_path):
    """check_params reads the folders, not the images: a root without the test split's list,
    and the second part of a VOC07+12 style root ('+'), each named before any stage."""
    root = tmp_path / "VOC2007"
    write_voc(generate_shapes(8, 16, seed=0), root, "trainval")

    def check(voc_root: str) -> None:
        given = dict(params, transfer={"sources": {"voc": {"source": "voc", "root": voc_root}}})
        check_environment(validate_params(given), given)

    with pytest.raises(ParamsError, match=r"^transfer\.sources\.voc\.root: .* it has no ImageSets/Main/test\.txt"):
        check(str(root))
    write_voc(generate_shapes(8, 16, seed=1), root, "test")
    check(str(root))
    with pytest.raises(ParamsError, match=rf"^transfer\.sources\.voc\.root: '{tmp_path / 'VOC2012'}' does not exist"):
        check(f"{root}+{tmp_path / 'VOC2012'}")
