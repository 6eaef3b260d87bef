"""The report shows the runs params.yaml names and no others.

git tracks data/metrics/ (DVC's experiment queue needs it), and one checkout runs several
params files in turn (`cp presets/X.yaml params.yaml`), so data/metrics/ can hold files of
runs the current params do not name. check_params writes the run names and seeds
(data/runs.json: {"runs": [...], "seeds": [...]}) and the report stage reads only those
runs' metrics, at those seeds (data/metrics/seed{S}/...).
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
    names, seeds = report.read_runs(tmp_path / "runs.json")
    expected = [*params["pretrain"], *params["generations"], *params["teachers"], *params["distill"]]
    assert sorted(names) == sorted(expected) and "g0" in names and "g1" in names
    assert seeds and all(isinstance(s, int) for s in seeds)
    if "seeds" in params:
        assert seeds == list(params["seeds"])


def test_runs_not_named_stay_out_of_the_report(tmp_path):
    root = tmp_path / "metrics"
    for seed in (0, 1, 5):
        for name in ("g0", "left_over"):
            metrics(root / f"seed{seed}" / "eval", name)
            metrics(root / f"seed{seed}" / "train", name, top1=50.0)
    assert set(report.load_seeds(root)) == {"g0", "left_over"}
    assert {name: list(by_seed) for name, by_seed in report.load_seeds(root, ["g0"], [0, 1]).items()} == {
        "g0": [0, 1]
    }  # seed 5 is not asked for either
    assert {name: list(by_seed) for name, by_seed in report.load_supervised_seeds(root, ["g0"], [0, 1]).items()} == {
        "g0": [0, 1]
    }
    assert {name for name, _ in report.seed_stage_times(root, ["g0"], [0, 1])} == {
        "seed0/eval/g0",
        "seed0/train/g0",
        "seed1/eval/g0",
        "seed1/train/g0",
    }


def test_one_training_records_still_read(tmp_path):
    """Older records (metrics/{eval,train}/NAME.json, one training per run) keep their readers."""
    root = tmp_path / "metrics"
    for name in ("g0", "left_over"):
        metrics(root / "eval", name)
        metrics(root / "train", name, top1=50.0)
    assert [r["name"] for r in report.load_lineage(root / "eval", ["g0"])] == ["g0"]
    assert set(report.load_supervised(root / "train", ["g0"])) == {"g0"}
    assert {name for name, _ in report.stage_times(root, ["g0"])} == {"eval/g0", "train/g0"}
