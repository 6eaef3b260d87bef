"""The distillation presets are presets/distill.py's output, so they cannot drift from its grid.

The committed YAML stays what `cp presets/X.yaml params.yaml && make run` copies and what DVC
reads (presets/distill.py says why a generator and not YAML anchors or DVC matrix stages);
these tests pin the text to the spec. Fast: no bowflow import, no training.
"""

import importlib.util
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent


def load_generator():
    spec = importlib.util.spec_from_file_location("presets_distill", ROOT / "presets" / "distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


distill = load_generator()


def ordered(value):
    """A value with mapping order and scalar types made part of equality."""
    if isinstance(value, dict):
        return [(key, ordered(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [ordered(item) for item in value]
    return type(value).__name__, value


@pytest.mark.parametrize("name", sorted(distill.PRESETS))
def test_committed_preset_is_the_generators_output(name):
    committed = (ROOT / "presets" / f"{name}.yaml").read_text()
    generated = distill.render(name)
    loaded = YAML(typ="safe").load(committed)
    # values first, in order and type, so that a failure names what differs
    assert ordered(loaded) == ordered(distill.params(distill.PRESETS[name])), (
        f"presets/{name}.yaml differs from presets/distill.py's grid: run .venv/bin/python presets/distill.py"
    )
    assert committed == generated, (
        f"presets/{name}.yaml's text (comments or layout) differs: run .venv/bin/python presets/distill.py"
    )


def test_every_distill_preset_comes_from_the_generator():
    on_disk = {p.stem for p in (ROOT / "presets").glob("distill-*.yaml")}
    assert on_disk == set(distill.PRESETS)


def test_check_mode_names_a_stale_preset(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distill, "HERE", tmp_path)
    for name in distill.PRESETS:
        (tmp_path / f"{name}.yaml").write_text(distill.render(name))
    assert distill.main(["--check"]) == 0
    stale = tmp_path / "distill-cpu.yaml"
    stale.write_text(stale.read_text().replace("gamma: 0.8", "gamma: 0.9", 1))
    assert distill.main(["--check"]) == 1
    assert "distill-cpu.yaml" in capsys.readouterr().err
    assert stale.read_text().count("gamma: 0.9") == 1  # --check writes nothing
