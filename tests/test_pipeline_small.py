"""The real pipeline on the tiny project with one run of each kind (a pretrain method, the
BoWNet generations, a teacher and a distiller), trained once per test session
(`one_of_each_project`, tests/conftest.py): `dvc metrics` and `dvc exp show` read the summary,
Snakemake trains it to the same metrics, and the README's commands work on it as typed.

A file of its own so that `make test-all`'s two workers (pytest-xdist, `--dist loadfile`) run
it beside test_pipeline.py's every-method project; helpers come from there."""

import json
import re
import shlex
import shutil
import subprocess

import pytest
from test_pipeline import ENV, NOT_TYPED_HERE, ROOT, eval_metrics, readme_commands, repro, run, seeded

from bowflow.config import load_yaml
from bowflow.scaffold import make_project, tiny_params, write_params


@pytest.mark.slow
def test_snakemake_agrees_with_dvc(one_of_each_project, tmp_path):
    """Snakemake, run from scratch on the same params, trains and evaluates every stage to
    the same metrics as `dvc repro`: one run of each kind (a pretrain method, the BoWNet
    generations, a teacher and a distiller). Both front-ends run the same command per stage
    for every method (tests/test_frontends.py compares them stage by stage), so the
    every-method project (about 5 minutes more of the full tier) would add no other path."""
    _, _, dvc_metrics = one_of_each_project
    project = make_project(tmp_path / "project", tiny_params(every_method=False))
    run(project, ".venv/bin/snakemake", "--cores", "2", "--quiet")
    assert eval_metrics(project) == dvc_metrics, "same params and seed: identical metrics"
    run(project, ".venv/bin/snakemake", "--cores", "1", "--report", "report.html")
    assert (project / "report.html").stat().st_size > 10000


@pytest.mark.slow
def test_readme_commands_work_as_typed(one_of_each_project, tmp_path):
    """The README's commands, typed in a fresh shell (no venv on PATH) in a project whose
    pipeline has run: a copy of the one-run-of-each-kind project, so that what the commands
    change (`dvc exp run` leaves its experiment in the workspace) stays out of the other
    tests' projects, and each command's retraining is one run of each kind, not every method
    (on the every-method project this test took 12-18 minutes of the full tier's hour).

    Each command starts from the project's own params.yaml: `dvc exp run -S` leaves its
    values in the workspace, and the README's examples are each meant for a project as
    `make run` left it (carried over, the torchrun example's `processes=2` would retrain
    every pretrain run under torchrun in the next example)."""
    project = tmp_path / "project"
    shutil.copytree(one_of_each_project[0], project, symlinks=True)
    commands = readme_commands()
    assert any(c.startswith(".venv/bin/dvc") for c in commands)
    own_params = (project / "params.yaml").read_text()
    typed = 0
    for command in commands:
        if any(marker in command for marker in NOT_TYPED_HERE):
            continue
        (project / "params.yaml").write_text(own_params)
        result = subprocess.run(["bash", "-c", command], cwd=project, capture_output=True, text=True, env=ENV)
        assert result.returncode == 0, f"README command failed: {command}\n{result.stderr[-2000:]}"
        typed += 1
    assert typed >= 8


# What DVC compares: data/metrics/summary.json alone (the report writes it; every stage's
# full record is an output that is not a metric), and the README's `dvc exp show` fits a
# terminal of this width.
SUMMARY = "data/metrics/summary.json"
TERMINAL_COLUMNS = 200


