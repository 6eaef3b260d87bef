"""timm models as backbones (`arch: timm/<model>`, bowflow/timm_backbones.py): their sizes
are timm's, their stages are stage maps as the contract reads them, and a self-supervised
run trains and evaluates on one. Nothing is downloaded (pretrained=False)."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from bowflow.config import ParamsError, architecture, validate_params
from bowflow.networks import BackboneSpec, build_backbone, count_parameters
from bowflow.scaffold import core_params
from stages import evaluate, prepare, pretrain

# timm's own counts without the classifier (num_classes=0), timm 1.0.31
SIZES = {"resnet10t": 4_922_488, "convnext_atto": 3_374_520}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_parameter_counts_are_timms(name):
    backbone = build_backbone(f"timm/{name}", 0, 0)
    assert count_parameters(backbone) == SIZES[name]
    assert count_parameters(timm.create_model(name, pretrained=False, num_classes=0)) == SIZES[name]


@pytest.mark.parametrize("name, size", [("resnet10t", 32), ("convnext_atto", 32), ("vit_tiny_patch16_224", 32)])
def test_stage_maps_meet_the_contract(name, size):
    """Every stage a map [B, C_i, H / r_i, W / r_i] with the announced channels and
    reductions; a stage computes no later one; the pooled feature is timm's pre-logits."""
    backbone = build_backbone(f"timm/{name}", 0, 0).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        maps = backbone.feature_maps(x)
        assert len(maps) == len(backbone.stage_names) == len(backbone.channels) == len(backbone.stages)
        for m, c, r in zip(maps, backbone.channels, backbone.reductions):
            assert tuple(m.shape) == (2, c, size // r, size // r)
        assert torch.allclose(backbone.feature_map(x, "stage2"), maps[1])
        assert tuple(backbone.pooled(x, "stage2").shape) == (2, backbone.channels[1])
        distill_maps, pooled = backbone.distill_features(x)
        assert [tuple(m.shape) for m in distill_maps] == [tuple(m.shape) for m in maps]
        assert torch.allclose(pooled, backbone(x), atol=1e-5)
        assert torch.allclose(backbone(x), backbone.model(x), atol=1e-5)  # timm's own forward
    assert pooled.shape == (2, backbone.out_channels)


def test_params_name_timm_models_and_refuse_sizes():
    meta = architecture(BackboneSpec("timm/convnext_atto"))
    assert meta.stage_names == ["stage1", "stage2", "stage3", "stage4"]
    params = core_params()
    params["pretrain"]["g0"].update(arch="timm/resnet10t", width=0, depth=0)
    validate_params(params)
    for key, value, phrase in (
        ("arch", "timm/no_such_net", "has no model 'no_such_net'"),
        ("width", 8, "width must be 0 for arch 'timm/resnet10t'"),
        ("arch", "tim/resnet10t", "arch must be one of"),
    ):
        bad = core_params()
        bad["pretrain"]["g0"].update(arch="timm/resnet10t", width=0, depth=0)
        bad["pretrain"]["g0"][key] = value
        with pytest.raises(ParamsError) as error:
            validate_params(bad)
        assert str(error.value).startswith(f"pretrain.g0.{key}") and phrase in str(error.value), str(error.value)


def test_a_self_supervised_run_trains_and_evaluates_on_a_timm_backbone(tmp_path):
    prepared = tmp_path / "prepared"
    prepare.main(
        ["--out", str(prepared), "--seed", "0", "--source", "digits", "--image_size", "16", "--ssl_max_images", "64"]
    )
    model, out = tmp_path / "g0" / "model.pt", tmp_path / "eval.json"
    pretrain.main(
        [
            "--prepared",
            str(prepared),
            "--model",
            str(model),
            "--metrics",
            str(tmp_path / "m.json"),
            "--history",
            str(tmp_path / "h.csv"),
            "--checkpoints",
            str(tmp_path / "ck"),
            "--seed",
            "0",
            "--device",
            "cpu",
            "--method",
            "rotnet",
            "--arch",
            "timm/resnet10t",
            "--width",
            "0",
            "--epochs",
            "1",
            "--batch_size",
            "32",
        ]
    )
    assert json.loads((tmp_path / "m.json").read_text())["parameters"] == SIZES["resnet10t"]
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
            "2",
            "--few_shot_shots",
            "1",
            "--few_shot_episodes",
            "10",
        ]
    )
    metrics = json.loads(out.read_text())
    assert metrics["feature_dim"] == 512 and 0 <= metrics["linear_base"] <= 100
