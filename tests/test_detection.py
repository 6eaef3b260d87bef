"""Detection fine-tuning (bowflow/detection.py, stages/prepare_detection.py, stages/detect.py,
the `detection:` section): the detector on every kind of backbone, the COCO evaluator on
hand-made boxes, determinism, the stages, the params check and the report's columns. That a
trained backbone beats the untrained control is tests/test_method_learning.py's
`test_detection_fine_tuning_of_a_pretrained_network_beats_the_untrained_control`; the
pipeline run is tests/test_pipeline_small.py's
`test_adding_detection_reruns_only_its_stages_and_the_report`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bowflow import report
from bowflow.config import ParamsError, load_yaml, validate_params
from bowflow.data.boxes import BoxSet, generate_shapes, read_boxes, write_voc
from bowflow.detection import (
    DetectionRecipe,
    DetectorSpec,
    anchor_sizes,
    build_detector,
    coco_ap,
    fine_tune_detector,
    lr_at,
    set_mode,
)
from bowflow.models import Normalizer, save_model
from bowflow.networks import build_backbone
from bowflow.paramcheck.dvc_sync import check_pipeline_layout
from bowflow.paramcheck.probes import check_detection_source
from workflow.pipeline import render

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
NORMALIZER = Normalizer([0.3, 0.3, 0.3], [0.3, 0.3, 0.3])
# A detector small enough for a test: 8 x 8 RoIs, few proposals and sampled RoIs.
SMALL = {"roi_size": 8, "fpn_channels": 16, "mlp_dim": 32, "proposals": 64, "roi_batch": 32}
QUICK = DetectionRecipe(steps=2, batch_size=4, lr=0.01, warmup_steps=1, precise_bn_steps=1)


@pytest.fixture(scope="module")
def shapes():
    """(train, test) generated BoxSets at 32 px: 16 and 8 images."""
    return generate_shapes(16, 32, seed=0), generate_shapes(8, 32, seed=1)


# Every registered kind with stage maps: a plain convnet, a CIFAR ResNet, a pre-activation
# WRN (its head_norm), a ViT (token stages), a named distillation net.
BACKBONES = [("convnet", 8, 0), ("resnet", 8, 18), ("wrn", 1, 10), ("vit_p2", 32, 2), ("resnet8x4", 0, 0)]


@pytest.mark.parametrize("head", ["c4", "fpn"])
@pytest.mark.parametrize("arch, width, depth", BACKBONES)
def test_the_detector_builds_trains_and_predicts_on_every_kind_of_backbone(arch, width, depth, head, shapes):
    torch.manual_seed(0)
    backbone = build_backbone(arch, width, depth)
    model = build_detector(backbone, NORMALIZER, DetectorSpec(num_classes=4, head=head, **SMALL))
    assert any(p is q for p in model.parameters() for q in backbone.parameters()), "the run's weights are shared"
    train, test = shapes
    images = [torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in train.images[:2]]
    targets = [
        {"boxes": torch.from_numpy(b), "labels": torch.from_numpy(lab) + 1}
        for b, lab in zip(train.boxes[:2], train.labels[:2])
    ]
    losses = set_mode(model, True)(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad), "the whole network trains"
    out = set_mode(model, False)(images)
    assert len(out) == 2 and all(o["boxes"].shape[-1] == 4 for o in out)
    assert all(((o["labels"] >= 1) & (o["labels"] <= 4)).all() for o in out)


def test_anchors_follow_the_reference_in_strides_or_the_given_pixels():
    # C4 at stride 16: detectron2's 32..512 px; at stride 2 on 32 px images: 4..64 px
    assert anchor_sizes(DetectorSpec(4, "c4", test_size=800), [16]) == ((32.0, 64.0, 128.0, 256.0, 512.0),)
    assert anchor_sizes(DetectorSpec(4, "c4", test_size=32), [2]) == ((4.0, 8.0, 16.0, 32.0, 64.0),)
    assert anchor_sizes(DetectorSpec(4, "fpn", test_size=32), [1, 2, 4, 8]) == ((8.0,), (16.0,), (32.0,), (64.0,))
    given = DetectorSpec(4, "fpn", anchor_sizes=(6.0, 12.0))
    assert anchor_sizes(given, [1, 2]) == ((6.0,), (12.0,)) and anchor_sizes(given, [1, 2, 4]) == ((6.0, 12.0),) * 3


def test_the_schedule_is_detectron2s_warmup_and_steps():
    recipe = DetectionRecipe(steps=24000, lr=0.02)
    assert lr_at(recipe, 0) == pytest.approx(0.02 * 0.001)
    assert lr_at(recipe, 50) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert lr_at(recipe, 100) == lr_at(recipe, 17999) == pytest.approx(0.02)
    assert lr_at(recipe, 18000) == pytest.approx(0.002) and lr_at(recipe, 22000) == pytest.approx(0.0002)


def truth() -> BoxSet:
    """Two 32 px images: one with a T and an L, one with an F and a difficult P."""
    boxes = [
        np.array([[2, 2, 12, 12], [15, 15, 30, 30]], np.float32),
        np.array([[0, 0, 10, 10], [20, 5, 30, 15]], np.float32),
    ]
    return BoxSet(
        np.zeros((2, 32, 32, 3), np.uint8),
        boxes,
        [np.array([0, 1]), np.array([2, 3])],
        [np.array([False, False]), np.array([False, True])],
        ["T", "L", "F", "P"],
        ["a", "b"],
    )


def found(boxes, labels, scores) -> dict:
    return {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "labels": np.array(labels, np.int64),
        "scores": np.array(scores, np.float32),
    }


def test_the_coco_evaluator_scores_perfect_predictions_100_and_none_0():
    t = truth()
    perfect = [found(b, lab, [0.9] * len(b)) for b, lab in zip(t.boxes, t.labels)]
    assert coco_ap(t, perfect) == {"ap50": 100.0, "ap75": 100.0, "ap": 100.0}
    assert coco_ap(t, [found([], [], []), found([], [], [])]) == {"ap50": 0.0, "ap75": 0.0, "ap": 0.0}
    # a box shifted to IoU 0.6 counts at .50, not at .75; AP averages the ten thresholds
    shifted = copy.deepcopy(perfect)
    shifted[0]["boxes"][0] = [4.5, 2, 14.5, 12]  # IoU 7.5 * 10 / (2 * 100 - 75) = 0.6
    scores = coco_ap(t, shifted)
    assert scores["ap50"] == 100.0 and scores["ap75"] < 100.0 and scores["ap75"] < scores["ap"] < scores["ap50"]
    with pytest.raises(ValueError, match="1 detection lists for 2 images"):
        coco_ap(t, perfect[:1])


def test_difficult_objects_are_ignored_as_vocs_evaluation_ignores_them():
    """The difficult P is no positive (missing it costs nothing) and a detection of it is no
    false positive (VOC's devkit, detectron2's evaluator); the same P not difficult counts."""
    t = truth()
    without_p = [found(t.boxes[0], t.labels[0], [0.9, 0.9]), found(t.boxes[1][:1], [2], [0.9])]
    with_p = [found(t.boxes[0], t.labels[0], [0.9, 0.9]), found(t.boxes[1], [2, 3], [0.9, 0.9])]
    assert coco_ap(t, without_p)["ap"] == coco_ap(t, with_p)["ap"] == 100.0
    plain = BoxSet(t.images, t.boxes, t.labels, [np.zeros(2, bool)] * 2, t.class_names, t.paths)
    assert coco_ap(plain, without_p)["ap"] == 75.0  # class P: no detection, AP 0 of 4 classes


def test_fine_tuning_is_a_function_of_its_seed_and_trains_the_backbone(shapes):
    train, test = shapes
    spec = DetectorSpec(num_classes=4, **SMALL)

    def run(seed):
        torch.manual_seed(0)
        backbone = build_backbone("convnet", 8)
        before = {k: v.clone() for k, v in backbone.state_dict().items()}
        result = fine_tune_detector(backbone, NORMALIZER, train, test, spec, QUICK, seed, CPU)
        return result, before, backbone.state_dict()

    first, before, after = run(0)
    again, _, after_again = run(0)
    assert first == again and all(torch.equal(after[k], after_again[k]) for k in after)
    assert first["steps"] == 2 and first["train_images"] == 16 and first["test_images"] == 8
    assert all(0 <= first[k] <= 100 for k in ("ap50", "ap75", "ap"))
    assert any(not torch.equal(before[k], after[k]) for k in before if "weight" in k), "backbone not trained"
    _, _, after_other = run(1)
    assert any(not torch.equal(after[k], after_other[k]) for k in after)


@pytest.fixture(scope="module")
def params():
    return load_yaml(ROOT / "params.yaml")


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"source": "coco"}, "detection.source: source must be one of ['shapes', 'voc'], got 'coco'"),
        ({"source": "voc"}, "detection.root: root must name a VOC year folder"),
        ({"source": "voc", "root": "v", "test_split": "trainval"}, "detection.test_split: test_split must differ"),
        ({"image_size": 8}, "detection.image_size: image_size must be >= 12"),
        ({"head": "c5"}, "detection.head: head must be one of ['c4', 'fpn']"),
        ({"steps": 0}, "detection.steps: steps must be > 0"),
        ({"lr": -0.01}, "detection.lr: lr must be > 0"),
        ({"train_sizes": [32, 0]}, "detection.train_sizes: train_sizes must be > 0"),
        ({"anchor_sizes": [-4]}, "detection.anchor_sizes: anchor_sizes must be > 0"),
        ({"step": 3}, "detection.step: unknown key"),
        (None, "detection: expected a mapping"),
    ],
)
def test_bad_detection_params_are_named(params, section, expected):
    with pytest.raises(ParamsError) as info:
        validate_params(dict(params, detection=section))
    assert str(info.value).startswith(expected), str(info.value)


def test_the_section_is_optional_and_its_recipe_is_the_references(params):
    assert "detection" not in validate_params(params)
    checked = validate_params(dict(params, detection={}))["detection"]
    assert (checked.source, checked.head, checked.steps, checked.batch_size, checked.lr) == (
        "shapes",
        "c4",
        24000,
        16,
        0.01,
    )


def voc_params(params, root) -> dict:
    return validate_params(dict(params, detection={"source": "voc", "root": str(root)}))


def test_a_voc_source_without_boxes_is_named_before_any_work(params, tmp_path):
    with pytest.raises(ParamsError, match=r"^detection.root: '.*missing' does not exist: expected a VOC year folder"):
        check_detection_source(voc_params(params, tmp_path / "missing"))
    shapes = generate_shapes(4, 32, seed=0)
    write_voc(shapes, tmp_path / "voc", "trainval")
    write_voc(shapes, tmp_path / "voc", "test")
    check_detection_source(voc_params(params, tmp_path / "voc"))  # a good one passes
    empty = BoxSet(
        shapes.images,
        [np.zeros((0, 4), np.float32)] * 4,
        [np.zeros(0, np.int64)] * 4,
        [np.zeros(0, bool)] * 4,
        shapes.class_names,
        shapes.paths,
    )
    write_voc(empty, tmp_path / "empty", "trainval")
    with pytest.raises(
        ParamsError, match=r"^detection.root: the annotations of split 'trainval' under .* hold no object"
    ):
        check_detection_source(voc_params(params, tmp_path / "empty"))
    write_voc(empty, tmp_path / "voc", "test")
    with pytest.raises(ParamsError, match=r"^detection.test_split: .* hold no object of the training classes"):
        check_detection_source(voc_params(params, tmp_path / "voc"))
    write_voc(shapes, tmp_path / "noann", "trainval")
    for xml in (tmp_path / "noann" / "Annotations").iterdir():
        xml.unlink()
    (tmp_path / "noann" / "Annotations").rmdir()
    with pytest.raises(ParamsError, match=r"^detection.root: '.*Annotations' does not exist"):
        check_detection_source(voc_params(params, tmp_path / "noann"))
    check_detection_source(validate_params(dict(params, detection={})))  # shapes: nothing to probe


def test_the_section_adds_prepare_detection_and_a_detect_stage_per_run_and_seed(params):
    without, with_it = render([0, 1], params), render([0, 1], dict(params, detection={}))
    assert "stages.detect" not in without and "prepare_detection" not in without
    assert "prepare_detection:" in with_it and with_it.count("stages.prepare_detection") == 1
    for seed in (0, 1):
        for kind in ("pretrain", "student", "teacher", "distill"):
            assert f"detect_{kind}_seed{seed}:" in with_it
        assert f"--out data/metrics/seed{seed}/detect/${{key}}.json" in with_it
    assert "--pipeline-layout detection" in with_it and "--pipeline-layout" not in without
    check_pipeline_layout(dict(params, detection={}), ["detection"])
    for given, layout in ((dict(params, detection={}), []), (params, ["detection"])):
        with pytest.raises(ParamsError, match=r"^detection: params\.yaml has.*workflow\.pipeline"):
            check_pipeline_layout(given, layout)


def test_the_stages_prepare_the_source_once_and_score_a_model(tmp_path):
    from stages import detect, prepare_detection

    flags = ["--train_images", "12", "--test_images", "6", "--image_size", "32"]
    prepare_detection.main(["--out", str(tmp_path / "detection"), "--seed", "3", *flags])
    manifest = json.loads((tmp_path / "detection/manifest.json").read_text())
    assert manifest["class_names"] == ["T", "L", "F", "P"] and manifest["counts"]["train"]["images"] == 12
    assert np.array_equal(
        read_boxes(tmp_path / "detection/test.parquet").images, generate_shapes(18, 32, 3).images[12:]
    )
    torch.manual_seed(0)
    backbone = build_backbone("convnet", 8)
    from bowflow.methods.rotnet import RotNet  # any method's params describe the network

    save_model(
        tmp_path / "model.pt",
        backbone,
        NORMALIZER,
        RotNet.Params(method="rotnet", arch="convnet", width=8),
        32,
        {"name": "g0"},
    )
    recipe = [
        "--steps",
        "2",
        "--batch_size",
        "4",
        "--warmup_steps",
        "1",
        "--precise_bn_steps",
        "1",
        "--roi_size",
        "8",
        "--proposals",
        "64",
        "--roi_batch",
        "32",
    ]
    detect.main(
        [
            "--data",
            str(tmp_path / "detection"),
            "--model",
            str(tmp_path / "model.pt"),
            "--out",
            str(tmp_path / "g0.json"),
            "--seed",
            "0",
            "--device",
            "cpu",
            *flags,
            *recipe,
        ]
    )
    record = json.loads((tmp_path / "g0.json").read_text())
    assert record["name"] == "g0" and record["method"] == "rotnet"
    assert {"ap50", "ap75", "ap", "images", "steps", "seconds"} <= set(record["detection"])
    assert record["detection"]["steps"] == 2 and record["detection"]["images"] == 12


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


def test_the_report_reads_detection_beside_the_evaluation(tmp_path):
    for seed, ap in ((0, (60.0, 30.0, 32.0)), (1, (62.0, 32.0, 34.0))):
        folder = tmp_path / f"seed{seed}"
        (folder / "eval").mkdir(parents=True)
        (folder / "detect").mkdir()
        (folder / "eval/g0.json").write_text(json.dumps(evaluation("g0", 50.0)))
        (folder / "detect/g0.json").write_text(
            json.dumps({"name": "g0", "detection": {"ap50": ap[0], "ap75": ap[1], "ap": ap[2], "steps": 3}})
        )
    per_seed = report.load_seeds(tmp_path)
    table = report.seed_table(per_seed)
    assert "| Det AP50 | Det AP75 | Det AP |" in table and "| 61.0 ± 1.4 | 31.0 ± 1.4 | 33.0 ± 1.4 |" in table
    summary = report.summary(per_seed, {})["g0"]
    assert (summary["det_ap50"], summary["det_ap75"], summary["det_ap"]) == (61.0, 31.0, 33.0)
    plain = copy.deepcopy(per_seed)
    for by_seed in plain.values():
        for record in by_seed.values():
            del record["detection"]
    assert "Det AP" not in report.seed_table(plain)