def flat(tree: dict, prefix: str = "") -> list[str]:
    """Dotted names of a nested dict's leaves, as `dvc exp show` names its columns."""
    return [
        name
        for key, value in tree.items()
        for name in (flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"])
    ]


def test_dvc_metrics_are_the_summary_alone(one_of_each_project):
    """`dvc metrics show` and `dvc exp show` read the summary alone: per run its linear,
    k-NN, few-shot means, training minutes (and test top-1 for teachers and distillation),
    each the mean of the records' values over the seeds (one seed here)."""
    project, _, _ = one_of_each_project
    params = tiny_params(every_method=False)
    summary = json.loads((project / SUMMARY).read_text())
    evaluated, supervised = {*params["pretrain"], *params["generations"]}, {*params["teachers"], *params["distill"]}
    assert set(summary) == evaluated | supervised
    shots = [f"shot_{n}" for n in params["evaluate"]["few_shot_shots"]]
    for name, values in summary.items():
        expected = ["linear", "knn", *shots] if name in evaluated else ["top1"]
        assert list(values) == [*expected, "train_min", "n_seeds"] and values["n_seeds"] == 1, (name, values)
        train = json.loads((project / f"data/metrics/seed0/train/{name}.json").read_text())
        assert values["train_min"] == round(train["wall_seconds"] / 60, 2)
        if name in evaluated:
            record = json.loads((project / f"data/metrics/seed0/eval/{name}.json").read_text())
            assert (values["linear"], values["knn"]) == (round(record["linear_base"], 2), round(record["knn_all"], 2))
            assert values["shot_1"] == round(record["few_shot"]["1"]["mean"], 2)
        else:
            assert values["top1"] == round(train["top1"], 2)
    shown = json.loads(run(project, ".venv/bin/dvc", "metrics", "show", "--json").stdout)[""]["data"]
    assert shown == {SUMMARY: {"data": summary}}
    # `dvc exp show`'s columns: the fixed ones, params, dependencies (--json names them),
    # and as metrics exactly the summary's
    table = json.loads(run(project, ".venv/bin/dvc", "exp", "show", "--json").stdout)[0]["data"]
    assert list(table["metrics"]) == [SUMMARY]
    header = run(project, ".venv/bin/dvc", "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    others = {
        "Experiment",
        "rev",
        "typ",
        "Created",
        "parent",
        "State",
        "Executor",
        *table["deps"],
        *flat(table["params"]["params.yaml"]["data"]),
    }
    assert [column for column in header if column not in others] == flat(summary)
    plain = subprocess.run(
        [".venv/bin/dvc", "exp", "show", "--no-pager"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**ENV, "COLUMNS": str(TERMINAL_COLUMNS)},
    ).stdout
    print(
        f"\n`dvc exp show --csv`: {len(header)} columns, {len(flat(summary))} of them metrics; "
        f"`dvc exp show --no-pager` at {TERMINAL_COLUMNS} columns: {max(map(len, plain.splitlines()))} wide"
    )


@pytest.mark.slow
def test_the_readme_exp_show_fits_a_terminal(one_of_each_project):
    """The README's `dvc exp show` command after an experiment, as a user compares it with
    the committed run: in a 200-column terminal every column it prints is whole (no '…'):
    the experiment, its date, the summary values the change moved and the changed param."""
    project, _, _ = one_of_each_project
    shows = {c.split("&&")[-1].strip() for c in readme_commands() if "dvc exp show" in c}
    assert len(shows) == 1, f"the README shows several `dvc exp show` commands: {shows}"
    command = shows.pop()
    (project / ".gitignore").write_text((ROOT / ".gitignore").read_text() + "/.venv\n")
    for git in (
        "config user.name bowflow-test",
        "config user.email test@bowflow.invalid",
        "add .gitignore params.yaml dvc.lock data/metrics data/plots",
        "commit -qm results",
    ):
        run(project, "git", *shlex.split(git))
    lr = tiny_params(every_method=False)["generations"]["g2"]["student"]["lr"]
    ran = run(project, ".venv/bin/dvc", "exp", "run", "-n", "lr-double", "-S", f"generations.g2.student.lr={2 * lr}")
    assert set(re.findall(r"Running stage '([^']+)'", ran.stdout)) >= {"student_seed0@g2", "report"}
    before = json.loads(run(project, "git", "show", f"HEAD:{SUMMARY}").stdout)["g2"]
    after = json.loads((project / SUMMARY).read_text())["g2"]
    moved = [f"g2.{key}" for key in after if after[key] != before[key]]
    assert "g2.knn" in moved or "g2.linear" in moved, (before, after)
    shown = subprocess.run(
        ["bash", "-c", command],
        cwd=project,
        capture_output=True,
        text=True,
        env={**ENV, "COLUMNS": str(TERMINAL_COLUMNS)},
    )
    assert shown.returncode == 0, shown.stderr
    lines = [line.rstrip() for line in shown.stdout.splitlines()]
    assert "…" not in shown.stdout and max(map(len, lines)) <= TERMINAL_COLUMNS, shown.stdout
    assert lines[1].split() == ["Experiment", "Created", *moved, "generations.g2.student.lr"], shown.stdout
    assert any("[lr-double]" in line for line in lines)
    print(
        f"\n{command} at {TERMINAL_COLUMNS} columns: {len(lines[1].split())} columns, "
        f"{max(map(len, lines))} characters wide\n{shown.stdout}"
    )


@pytest.mark.slow
def test_adding_fine_tuning_reruns_only_its_stages_and_the_report(one_of_each_project, tmp_path):
    """A `finetune:` section added to a finished project (dvc.yaml rewritten, as
    `python -m workflow.pipeline` does) runs one fine-tuning stage per run (pretrain, generation,
    teacher, distilled student), the params check and the report: nothing that exists reruns.
    The report and the summary carry a column per fraction, and the stage's record holds each
    fraction's test top-1."""
    project = tmp_path / "project"
    shutil.copytree(one_of_each_project[0], project, symlinks=True)
    params = load_yaml(project / "params.yaml")
    params["finetune"] = {"fractions": [0.05, 0.2], "epochs": [2, 1], "batch_size": 64}
    write_params(project, params)
    kinds = {"pretrain": "pretrain", "generations": "student", "teachers": "teacher", "distill": "distill"}
    assert repro(project) == {
        "check_params",
        "report",
        *seeded(*{f"finetune_{kind}@{name}" for section, kind in kinds.items() for name in params[section]}),
    }
    for name in [name for section in kinds for name in params[section]]:
        record = json.loads((project / f"data/metrics/seed0/finetune/{name}.json").read_text())
        assert set(record["finetune"]) == {"0.05", "0.2"}
        assert record["finetune"]["0.05"]["train_images"] < record["finetune"]["0.2"]["train_images"]
        assert all(0 <= r["top1"] <= 100 for r in record["finetune"].values())
    summary = json.loads((project / SUMMARY).read_text())
    assert all({"ft_5pct", "ft_20pct"} <= set(values) for values in summary.values()), summary
    assert "Fine-tuned 5% | Fine-tuned 20%" in (project / "data/report/report.md").read_text()
    assert repro(project) == set()


@pytest.mark.slow
def test_adding_transfer_and_detection_reruns_only_their_stages_and_the_report(one_of_each_project, tmp_path):
    """`transfer:` and `detection:` added to a finished project (dvc.yaml rewritten, as `python -m
    workflow.pipeline` does) prepare their sources once (prepare_transfer@NAME and
    prepare_detection, for every run and seed) and run one transfer and one detect stage per run
    (pretrain, generation, teacher, distilled student), the params check and the report:
    nothing that exists reruns, and a second `dvc repro` runs nothing. The report and the
    summary carry their columns (one small generated multi-label source: VOC07 SVM mAP; the
    three detection APs), each detect record its scores, images and steps."""
    project = tmp_path / "project"
    shutil.copytree(one_of_each_project[0], project, symlinks=True)
    params = load_yaml(project / "params.yaml")
    params["transfer"] = {
        "sources": {"scenes": {"source": "shapes", "image_size": 12, "n_train": 80, "n_test": 60}},
        "svm_costs": [1.0],
    }
    params["detection"] = {
        "train_images": 16,
        "test_images": 8,
        "image_size": 16,
        "roi_size": 4,
        "proposals": 32,
        "roi_batch": 16,
        "steps": 2,
        "batch_size": 4,
        "warmup_steps": 1,
        "precise_bn_steps": 1,
    }
    write_params(project, params)
    kinds = {"pretrain": "pretrain", "generations": "student", "teachers": "teacher", "distill": "distill"}
    runs = [(kind, name) for section, kind in kinds.items() for name in params[section]]
    assert repro(project) == {
        "check_params",
        "prepare_transfer@scenes",
        "prepare_detection",
        "report",
        *seeded(*{f"{stage}_{kind}@{name}" for kind, name in runs for stage in ("transfer", "detect")}),
    }
    manifest = json.loads((project / "data/detection/manifest.json").read_text())
    assert manifest["counts"]["train"]["images"] == 16 and manifest["class_names"] == ["T", "L", "F", "P"]
    for _, name in runs:
        record = json.loads((project / f"data/metrics/seed0/transfer/{name}.json").read_text())
        scenes = record["transfer"]["scenes"]
        assert (scenes["metric"], scenes["train_images"], scenes["test_images"]) == ("map", 80, 60)
        assert 0 < scenes["value"] <= 100
        record = json.loads((project / f"data/metrics/seed0/detect/{name}.json").read_text())["detection"]
        assert record["steps"] == 2 and record["images"] == 16 and record["seconds"] > 0
        assert all(0 <= record[k] <= 100 for k in ("ap50", "ap75", "ap"))
    summary = json.loads((project / SUMMARY).read_text())
    assert all({"tr_scenes_map", "det_ap50", "det_ap75", "det_ap"} <= set(values) for values in summary.values())
    report = (project / "data/report/report.md").read_text()
    assert "Transfer scenes mAP" in report and "Det AP50 | Det AP75 | Det AP" in report
    assert repro(project) == set()
