"""Figures quoted in prose (bowflow.figures): each re-derived from its record, and a
changed figure is caught."""

import json
import re

import pytest
from benchmark_cli import run_benchmark

from bowflow import figures
from bowflow.scaffold import ROOT


@pytest.fixture()
def record(tmp_path):
    """A record of three training runs: two students and a placeholder."""
    train = tmp_path / "rec" / "metrics" / "train"
    train.mkdir(parents=True)
    for name, seconds, images, rate in (
        ("kd", 90.0, 1346, 250.4),
        ("crd", 60.0, 1346, 90.2),
        ("random_init", 6.0, 675, 16.0),
    ):
        (train / f"{name}.json").write_text(
            json.dumps({"wall_seconds": seconds, "train_images": images, "images_per_second": rate})
        )
    return tmp_path


@pytest.mark.parametrize(
    "quantity, args, expected",
    [
        ("minutes", "metrics/**/*.json", "2.6 min"),  # (90 + 60 + 6) / 60
        ("minutes", "metrics/train/*.json -random_init", "2.5 min"),
        ("count", "metrics/train/*.json", "3"),
        ("field", "train_images metrics/train/*.json -random_init", "1,346"),
        ("range", "images_per_second metrics/train/*.json -random_init", "90-250"),
    ],
)
def test_derive(record, quantity, args, expected):
    assert figures.derive(record / "rec", quantity, args.split()) == expected


def test_field_with_two_values_is_an_error(record):
    with pytest.raises(ValueError, match="train_images is not one value"):
        figures.derive(record / "rec", "field", ["train_images", "metrics/train/*.json"])


def test_pattern_matching_nothing_is_an_error(record):
    with pytest.raises(ValueError, match="matches 'metrics/eval/"):
        figures.derive(record / "rec", "count", ["metrics/eval/*.json"])


def test_a_changed_figure_is_caught(record):
    marker = "<!-- = rec minutes metrics/**/*.json -->"
    assert figures.check_text(f"took **2.6 min**{marker} in all", "doc.md", record) == []
    problems = figures.check_text(f"took **2.4 min**{marker} in all", "doc.md", record)
    assert len(problems) == 1 and "'2.6 min'" in problems[0] and "doc.md:1" in problems[0]
    # a figure moved away from its marker is caught too
    assert figures.check_text(f"took 2.6 min in all{marker}", "doc.md", record)


def test_published_figures_match_their_records():
    assert figures.check(ROOT) == []


# The figures issue 24 found wrong, each now marked so that it cannot come back unnoticed:
# (record, quantity) that the record's own page (docs/results/<name>/README.md, where its
# provenance lives) must quote through a marker.
MARKED = [
    ("docs/results/distill-digits", "minutes"),
    ("docs/results/distill-digits", "field"),
    ("docs/results/family-cpu", "minutes"),
    ("docs/results/family-cpu", "range"),
]


@pytest.mark.parametrize("record, quantity", MARKED)
def test_figures_found_wrong_are_marked(record, quantity):
    page = f"{record}/README.md"
    assert page in figures.documents(ROOT), f"{page} is not a published document"
    text = (ROOT / page).read_text()
    found = [
        m for m in figures.FIGURE.finditer(text) if m.group("record") == record and m.group("quantity") == quantity
    ]
    assert found, f"{page} quotes no {quantity} of {record} through a figure marker"
    for m in found:  # and each marked figure is checked: change it
        line_start = text.rfind("\n", 0, m.start()) + 1
        before = text[line_start : m.start()]
        digit = re.search(r"\d(?=\D*$)", before)
        bumped = before[: digit.start()] + str((int(digit.group()) + 1) % 10) + before[digit.end() :]
        assert figures.check_text(bumped + m.group(0), page, ROOT)


def test_the_records_check_runs_the_figures_check(record):
    """`python -m benchmarks.records check` fails on a wrong figure in a document it reads."""
    (record / "README.md").write_text("took **2.4 min**<!-- = rec minutes metrics/**/*.json --> in all\n")
    result = run_benchmark("records", "--root", record, "check", check=False)
    assert result.returncode == 1
    assert "README.md:1: rec minutes is '2.6 min'" in result.stdout
    (record / "README.md").write_text("took **2.6 min**<!-- = rec minutes metrics/**/*.json --> in all\n")
    assert run_benchmark("records", "--root", record, "check", check=False).returncode == 0
