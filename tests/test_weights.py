"""Pretrained weights as a run (`method: import`, bowflow/weights.py, stages/import_weights.py):
our own model.pt and a torchvision state_dict load, are evaluated, a parent and a teacher; a
wrong file is an error naming the key and the file at check_params; dvc.yaml tracks the file."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from bowflow.config import ParamsError, validate_params
from bowflow.frozen_teacher import load_teacher
from bowflow.models import Normalizer, load_model, pooled_features, save_model
from bowflow.networks import build_backbone
from bowflow.roles.base import TrainParams
from bowflow.scaffold import core_params
from bowflow.weights import ImportParams, pipeline_layout, read_import
from stages import evaluate, import_weights, prepare
from workflow.pipeline import render

IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare.main(["--out", str(out), "--seed", "0", "--source", "digits", "--image_size", str(IMAGE_SIZE)])
    return out


def own_model(path, width: int = 8):
    """A freshly built tiny convnet written as the pipeline writes a pretrain run's model.pt."""
    torch.manual_seed(0)
    backbone = build_backbone("convnet", width)
    params = TrainParams(method="rotnet", arch="convnet", width=width)
    save_model(
        path,
        backbone,
        Normalizer([0.1, 0.2, 0.3], [0.5, 0.6, 0.7]),
        params,
        IMAGE_SIZE,
        extra={"name": "g0", "parent": "", "generation": 0, "seed": 0, "method_label": "RotNet"},
    )
    return backbone


def import_run(prepared, tmp_path, section: str, name: str, *flags: str):
    model, metrics = tmp_path / name / "model.pt", tmp_path / f"{name}.json"
    import_weights.main(
        [
            "--section",
            section,
            "--prepared",
            str(prepared),
            "--model",
            str(model),
            "--metrics",
            str(metrics),
            "--seed",
            "0",
            "--device",
            "cpu",
            "--method",
            "import",
            *flags,
        ]
    )
    return model, json.loads(metrics.read_text())


def evaluation(prepared, model, out):
    evaluate.main(
        [
            "--prepared",
            str(prepared),
            "--model",
            str(model),
            "--out",
            str(out),
            "--seed",
            "0",
            "--device",
            "cpu",
            "--linear_epochs",
            "3",
            "--few_shot_shots",
            "1",
            "--few_shot_episodes",
            "20",
        ]
    )
    return json.loads(out.read_text())


def test_our_model_file_imports_with_the_same_features_and_evaluation(prepared, tmp_path):
    original = tmp_path / "g0" / "model.pt"
    own_model(original)
    model, metrics = import_run(prepared, tmp_path, "pretrain", "mine", "--weights", str(original))
    assert metrics["arch"] == "convnet" and metrics["width"] == 8 and metrics["weights_format"] == "bowflow"
    (b1, n1, _), (b2, n2, record) = load_model(original), load_model(model)
    assert (n2.mean, n2.std) == (n1.mean, n1.std) and record["method"] == "import"
    images = prepare_images(prepared)
    assert torch.equal(
        pooled_features(b1, n1, images, "last", 64, torch.device("cpu")),
        pooled_features(b2, n2, images, "last", 64, torch.device("cpu")),
    )
    first, second = (
        evaluation(prepared, original, tmp_path / "a.json"),
        evaluation(prepared, model, tmp_path / "b.json"),
    )
    for key in ("linear_base", "knn_all", "few_shot", "feature_dim"):
        assert first[key] == second[key], key
    assert second["method"] == "import" and second["name"] == "mine"


def prepare_images(prepared):
    from bowflow.data.prepared import load_labelled_split

    return load_labelled_split(prepared, "test")[0][:96]


def test_a_torchvision_state_dict_is_a_teacher(prepared, tmp_path):
    """torchvision's resnet18 (no download: weights=None) with a 10-class fc, saved as its
    state_dict, imports as a teachers: run on timm/resnet18: the same features and logits."""
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    weights = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), weights)
    model, metrics = import_run(
        prepared,
        tmp_path,
        "teachers",
        "tv",
        "--weights",
        str(weights),
        "--format",
        "torchvision",
        "--arch",
        "timm/resnet18",
    )
    assert 0 <= metrics["top1"] <= 100 and metrics["weights_format"] == "torchvision"
    teacher = load_teacher(model)
    assert teacher.normalizer.mean == [0.485, 0.456, 0.406]  # ImageNet's, as torchvision's weights expect
    x = torch.rand(4, 3, 32, 32)
    outputs = teacher(x)
    with torch.no_grad():
        expected = tv(teacher.normalizer.normalize(x))
    torch.testing.assert_close(outputs.logits, expected, rtol=1e-4, atol=1e-5)
    assert [m.shape[1] for m in outputs.maps] == [64, 64, 128, 256, 512]


def broken(tmp_path, edit):
    import torchvision

    state = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    edit(state)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    return path


def with_import(entry: dict, section: str = "pretrain") -> dict:
    params = copy.deepcopy(core_params())
    params[section]["imp"] = {"method": "import", **entry}
    return params


