"""Architectures' own declared settings (`arch_params`): the ViTs' stochastic depth
(`drop_path`), its check in params.yaml, its command-line flags and its model files."""

import copy
import dataclasses
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dvc.parsing.interpolate import to_str

from bowflow.cli import parse_section, render_args
from bowflow.config import ParamsError, load_yaml, validate_params
from bowflow.io import load_torch, save_torch
from bowflow.models import Normalizer, load_model, save_model
from bowflow.networks import ARCH_PARAMS, ARCHITECTURES, BackboneSpec, NoArchParams, build_backbone
from bowflow.roles.base import TrainParams
from bowflow.vit import DropPath, ViTParams
from bowflow.weights import ImportParams, read_import

ROOT = Path(__file__).resolve().parent.parent
VITS = [name for name in ARCHITECTURES if name.startswith("vit")]
SMALL = {"vit": (64, 3), "vit_p2": (64, 3)}  # the sized ViTs, kept small


def seeded(spec: BackboneSpec):
    torch.manual_seed(0)
    return build_backbone(spec)


def images(n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def plain_forward(vit, x: torch.Tensor) -> torch.Tensor:
    """The blocks as they were before stochastic depth: x + attn(LN(x)), + mlp(LN(x))."""
    t, _ = vit.tokens(x)
    for block in vit.stages:
        t = t + block.attn(block.norm1(t))
        t = t + block.mlp(block.norm2(t))
    return vit.norm(t)[:, 0]


# ---------------------------------------------------------------- the declared settings


def test_every_architecture_declares_its_settings():
    assert set(ARCH_PARAMS) == set(ARCHITECTURES) | {"timm"}
    for name, cls in ARCH_PARAMS.items():
        assert dataclasses.is_dataclass(cls), name
        for field in dataclasses.fields(cls):
            assert field.metadata.get("help"), f"{name}.{field.name} has no help text"
    assert ARCH_PARAMS["convnet"] is NoArchParams and ARCH_PARAMS["vit_tiny"] is ViTParams
    assert [f.name for f in dataclasses.fields(ARCH_PARAMS["timm"])] == ["drop_path"]


@pytest.mark.parametrize("arch", VITS)
def test_drop_path_zero_is_the_network_before_it(arch):
    width, depth = SMALL.get(arch, (0, 0))
    plain = seeded(BackboneSpec(arch, width, depth))
    zero = seeded(BackboneSpec(arch, width, depth, {"drop_path": 0.0}))
    assert list(plain.state_dict()) == list(zero.state_dict())
    assert all(torch.equal(v, zero.state_dict()[k]) for k, v in plain.state_dict().items())
    x = images(2, 16 if arch.endswith("p2") else 32)
    with torch.no_grad():
        for network in (plain, zero):
            network.train()  # no randomness at 0, even in training
            assert torch.equal(network(x), plain_forward(network, x))
            network.eval()
            assert torch.equal(network(x), network(x))
            assert torch.equal(network(x), plain_forward(network, x))


def test_drop_path_changes_training_outputs_only():
    spec = BackboneSpec("vit_p2", 64, 4, {"drop_path": 0.5})
    dropping, plain = seeded(spec), seeded(BackboneSpec("vit_p2", 64, 4))
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in dropping.state_dict().items())
    x = images(8)
    with torch.no_grad():
        dropping.eval(), plain.eval()
        reference = plain(x)
        assert torch.equal(dropping(x), reference)  # eval: every branch, unscaled
        assert torch.equal(dropping(x), dropping(x))
        dropping.train()
        torch.manual_seed(3)
        first = dropping(x)
        second = dropping(x)
    assert not torch.equal(first, reference)
    assert not torch.equal(first, second)  # fresh masks each forward


def test_drop_rate_rises_linearly_over_the_blocks():
    vit = build_backbone(BackboneSpec("vit_p2", 64, 5, {"drop_path": 0.2}))
    expected = [0.0, 0.05, 0.1, 0.15, 0.2]
    assert vit.drop_path_rates == pytest.approx(expected)
    assert isinstance(vit.stages[0].drop_path, torch.nn.Identity)  # rate 0: no module
    assert [block.drop_path.p for block in vit.stages[1:]] == pytest.approx(expected[1:])
    assert all(isinstance(b.drop_path, torch.nn.Identity) for b in build_backbone("vit_p2", 64, 5).stages)


