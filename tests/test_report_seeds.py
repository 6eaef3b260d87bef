"""The report over seeds: means ± standard deviation over seeds, every training's own row,
and the paired comparisons (each run against the untrained control of its architecture,
each generation against its parent), checked against numbers computed by hand."""

import copy
import json
import math

import pytest
import torch

from bowflow import report


def record(name, seed, linear, knn, shot1, method="rotnet", parent="", generation=0, width=32):
    """An evaluation record as load_seeds gives it (label, training metrics under `train`)."""
    return {
        "name": name,
        "parent": parent,
        "generation": generation,
        "method": method,
        "method_label": {"random_init": "Random init", "bownet": "BoWNet"}.get(method, "RotNet"),
        "label": report.model_label(
            {
                "generation": generation,
                "method_label": {"random_init": "Random init", "bownet": "BoWNet"}.get(method, "RotNet"),
            }
        ),
        "linear_base": linear,
        "knn_all": knn,
        "few_shot": {"1": {"mean": shot1, "ci95": 0.5, "episodes": 1000}},
        "parameters": 1000,
        "train": {
            "name": name,
            "seed": seed,
            "arch": "convnet",
            "width": width,
            "depth": 0,
            "epochs": 3,
            "batch_size": 8,
            "wall_seconds": 60.0 + seed,
            "peak_rss_mb": 1024.0,
            "images_per_second": 100.0,
        },
    }


def runs(**values):
    """{run: {seed: record}} from {run: (kwargs, {seed: (linear, knn, shot1)})}."""
    return {
        name: {seed: record(name, seed, *v, **kwargs) for seed, v in by_seed.items()}
        for name, (kwargs, by_seed) in values.items()
    }


# ctrl: the untrained control; a: a pretrain run; g1: a's student, seeds 0 and 2 only;
# g2: g1's student, seed 0 only; wide: another width (no control); ctrl_b: a second control.
PER_SEED = runs(
    ctrl=({"method": "random_init"}, {0: (50, 40, 30), 1: (52, 40, 30), 2: (54, 40, 30)}),
    ctrl_b=({"method": "random_init"}, {0: (1, 1, 1), 1: (1, 1, 1), 2: (1, 1, 1)}),
    a=({}, {0: (60, 45, 31), 1: (61, 41, 29), 2: (65, 39, 30)}),
    wide=({"width": 64}, {0: (70, 70, 70), 1: (71, 71, 71), 2: (72, 72, 72)}),
    g1=({"method": "bownet", "parent": "a", "generation": 1}, {0: (58, 50, 40), 2: (66, 49, 35)}),
    g2=({"method": "bownet", "parent": "g1", "generation": 2}, {0: (57, 49, 41)}),
)


def find(comparisons, run, partner, metric):
    [hit] = [c for c in comparisons if (c["run"], c["partner"], c["metric"]) == (run, partner, metric)]
    return hit


def test_partners_are_the_control_of_the_architecture_and_the_parent():
    assert report.comparison_partners(PER_SEED) == [
        ("a", "ctrl", "control"),
        ("g1", "ctrl", "control"),
        ("g1", "a", "parent"),
        ("g2", "ctrl", "control"),
        ("g2", "g1", "parent"),
    ]  # no control for wide, none for a control


def test_paired_differences_above_at_every_seed():
    c = find(report.paired_comparisons(PER_SEED), "a", "ctrl", "linear_base")
    assert c["kind"] == "control" and c["diffs"] == {0: 10, 1: 9, 2: 11}
    half = 4.303 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (c["n"], c["mean"], c["sd"], c["min"], c["max"]) == (3, 10, 1, 9, 11)
    assert c["ci95_low"] == pytest.approx(10 - half, abs=1e-3)
    assert c["ci95_high"] == pytest.approx(10 + half, abs=1e-3)
    assert c["verdict"] == "above at every seed"


def test_paired_differences_mixed_and_a_tie_is_mixed():
    comparisons = report.paired_comparisons(PER_SEED)
    knn = find(comparisons, "a", "ctrl", "knn_all")
    assert knn["diffs"] == {0: 5, 1: 1, 2: -1} and knn["verdict"] == "mixed"
    assert knn["mean"] == pytest.approx(5 / 3) and knn["sd"] == pytest.approx(math.sqrt(28 / 3 / 1))
    shot = find(comparisons, "a", "ctrl", "few_shot_1")
    assert shot["diffs"] == {0: 1, 1: -1, 2: 0} and shot["verdict"] == "mixed"