@pytest.mark.parametrize(
    "edit, phrases",
    [
        (lambda s: s.pop("layer2.0.bn1.running_var"), ("missing key 'layer2.0.bn1.running_var'",)),
        (
            lambda s: s.__setitem__("layer1.0.conv1.weight", torch.zeros(64, 64, 1, 1)),
            ("key 'layer1.0.conv1.weight' has shape [64, 64, 1, 1]", "expects [64, 64, 3, 3]"),
        ),
        (lambda s: s.__setitem__("extra.weight", torch.zeros(3)), ("unexpected key 'extra.weight'",)),
    ],
    ids=["missing", "shape", "unexpected"],
)
def test_a_wrong_file_is_refused_at_check_params_naming_the_key(tmp_path, edit, phrases):
    path = broken(tmp_path, edit)
    params = with_import({"weights": str(path), "format": "torchvision", "arch": "timm/resnet18"})
    with pytest.raises(ParamsError) as error:
        validate_params(params)
    message = str(error.value)
    assert message.startswith("pretrain.imp.weights: ") and str(path) in message
    for phrase in phrases:
        assert phrase in message


def test_other_wrong_imports_are_refused_by_name(tmp_path):
    own_model(tmp_path / "own.pt")
    cases = [
        ({"weights": str(tmp_path / "nowhere.pt")}, "pretrain.imp.weights", "no such file"),
        ({"weights": str(tmp_path / "own.pt"), "arch": "resnet"}, "pretrain.imp.arch", "holds a convnet"),
        ({"weights": str(tmp_path / "own.pt"), "format": "timm"}, "pretrain.imp", "arch must be a timm model"),
        ({"weights": str(tmp_path / "own.pt")}, "teachers.imp.weights", "missing key 'classifier.weight'"),
    ]
    for entry, key, phrase in cases:
        section = key.split(".")[0]
        with pytest.raises(ParamsError) as error:
            validate_params(with_import(entry, section))
        assert str(error.value).startswith(key) and phrase in str(error.value), str(error.value)
    params = with_import({"weights": str(tmp_path / "own.pt")})
    params["distill"] = {"x": {"method": "import", "weights": str(tmp_path / "own.pt")}}
    with pytest.raises(ParamsError, match=r"distill.x.method: 'import' .* belongs in pretrain: or teachers:"):
        validate_params(params)


def test_an_import_is_a_parent_and_checks_like_a_run(tmp_path):
    own_model(tmp_path / "own.pt")
    params = with_import({"weights": str(tmp_path / "own.pt")})
    params["generations"]["g1"]["parent"] = "imp"
    checked = validate_params(params)
    assert checked["pretrain"]["imp"].arch == "convnet" and checked["pretrain"]["imp"].width == 8
    params["generations"]["g1"]["vocab"]["layer"] = "stage9"
    with pytest.raises(ParamsError, match="generations.g1.vocab.layer: 'stage9' is not a stage of the parent 'imp'"):
        validate_params(params)


def test_dvc_yaml_tracks_the_weights_file(tmp_path):
    """The generated dvc.yaml gives each import its own stage with the file as a dep, as DVC
    resolves it; trained runs keep theirs; check_params is told the layout."""
    from dvc.repo import Repo

    own_model(tmp_path / "weights.pt")
    params = with_import({"weights": "weights.pt"})
    params["teachers"] = {"t": {"method": "import", "weights": "weights.pt"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    text = render([0, 1], params)
    (tmp_path / "dvc.yaml").write_text(text)
    assert "--pipeline-layout pretrain.g0 pretrain.imp=weights.pt teachers.t=weights.pt" in text
    assert pipeline_layout(params) == ["pretrain.g0", "pretrain.imp=weights.pt", "teachers.t=weights.pt"]
    Repo.init(str(tmp_path), no_scm=True)
    with Repo(str(tmp_path)) as repo:
        found = {s.name: s for s in repo.index.stages}
    for seed in (0, 1):
        stage = found[f"import_pretrain_seed{seed}@imp"]
        assert "weights.pt" in {str(d.def_path) for d in stage.deps}
        assert "--weights weights.pt" in stage.cmd and "--section pretrain" in stage.cmd
        assert "weights.pt" in {str(d.def_path) for d in found[f"import_teacher_seed{seed}@t"].deps}
        assert f"pretrain_seed{seed}@g0" in found and f"pretrain_seed{seed}@imp" not in found
        assert f"evaluate_pretrain_seed{seed}@imp" in found and f"teacher_seed{seed}@t" not in found
    assert render([0], core_params()) == render([0])  # no import: dvc.yaml as before


def test_check_params_refuses_a_stale_layout(tmp_path):
    from bowflow.config import check_pipeline_layout

    own_model(tmp_path / "w.pt")
    params = with_import({"weights": "w.pt"})
    check_pipeline_layout(params, ["pretrain.g0", "pretrain.imp=w.pt"])
    with pytest.raises(ParamsError, match="workflow.pipeline"):
        check_pipeline_layout(params, [])
    check_pipeline_layout(core_params(), [])


def test_read_import_resolves_our_file(tmp_path):
    own_model(tmp_path / "own.pt", width=4)
    imported = read_import(ImportParams(weights=str(tmp_path / "own.pt")))
    assert (imported.params.arch, imported.params.width, imported.format) == ("convnet", 4, "bowflow")
    assert imported.classifier is None and imported.mean == [0.1, 0.2, 0.3]