def test_drop_path_drops_whole_samples_and_rescales_the_kept():
    drop = DropPath(0.25)
    x = torch.ones(4000, 3, 5)
    torch.manual_seed(0)
    y = drop.train()(x)
    per_sample = y.flatten(1)
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)  # one draw per sample
    assert per_sample[:, 0].unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert float((per_sample[:, 0] == 0).float().mean()) == pytest.approx(0.25, abs=0.03)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.05)  # expectation kept
    assert torch.equal(drop.eval()(x), x)


def test_timm_gets_drop_path_as_its_drop_path_rate():
    plain = build_backbone("timm/vit_tiny_patch16_224", 0, 0)
    dropping = build_backbone(BackboneSpec("timm/vit_tiny_patch16_224", 0, 0, {"drop_path": 0.1}))
    assert isinstance(plain.model.blocks[-1].drop_path1, torch.nn.Identity)
    assert dropping.model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert list(plain.state_dict()) == list(dropping.state_dict())


# ---------------------------------------------------------------- the params check


@pytest.fixture(scope="module")
def params():
    return load_yaml(ROOT / "params.yaml")


def with_vit_run(params, arch_params, arch="vit_p2"):
    changed = copy.deepcopy(params)
    changed["pretrain"]["mae"] = {"method": "mae", "arch": arch, "width": 64, "depth": 2, "arch_params": arch_params}
    return changed


def error_of(params) -> str:
    with pytest.raises(ParamsError) as info:
        validate_params(params)
    return str(info.value)


def test_declared_settings_pass_the_check(params):
    checked = validate_params(with_vit_run(params, {"drop_path": 0.1}))
    assert checked["pretrain"]["mae"].arch_params == {"drop_path": 0.1}
    assert checked["pretrain"]["mae"].backbone_spec == BackboneSpec("vit_p2", 64, 2, {"drop_path": 0.1})
    assert checked["pretrain"]["g0"].arch_params == {}  # params.yaml's runs leave it out


@pytest.mark.parametrize(
    "arch_params, arch, expected",
    [
        ({"drop_pth": 0.1}, "vit_p2", "pretrain.mae.arch_params.drop_pth: unknown, 'vit_p2' takes: drop_path"),
        ({"drop_path": 1.5}, "vit_p2", "pretrain.mae.arch_params.drop_path: drop_path must be in [0, 1), got 1.5"),
        ({"drop_path": 1.0}, "vit_p2", "pretrain.mae.arch_params.drop_path: drop_path must be in [0, 1), got 1.0"),
        ({"drop_path": -0.1}, "vit_p2", "pretrain.mae.arch_params.drop_path: drop_path must be in [0, 1)"),
        ({"drop_path": "0.1"}, "vit_p2", "pretrain.mae.arch_params.drop_path: expected float, got '0.1'"),
        ({"drop_path": 0.1}, "convnet", "pretrain.mae.arch_params.drop_path: unknown, 'convnet' takes none"),
        ([0.1], "vit_p2", "pretrain.mae.arch_params: expected a mapping"),
    ],
)
def test_bad_settings_are_named_in_full(params, arch_params, arch, expected):
    changed = with_vit_run(params, arch_params, arch)
    changed["pretrain"]["mae"]["method"] = "mae" if arch.startswith("vit") else "simclr"
    message = error_of(changed)
    assert message.startswith(expected), message