def test_paired_over_the_seeds_both_have():
    comparisons = report.paired_comparisons(PER_SEED)
    knn = find(comparisons, "g1", "a", "knn_all")  # g1 has seeds 0 and 2 only
    assert knn["kind"] == "parent" and knn["diffs"] == {0: 5, 2: 10} and knn["n"] == 2
    assert knn["mean"] == 7.5 and knn["sd"] == pytest.approx(math.sqrt(12.5))
    assert knn["ci95_high"] - knn["mean"] == pytest.approx(12.706 * math.sqrt(12.5) / math.sqrt(2), abs=1e-2)
    assert knn["verdict"] == "above at every seed"
    assert find(comparisons, "g1", "a", "linear_base")["verdict"] == "mixed"  # -2, +1


def test_paired_with_one_seed_has_no_spread_or_interval():
    c = find(report.paired_comparisons(PER_SEED), "g2", "g1", "linear_base")
    assert c["diffs"] == {0: -1} and c["n"] == 1 and c["mean"] == -1
    assert c["sd"] is None and c["ci95_low"] is None and c["ci95_high"] is None
    assert c["verdict"] == "below at every seed"


def test_t_quantile_table_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 31):
        assert report.T_975[df - 1] == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    assert report.t_quantile(2) == pytest.approx(4.303, abs=1e-3)


def test_mean_record_leaves_the_per_seed_records_alone():
    before = copy.deepcopy(PER_SEED)
    merged = [report.mean_record(by_seed) for by_seed in PER_SEED.values()]
    assert PER_SEED == before
    g1 = merged[list(PER_SEED).index("g1")]
    assert g1["seeds"] == 2 and g1["seed_ids"] == [0, 2] and g1["linear_base"] == 62
    assert g1["values"]["linear_base"] == {0: 58, 2: 66} and g1["train"]["epochs"] == 3
    assert g1["train"]["wall_seconds"] == 61.0 and "seed" not in g1["train"]
    assert g1["spread"]["linear_base"] == {"mean": 62, "sd": pytest.approx(math.sqrt(32)), "n": 2}


def test_tables_say_what_their_plus_minus_measures():
    table = report.seed_table(PER_SEED)
    assert "± is the standard deviation over each run's seeds (training runs; 1 to 3" in table
    assert "interval over few-shot episodes of one training is in the per-seed table" in table
    assert "| Model | n = 1 | Base linear | k-NN | Seeds |" in table
    assert "| RotNet (a) | 30.0 ± 1.0 | 62.0 ± 2.6 | 41.7 ± 3.1 | 3 |" in table
    assert "| BoWNet x2 (g2) | 41.0 | 57.0 | 49.0 | 1 |" in table  # one seed: no ±
    per_seed = report.per_seed_table(PER_SEED)
    assert "95% interval over the 1000 test episodes of that one training" in per_seed
    assert "| RotNet (a) | 1 | 29.0 ± 0.5 | 61.0 | 41.0 |" in per_seed
    paired = report.paired_table(PER_SEED)
    assert "± the standard deviation of the per-seed differences" in paired
    assert "only where the cell says ↑ all" in paired
    row = next(line for line in paired.splitlines() if line.startswith("| RotNet (a) |"))
    assert row == (
        "| RotNet (a) | Random init (ctrl), untrained control | 3 | +0.0 ± 1.0 [-2.5, +2.5] "
        "mixed 1↑ 1↓ | +10.0 ± 1.0 [+7.5, +12.5] ↑ all | +1.7 ± 3.1 [-5.9, +9.3] mixed 2↑ 1↓ |"
    )
    assert "| BoWNet x2 (g2) | BoWNet (g1), parent | 1 | +1.0 ↑ all | -1.0 ↓ all | -1.0 ↓ all |" in paired
    side = report.seed_comparison_table(PER_SEED)
    assert (
        "| a | RotNet | - | 3 | 8 | 0.00M | 1.0 min | 1.0 GB | 100 | 62.0 ± 2.6 | 41.7 ± 3.1 | 30.0 ± 1.0 | 3 |" in side
    )
    rows = report.seed_generations_rows(PER_SEED)
    assert rows[list(PER_SEED).index("a")] == {
        "generation": 0,
        "name": "a",
        "label": "RotNet",
        "linear_base": 62,
        "knn_all": pytest.approx(125 / 3),
        "few_shot_1": 30,
        "seeds": 3,
    }


