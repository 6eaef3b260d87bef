"""The report shows the runs params.yaml names and no others.

git tracks data/metrics/ (DVC's experiment queue needs it), and one checkout runs several
params files in turn (`cp presets/X.yaml params.yaml`), so data/metrics/ can hold files of
runs the current params do not name. check_params writes the run names (data/runs.json) and
the report stage reads only those runs' metrics.
"""
import json

from bowflow import report
from bowflow.config import main as check_params
from bowflow.scaffold import tiny_params, write_params


def metrics(folder, name, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "method": "rotnet", "generation": 0, "wall_seconds": 1.0, **extra}
    (folder / f"{name}.json").write_text(json.dumps(record))


def test_check_params_writes_every_run_it_names(tmp_path):
    params = tiny_params(every_method=False)
    write_params(tmp_path, params)
    assert check_params([str(tmp_path / "params.yaml"), "--runs", str(tmp_path / "runs.json")]) == 0
    names = json.loads((tmp_path / "runs.json").read_text())
    expected = [*params["pretrain"], *params["generations"], *params["teachers"], *params["distill"]]
    assert sorted(names) == sorted(expected) and "g0" in names and "g1" in names


def test_runs_not_named_stay_out_of_the_report(tmp_path):
    root = tmp_path / "metrics"
    for name in ("g0", "left_over"):
        metrics(root / "eval", name)
        metrics(root / "train", name, top1=50.0)
    assert {r["name"] for r in report.load_lineage(root / "eval")} == {"g0", "left_over"}
    assert [r["name"] for r in report.load_lineage(root / "eval", ["g0"])] == ["g0"]
    assert set(report.load_supervised(root / "train", ["g0"])) == {"g0"}
    assert {name for name, _ in report.stage_times(root, ["g0"])} == {"eval/g0", "train/g0"}