def test_command_line_check_names_the_setting(tmp_path, params):
    from bowflow.scaffold import write_yaml

    path = tmp_path / "params.yaml"
    write_yaml(with_vit_run(params, {"drop_pth": 0.1}), path)
    result = subprocess.run(
        [sys.executable, "-m", "bowflow.config", str(path), "--manifest", str(tmp_path / "none.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "pretrain.mae.arch_params.drop_pth: unknown, 'vit_p2' takes: drop_path" in result.stderr


# ---------------------------------------------------------------- flags


def section(arch_params):
    return {"method": "mae", "arch": "vit_p2", "width": 64, "depth": 2, "arch_params": arch_params, "epochs": 3}


def test_empty_arch_params_render_no_flag():
    flags = render_args(section({}))
    assert flags == "--method mae --arch vit_p2 --width 64 --depth 2 --epochs 3"
    assert flags == to_str(section({}), config={"bool": "boolean_optional", "list": "nargs"})
    parsed, _ = parse_section(TrainParams, shlex.split(flags))
    assert parsed.arch_params == {}


@pytest.mark.parametrize("arch_params", [{"drop_path": 0.1}, {"drop_path": 0}, {"drop_path": 1e-05}])
def test_arch_params_round_trip_through_the_flags(arch_params):
    flags = render_args(section(arch_params))
    assert flags == to_str(section(arch_params), config={"bool": "boolean_optional", "list": "nargs"})
    assert "--arch_params.drop_path " in flags
    parsed, _ = parse_section(TrainParams, shlex.split(flags))
    assert parsed.arch_params == arch_params and parsed.epochs == 3
    assert parsed.backbone_spec == BackboneSpec("vit_p2", 64, 2, arch_params)


def test_dotted_flags_read_as_params_yaml_would():
    from bowflow.cli import mapping_flags

    found, rest = mapping_flags(
        [
            "--arch_params.a",
            "3",
            "--arch_params.b",
            "0.5",
            "--arch_params.c",
            "text",
            "--arch_params.on",
            "--no-arch_params.off",
            "--arch_params.l",
            "1",
            "2",
            "--other.x",
            "1",
        ],
        ["arch_params"],
    )
    assert found == {"arch_params": {"a": 3, "b": 0.5, "c": "text", "on": True, "off": False, "l": [1, 2]}}
    assert rest == ["--other.x", "1"]


def test_a_bad_setting_flag_is_a_clean_error(capsys):
    with pytest.raises(SystemExit):
        parse_section(TrainParams, shlex.split(render_args(section({"drop_pth": 0.1}))))
    assert "arch_params.drop_pth: unknown, 'vit_p2' takes: drop_path" in capsys.readouterr().err


# ---------------------------------------------------------------- model files


def write_model(path: Path, arch_params: dict) -> torch.nn.Module:
    params = TrainParams(method="mae", arch="vit_p2", width=64, depth=2, arch_params=arch_params)
    backbone = seeded(params.backbone_spec)
    save_model(path, backbone, Normalizer([0.5] * 3, [0.25] * 3), params, 16, extra={"name": "m"})
    return backbone


def test_a_model_file_keeps_its_settings(tmp_path):
    saved = write_model(tmp_path / "model.pt", {"drop_path": 0.1})
    backbone, _, record = load_model(tmp_path / "model.pt")
    assert record["arch_params"] == {"drop_path": 0.1}
    assert BackboneSpec.from_record(record) == BackboneSpec("vit_p2", 64, 2, {"drop_path": 0.1})
    assert backbone.drop_path_rates[-1] == pytest.approx(0.1)
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in saved.state_dict().items())
    imported = read_import(ImportParams(weights=str(tmp_path / "model.pt")))
    assert imported.params.arch_params == {"drop_path": 0.1}


def test_a_model_file_from_before_arch_params_loads_with_none(tmp_path):
    saved = write_model(tmp_path / "model.pt", {})
    record = load_torch(tmp_path / "model.pt")
    assert record["arch_params"] == {}
    del record["arch_params"], record["params"]["arch_params"]  # as files were written before
    save_torch(record, tmp_path / "old.pt")
    backbone, _, old = load_model(tmp_path / "old.pt")
    assert "arch_params" not in old
    assert BackboneSpec.from_record(old) == BackboneSpec("vit_p2", 64, 2)
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in saved.state_dict().items())
    assert read_import(ImportParams(weights=str(tmp_path / "old.pt"))).params.arch_params == {}


def test_records_name_arch_params_only_where_a_run_gives_some():
    """model.pt always records arch_params; the training metrics (and the import stage's)
    only when not empty, so existing runs' metrics keep their keys."""
    plain, dropping = BackboneSpec("convnet", 8), BackboneSpec("vit_p2", 64, 2, {"drop_path": 0.1})
    assert plain.record() == {"arch": "convnet", "width": 8, "depth": 0, "arch_params": {}}
    assert plain.record(omit_empty=True) == {"arch": "convnet", "width": 8, "depth": 0}
    assert dropping.record(omit_empty=True)["arch_params"] == {"drop_path": 0.1}
    assert BackboneSpec.from_record(dropping.record()) == dropping