def test_distill_tables_give_the_mean_over_seeds():
    def train(name, seed, top1, parent="", arch="resnet20", method_label="Supervised"):
        return {
            "name": name,
            "seed": seed,
            "parent": parent,
            "arch": arch,
            "method_label": method_label,
            "top1": top1,
            "peak_rss_mb": 1024.0,
            "trained_parameters": 1e6,
            "wall_seconds": 60.0,
        }

    per_seed = {
        "t": {s: train("t", s, 70 + s, arch="resnet56") for s in (0, 1)},
        "s": {s: train("s", s, 60 + s) for s in (0, 1)},
        "kd": {s: train("kd", s, 64 + 2 * s, parent="t", method_label="KD") for s in (0, 1)},
    }
    text = report.distill_tables(report.mean_supervised(per_seed))
    assert "test split, last epoch; mean over 2 seeds." in text
    assert "| KD | 65.00 | 65.00 |" in text and "| Teacher (vanilla) | 70.50 | 70.50 |" in text


def test_report_stage_over_seeds(tmp_path, monkeypatch):
    """stages.report on a per-seed tree: the tables, per-seed wall times, the generations CSV
    with `seeds`, curves and visual words of the lowest seed; a run not in runs.json stays out."""
    import stages.report as stage

    metrics, plots, models = tmp_path / "metrics", tmp_path / "plots", tmp_path / "models"
    for seed in (1, 2):
        for name, r in [(n, by_seed[0]) for n, by_seed in PER_SEED.items()] + [
            ("left_over", record("left_over", seed, 1, 1, 1))
        ]:
            r = dict(r, name=name, linear_base=r["linear_base"] + seed)
            train = r.pop("train")
            for folder, data in (("eval", r), ("train", train)):
                (metrics / f"seed{seed}" / folder).mkdir(parents=True, exist_ok=True)
                (metrics / f"seed{seed}" / folder / f"{name}.json").write_text(json.dumps(data))
            (plots / f"seed{seed}" / "train").mkdir(parents=True, exist_ok=True)
            (plots / f"seed{seed}" / "train" / f"{name}.csv").write_text("epoch,loss\n1,2.0\n2,1.0\n")
    (models / "seed1" / "g1").mkdir(parents=True)
    torch.save(
        {"codes": torch.randint(0, 4, (6, 16)), "teacher": "a", "layer": "last"}, models / "seed1" / "g1" / "vocab.pt"
    )
    monkeypatch.setattr(
        stage, "load_ssl_images", lambda _: (torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8), {})
    )
    runs_file = tmp_path / "runs.json"
    runs_file.write_text(json.dumps({"runs": list(PER_SEED), "seeds": [1, 2]}))
    out, csv = tmp_path / "report", tmp_path / "generations.csv"
    stage.main(
        [
            "--prepared",
            str(tmp_path),
            "--metrics",
            str(metrics),
            "--plots",
            str(plots),
            "--models",
            str(models),
            "--out",
            str(out),
            "--generations-csv",
            str(csv),
            "--runs",
            str(runs_file),
            "--words_shown",
            "2",
            "--patches_per_word",
            "2",
        ]
    )
    text = (out / "report.md").read_text()
    assert "| RotNet (a) | 31.0 ± 0.0 | 61.5 ± 0.7 | 45.0 ± 0.0 | 2 |" in text
    assert "## Paired comparisons" in text and "| seed2/train/g1 | 60.0 |" in text
    assert "left_over" not in text
    assert csv.read_text().splitlines()[0] == "generation,name,label,linear_base,knn_all,few_shot_1,seeds"
    for figure in ("training_curves.png", "accuracy_by_generation.png", "visual_words_g1.png"):
        assert (out / figure).stat().st_size > 1000
