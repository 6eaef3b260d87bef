"""Atomic writes: a failure leaves the old file (or no file) and no temporary behind."""

import pytest

from bowflow.io import atomic_path, read_json, write_json


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("interrupted")
    assert read_json(path) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    assert (path.stat().st_mode & 0o777) != 0o600


def test_no_file_when_first_write_fails(tmp_path):
    path = tmp_path / "sub" / "model.pt"
    with pytest.raises(KeyError):
        with atomic_path(path):
            raise KeyError("boom")
    assert not path.exists() and list(path.parent.iterdir()) == []
