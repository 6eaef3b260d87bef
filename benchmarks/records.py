"""Every published figure has its run record: re-derive the results tables of README.md,
docs/BENCHMARKS.md and each record's page (docs/results/NAME/README.md) from the records in
docs/results/ and list every difference.

    python -m benchmarks.records check                 # exit 1 and list every difference
    python -m benchmarks.records render family-cpu     # the tables (and claims) of one record
    python -m benchmarks.records root-lock             # does the root dvc.lock describe the tree?

**Every Markdown table has a marker.** The HTML comment on the line above a table (blank
lines between are allowed) names its record and how to build it, or says why it has none:

    <!-- record: docs/results/family-cpu table=family -->
    <!-- record: none (measured by hand: python -m benchmarks.bench_vocab) -->
    <!-- record: none (not a result: the pipeline's stages) -->

A table without a marker (outside fenced code) is a difference, and so is a marker without
a table under it. Tables marked `record: none` are counted, not checked; the counts are
printed.

**A table's prose** is the text next to it: from the previous heading or table (whichever is
nearer) down to the table's marker, and from the table's end to the next heading or table.
The prose of a record is that of all its tables.

A record is a folder with the run's `dvc.lock`, `metrics/` (train/, eval/, vocab/ as the
pipeline wrote them), `plots/train/` and its `report.md`; a seed study adds `seeds/`
(benchmarks.distill_seeds's output); a benchmark's record is its JSON. A `table=bench`
record is a folder of benchmarks/recording.py records (docs/results/bench/<benchmark>/,
one JSON per run, e.g. per thread count): its table is `benchmarks.<benchmark>.table` of
them in file-name order; its claims are declared in its claims.yaml (if any). `check`:
- rebuilds each marked table with the functions bowflow.report builds the pipeline's report
  with and compares it with the published one: the same header, exactly the record's rows
  in the record's order (rows named by their first cell: a missing, extra, duplicated or
  moved row is a difference), the same number of cells in every row, and every cell (`**`
  emphasis ignored);
- checks every figure of README and docs that carries a figure marker
  (`<!-- = <record> <quantity> ... -->`, bowflow.figures) against its record;
- checks the figures quoted in the prose of each record (each claim is a sentence
  fragment rendered from the record that must appear in that prose, case, whitespace and
  `**` ignored). A seeded record's claims are its paired verdicts, any other record's (a
  benchmark's too) are declared in its claims.yaml (benchmarks/claims.py), whose `holds:`
  verdicts must be true of the record;
- checks that the prose names the machine a record ran on: the record's machine class
  comes from the CPU flags its runs recorded (`cpu_flags` of its training metrics, the
  `machine.flags` of a benchmark's JSON; MACHINE_CLASSES, defined in docs/BENCHMARKS.md,
  "Machines"), and its prose must say "machine X" for each class among its runs. A record
  without flags (older than `cpu_flags`) is counted, not checked;
- checks the record itself: every metrics file and curve has the md5 its lock recorded;
  every stage in the lock belongs to a reported run (or to check_params / prepare /
  report, or to a run the preset needs but does not report: the distill presets'
  `random_init` placeholder); every summary a record stores (a benchmark's per-mode means,
  ratios, a seed study's means and margins) equals the one recomputed from its rows.

`root-lock` asks DVC (`Repo.status`) whether the root dvc.lock describes dvc.yaml,
params.yaml and the code of the working tree: the same stages, and per stage the same
command, params values and hashes of the dependencies that are not pipeline data. It runs
on a copy of the files a clone of the working tree would hold (git's tracked and
untracked, not ignored), so data a stage writes (data/prepared, data/models, ...) is absent
as on a fresh clone and is not compared; its producer's command, params and code are.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmarks.bench_precision import summarize as precision_summarize
from benchmarks.claims import join
from benchmarks.claims import rendered as declared_claims
from benchmarks.distill_seeds import spread
from bowflow import figures, report

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/BENCHMARKS.md")  # and every docs/results/<record>/README.md
MARKER = re.compile(r"^\s*<!--\s*record:\s*(?P<body>.*?)\s*-->\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s")
INFRA_STAGES = {"check_params", "prepare", "report"}
# Runs a preset needs but no table reports: the distill presets' `pretrain:` holds one run
# because the pipeline's SSL branch needs one (presets/distill-*.yaml say so).
SUPPORT_RUNS = {kind: {"random_init"} for kind in ("distill", "distill-margins", "distill-seeds")}
# The machine classes of docs/BENCHMARKS.md ("Machines"), by the first of these CPU flags
# (bowflow.compute.RELEVANT_FLAGS) a CPU has: B has AMX tiles, A AVX-512 bf16 without AMX,
# C AVX2 only.
MACHINE_CLASSES = (("B", "amx_bf16"), ("A", "avx512_bf16"), ("C", "avx2"))
# "machine C", "machines A and B", "Machine A's class"
MACHINE_NAMES = re.compile(r"(?i:machines?)\s+([A-Z](?:(?:,\s*|\s+and\s+)[A-Z])*)\b")


@dataclass
class Table:
    """A Markdown table: where it is, what its marker says, and its cells."""

    file: str
    line: int  # 1-based line of the marker (of the first row if unmarked)
    record: str | None  # folder relative to the repository root; None: unrecorded
    kind: str | None
    note: str = ""
    rows: list[list[str]] = field(default_factory=list)  # header first, separator dropped
    marked: bool = True
    start: int = 0  # 0-based first line (the marker's when marked)
    end: int = 0  # 0-based line after the last row


@dataclass
class Document:
    """A Markdown file as the check reads it: its tables, headings and marker problems."""

    name: str
    lines: list[str]
    tables: list[Table] = field(default_factory=list)  # every table, marked or not, in order
    headings: list[int] = field(default_factory=list)  # 0-based lines
    problems: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- parsing


def split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def is_separator(cells: list[str]) -> bool:
    """A Markdown table's header separator row: |---|:--:|."""
    return all(re.fullmatch(r":?-+:?", c) for c in cells)


def parse_marker(body: str) -> tuple[str | None, str | None, str]:
    """'docs/results/x table=kind' -> (record, kind, ''); 'none (measured by hand: ...)'
    -> (None, kind or None, the note)."""
    kind = re.search(r"\btable=(\S+)", body)
    if body.startswith("none"):
        return None, kind.group(1) if kind else None, body[4:].strip()
    if not kind:
        raise ValueError(f"record marker without table=KIND: {body!r}")
    return body.split()[0], kind.group(1), ""


def new_table(doc: Document, marker: tuple[int, str] | None, start: int, end: int) -> Table:
    """The table of lines [start, end) of `doc`, with the marker above it (line, body) if any;
    a missing or unreadable marker is recorded in doc.problems."""
    rows = [split_row(line) for line in doc.lines[start:end]]
    rows = [r for r in rows if not is_separator(r)]
    if marker is None:
        doc.problems.append(
            f"{doc.name}:{start + 1}: a table without a record marker: put "
            f"<!-- record: docs/results/NAME table=KIND --> or <!-- record: none "
            f"(measured by hand: ...) --> or <!-- record: none (not a result: ...) "
            f"--> on the line above it"
        )
        return Table(doc.name, start + 1, None, None, rows=rows, marked=False, start=start, end=end)
    line, body = marker
    try:
        record, kind, note = parse_marker(body)
    except ValueError as error:
        doc.problems.append(f"{doc.name}:{line + 1}: {error}")
        return Table(doc.name, line + 1, None, None, rows=rows, marked=False, start=line, end=end)
    return Table(doc.name, line + 1, record, kind, note, rows, start=line, end=end)


def parse_document(path: Path, name: str) -> Document:
    """Every table of a Markdown file (fenced code skipped) with its marker, and the headings."""
    doc = Document(name, path.read_text().splitlines())
    lines, marker, fenced, i, fence_line = doc.lines, None, False, 0, 0
    dangling = lambda m: doc.problems.append(  # noqa: E731
        f"{name}:{m[0] + 1}: record marker not followed by a table"
    )
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):
            fenced, fence_line = not fenced, i
        elif not fenced and (match := MARKER.match(line)):
            if marker:
                dangling(marker)
            marker = (i, match.group("body"))
        elif not fenced and line.lstrip().startswith("|"):
            end = i
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                end += 1
            if end - i >= 2 and is_separator(split_row(lines[i + 1])):
                doc.tables.append(new_table(doc, marker, i, end))
                marker = None
            i = end
            continue
        elif not fenced and HEADING.match(line):
            doc.headings.append(i)
        if marker and line.strip() and i != marker[0]:
            dangling(marker)
            marker = None
        i += 1
    if marker:
        dangling(marker)
    if fenced:  # the tables after it would go unchecked
        doc.problems.append(f"{name}:{fence_line + 1}: code fence never closed")
    return doc


def find_tables(path: Path, name: str) -> list[Table]:
    """Every marked table of a Markdown file."""
    return [t for t in parse_document(path, name).tables if t.marked]


def prose(doc: Document, table: Table) -> str:
    """The text next to a table: from the previous heading or table down to its marker, and
    from its end to the next heading or table."""
    bounds = [(h, h + 1) for h in doc.headings] + [(t.start, t.end) for t in doc.tables]
    before = max((end for start, end in bounds if end <= table.start), default=0)
    after = min((start for start, end in bounds if start >= table.end), default=len(doc.lines))
    return "\n".join(doc.lines[before : table.start] + doc.lines[table.end : after])


def plain(text: str) -> str:
    """Cell or prose text as compared: emphasis dropped, whitespace collapsed."""
    return " ".join(text.replace("**", "").split())


def md_cells(markdown: str) -> list[list[str]]:
    """The rows of the first Markdown table in `markdown` (header first, no separator)."""
    rows = [split_row(line) for line in markdown.splitlines() if line.startswith("|")]
    return [r for r in rows if not is_separator(r)]


# ----------------------------------------------------------------------------- records


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def lineage(record: Path) -> list[dict]:
    """bowflow.report.load_lineage of the record, with each run's method label taken from
    the method registry when its metrics predate `method_label` (the cifar10-cpu run)."""
    from bowflow.roles.base import get_method

    records = report.load_lineage(record / "metrics" / "eval")
    for r in records:
        if "method_label" not in r:
            r["method_label"] = get_method(r["method"]).label
            r["label"] = report.model_label(r)
    return records


def load_yaml(path: Path) -> dict:
    """A YAML file parsed by libyaml when PyYAML has it (a record's dvc.lock is thousands
    of lines: the pure-Python parser spent most of a check's time on them)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(), Loader=loader) or {}


def lock_stages(record: Path) -> dict:
    return load_yaml(record / "dvc.lock")["stages"]


# Stages that prepare an evaluation's source once for every run (prepare_transfer@NAME, where
# NAME is the source, not a run; prepare_detection).
SOURCE_STAGES = ("prepare_transfer@", "prepare_detection")


def stage_run(stage: str) -> str | None:
    """The run a stage of a lock trains or evaluates (None for check_params/prepare/report and
    the stages that prepare an evaluation's source).
    `teacher` and `evaluate_teacher` are the RotNet g0 stages of the pipeline before
    `pretrain:` existed (the cifar10-cpu run)."""
    if stage in INFRA_STAGES or stage.startswith(SOURCE_STAGES):
        return None
    if "@" in stage:
        return stage.split("@", 1)[1]
    if stage in ("teacher", "evaluate_teacher"):
        return "g0"
    return stage


def minutes_seconds(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


# ----------------------------------------------------------------------------- tables


def table_generations(record: Path) -> tuple[list[list[str]], set[str]]:
    """The report's first table (bowflow.report.markdown_table): model, few-shot, linear, k-NN."""
    records = lineage(record)
    return md_cells(report.markdown_table(records)), {r["name"] for r in records}


def table_stage_times(record: Path) -> tuple[list[list[str]], set[str]]:
    """Wall time of each stage of a generations run, from its metrics (bowflow.report
    .stage_times): the RotNet teacher, each vocabulary and student, the evaluations as a
    range. `prepare` writes no metrics, so it has no cell."""
    times = dict(report.stage_times(record / "metrics"))
    generations = sorted({name.split("/")[1] for name in times if name.startswith("vocab/")})
    header, cells = ["stage"], ["wall time"]
    header.append("teacher")
    cells.append(minutes_seconds(times["train/g0"]))
    for g in generations:
        header += [f"vocab {g}", f"student {g}"]
        cells += [minutes_seconds(times[f"vocab/{g}"]), minutes_seconds(times[f"train/{g}"])]
    evals = [round(v) for k, v in times.items() if k.startswith("eval/")]
    header.append("evaluate (each)")
    cells.append(f"{min(evals)}-{max(evals)} s" if min(evals) != max(evals) else f"{min(evals)} s")
    return [header, cells], {"g0", *generations}


def family_method(r: dict, by_name: dict[str, dict]) -> str:
    label = r["label"]
    if r.get("method") == "random_init":
        return f"{label} (control)"
    if r.get("parent"):
        parent = by_name[r["parent"]]
        return f"{label} (from {parent['label']} {parent['name']})"
    return label


def table_family(record: Path) -> tuple[list[list[str]], set[str]]:
    """The report's side-by-side table (bowflow.report.comparison_table) without its Parent
    column, the parent and the control named in Method. A record of one backbone drops the
    Params column (one width for all); a record of several names each run's backbone in
    Method (`report.arch_label`: convnet-16, vit-4-128) and keeps Params."""
    records = lineage(record)
    by_name = {r["name"]: r for r in records}
    archs = {report.arch_label(r["train"]) for r in records if r["train"].get("arch")}
    rows = md_cells(report.comparison_table(records))
    header = rows[0]
    drop = ("Parent",) if len(archs) > 1 else ("Parent", "Params")
    keep = [i for i, h in enumerate(header) if h not in drop]
    out = [[header[i] for i in keep]]
    method = header.index("Method")
    for row in rows[1:]:
        row = list(row)
        r = by_name[row[0]]
        row[method] = family_method(r, by_name)
        if len(archs) > 1:
            row[method] += f", {report.arch_label(r['train'])}"
        out.append([row[i] for i in keep])
    return out, set(by_name)


def distill_pair(record: Path) -> tuple[str, str, dict[str, dict[str, str]], list[str], dict]:
    """The one teacher -> student pair of a distillation record, from
    bowflow.report.distill_tables: (teacher arch, student arch, {column title: {row label:
    cell}}, row labels in the lock's stage order, the runs' metrics)."""
    runs = report.load_supervised(record / "metrics" / "train")
    text = report.distill_tables(runs)
    columns: dict[str, dict[str, str]] = {}
    for block in text.split("### ")[1:]:
        title = block.splitlines()[0].strip()
        rows = md_cells(block)
        if len(rows[0]) != 3:
            raise ValueError(f"{record}: {len(rows[0]) - 2} teacher -> student pairs; this table layout has one")
        pair = rows[0][1]
        columns[title] = {r[0]: r[1] for r in rows[1:]}
    teacher, student = pair.split(" → ")
    labels = ["Teacher (vanilla)", "Student (vanilla)"]
    for stage in lock_stages(record):
        name = stage_run(stage)
        if stage.startswith("distill@") and name in runs:
            labels.append(runs[name]["method_label"])
    return teacher, student, columns, labels, runs


def distill_label(label: str, teacher: str, student: str) -> str:
    return {
        "Teacher (vanilla)": f"Teacher {teacher} (vanilla)",
        "Student (vanilla)": f"Student {student} (vanilla)",
    }.get(label, label)


def table_distill(record: Path, margins: bool = False) -> tuple[list[list[str]], set[str]]:
    """One pair's distillation results as rows: top-1, with `margins` its margin over the
    vanilla student, parameters, peak memory, training time; cells as
    bowflow.report.DISTILL_COLUMNS formats them."""
    teacher, student, columns, labels, runs = distill_pair(record)
    top1 = report.DISTILL_COLUMNS["Top-1 accuracy (%)"][0]
    by_label = {r["method_label"]: r for n, r in runs.items() if r.get("parent")}
    vanilla = next(r for n, r in runs.items() if not r.get("parent") and report.arch_label(r) == student)
    header = [
        "Row",
        "Top-1 (%)",
        *(["vs vanilla student"] if margins else []),
        "Params (M)",
        "Peak RSS (GB)",
        "Train time (min)",
    ]
    rows = [header]
    for label in labels:
        margin = f"{top1(by_label[label]) - top1(vanilla):+.2f}" if label in by_label else ""
        rows.append(
            [
                distill_label(label, teacher, student),
                columns["Top-1 accuracy (%)"][label],
                *([margin] if margins else []),
                columns["Parameters (M)"][label],
                columns["Peak memory (GB)"][label],
                columns["Training time (min)"][label],
            ]
        )
    return rows, set(runs)


def seed_study(record: Path) -> tuple[list[int], dict[str, list[float]], str, dict]:
    """The seed study of a record: (seeds, {stage: top-1 per seed}, the vanilla stage,
    the runs' seed-0 metrics by stage). Seed 0 is the pipeline's run (metrics/train/), the
    others seeds/s<seed>/<run>.json (benchmarks.distill_seeds)."""
    study = load_json(record / "seeds" / "seeds.json")
    seeds = study["seeds"]
    stages = [row["row"] for row in study["rows"]]
    top1, metrics = {}, {}
    for stage in stages:
        name = stage_run(stage)
        metrics[stage] = load_json(record / "metrics" / "train" / f"{name}.json")
        top1[stage] = [metrics[stage]["top1"]] + [
            load_json(record / "seeds" / f"s{s}" / f"{name}.json")["top1"] for s in seeds[1:]
        ]
    return seeds, top1, stages[0], metrics


def table_distill_seeds(record: Path) -> tuple[list[list[str]], set[str]]:
    """Top-1 of each student row by seed, mean, sample sd and the margin over the vanilla
    student (benchmarks.distill_seeds.spread), the teacher's single seed above them; the
    distilled rows in the lock's stage order, as in the distill tables."""
    seeds, top1, vanilla, metrics = seed_study(record)
    order = {stage: i for i, stage in enumerate(lock_stages(record))}
    teacher_name = metrics[next(s for s in top1 if s != vanilla)]["parent"]
    teacher = load_json(record / "metrics" / "train" / f"{teacher_name}.json")
    student = report.arch_label(metrics[vanilla])
    header = ["Row"] + [f"seed {s}" for s in seeds] + ["mean", "sd", "margin [min, max]"]
    rows = [
        header,
        [f"Teacher {report.arch_label(teacher)} (vanilla)", f"{teacher['top1']:.2f}"] + [""] * (len(seeds) + 2),
    ]
    place = lambda r: (r["row"] != vanilla, order.get(r["row"], len(order)))  # noqa: E731
    for r in sorted(spread(top1, vanilla), key=place):
        label = "Student (vanilla)" if r["row"] == vanilla else metrics[r["row"]]["method_label"]
        margin = f"{r['margin']:+.2f} [{r['margin_min']:+.2f}, {r['margin_max']:+.2f}]" if "margin" in r else ""
        rows.append(
            [distill_label(label, "", student)]
            + [f"{v:.2f}" for v in r["top1"]]
            + [f"{r['mean']:.2f}", f"{r['sd']:.2f}", margin]
        )
    return rows, {teacher_name, *(stage_run(s) for s in top1)}


PRECISION_LABELS = {
    "default": "fp32 (`default`)",
    "bf16-channels-last": "`bf16-channels-last` (now)",
    "bf16-channels-last+bf16-softmax": "bf16 + bf16 softmax (before)",
}


def precision_summary(data: dict) -> dict:
    """benchmarks.bench_precision's summary recomputed from the record's rows (its own
    `summarize`), for every metric the stored summary holds."""
    modes = data["config"]["modes"]
    metrics = tuple(data["summary"][modes[0]])
    return precision_summarize(data["rows"], modes, metrics)


def table_precision(record: Path) -> tuple[list[list[str]], set[str]]:
    """docs/BENCHMARKS.md section 11 from benchmarks.bench_precision's JSON: per mode the
    per-seed k-NN and 5-shot, their mean ± sd, the paired difference against fp32 (mean,
    min..max) and the mean final training loss, all from the rows."""
    data = load_json(record / "precision.json")
    summary = precision_summary(data)
    header = [
        "mode",
        "k-NN (3 seeds)",
        "mean ± sd",
        "diff vs fp32 (min..max)",
        "5-shot (3 seeds)",
        "mean ± sd",
        "diff vs fp32 (min..max)",
        "final loss",
    ]
    out = [header]
    for mode in data["config"]["modes"]:
        cells = [PRECISION_LABELS.get(mode, mode)]
        for metric in ("knn", "five_shot"):
            m = summary[mode][metric]
            cells += [
                " / ".join(f"{v:.2f}" for v in m["values"]),
                f"{m['mean']:.2f} ± {m['sd']:.2f}",
                "" if mode == "default" else f"{m['diff_mean']:+.2f} ({m['diff_min']:+.2f}..{m['diff_max']:+.2f})",
            ]
        losses = [r["final_loss"] for r in data["rows"] if r["mode"] == mode]
        cells.append(f"{statistics.mean(losses):.3f}")
        out.append(cells)
    return out, set()


ABLATION_SHOTS = (1, 5, 10, 50)


def ablation_seeds(record: Path) -> dict[str, dict[int, dict]]:
    """benchmarks.ablate_generation's JSON files of a record, <record>/seed<S>/g<N>.json:
    {generation: {seed: the file's content}}, generations and seeds in order."""
    out: dict[str, dict[int, dict]] = {}
    for path in sorted(record.glob("seed*/g*.json"), key=lambda p: (p.stem, int(p.parent.name[4:]))):
        out.setdefault(path.stem, {})[int(path.parent.name[4:])] = load_json(path)
    return dict(sorted(out.items()))


def table_ablation(record: Path) -> tuple[list[list[str]], set[str]]:
    """docs/BENCHMARKS.md section 12 from benchmarks.ablate_generation's JSON files, one per
    generation and training seed (<record>/seed<S>/g<N>.json): per generation and variant,
    in the files' order, its targets, captured fraction and evaluation, each the mean over
    the seeds (layer and words: their values), and the 5-shot difference against the
    pipeline row of the same seed (mean, min..max, how many seeds it is above)."""
    header = [
        "run",
        "seeds",
        "layer",
        "words",
        "usage perplexity",
        "captured",
        "Linear",
        "k-NN",
        *(f"{n}-shot" for n in ABLATION_SHOTS),
        "5-shot - pipeline, paired by seed",
    ]
    out = [header]
    for generation, by_seed in ablation_seeds(record).items():
        seeds = list(by_seed)
        variants = list(dict.fromkeys(r["variant"] for s in seeds for r in by_seed[s]["rows"]))
        for variant in variants:
            rows = {s: r for s in seeds for r in by_seed[s]["rows"] if r["variant"] == variant}

            def values(key, rows=rows):
                return [rows[s][key] for s in rows]

            def mean(key, fmt, values=values):
                return format(statistics.mean(values(key)), fmt)

            paired = ""
            if variant != "pipeline":
                base = {s: next(r for r in by_seed[s]["rows"] if r["variant"] == "pipeline") for s in rows}
                diffs = [rows[s]["shot_5"] - base[s]["shot_5"] for s in rows]
                paired = (
                    f"{statistics.mean(diffs):+.2f} ({min(diffs):+.2f}..{max(diffs):+.2f}; "
                    f"above at {sum(d > 0 for d in diffs)} of {len(diffs)})"
                )
            out.append(
                [
                    f"{generation} {variant}",
                    ", ".join(map(str, rows)),
                    " / ".join(dict.fromkeys(map(str, values("layer")))),
                    " / ".join(dict.fromkeys(map(str, values("words")))),
                    mean("usage_perplexity", ".1f"),
                    mean("captured", ".2f"),
                    mean("linear", ".1f"),
                    mean("knn", ".1f"),
                    *(mean(f"shot_{n}", ".1f") for n in ABLATION_SHOTS),
                    paired,
                ]
            )
    return out, set()


def processes_summary(row: dict) -> dict:
    """What benchmarks.bench_processes derives from one method's two runs: the images/s ratio
    N : 1 (2 decimals) and the final losses' relative difference |a - b| / max(|a|, |b|)."""
    one, many = row["one"], row["many"]
    scale = max(abs(one["loss"]), abs(many["loss"]))
    return {
        "ratio": round(many["images_per_second"] / one["images_per_second"], 2),
        "loss_difference": abs(one["loss"] - many["loss"]) / scale if scale else 0.0,
    }


def table_processes(record: Path) -> tuple[list[list[str]], set[str]]:
    """docs/BENCHMARKS.md section 13 from benchmarks.bench_processes's JSON: per method the
    last epoch's images/s in one process and in N under torchrun, their ratio, both final
    losses and the wall time of each run (ratio and loss difference from the runs)."""
    data = load_json(record / "processes.json")
    n = data["processes"]
    out = [
        [
            "method",
            "1 process: threads, images/s",
            f"{n} processes: threads each, images/s",
            f"ratio {n} : 1",
            "final loss 1 / N (difference / larger loss)",
            "wall s (1 / N)",
        ]
    ]
    for r in data["rows"]:
        one, many, derived = r["one"], r["many"], processes_summary(r)
        threads = one["threads"] or "torch's default"  # 0: one per physical core
        out.append(
            [
                r["method"],
                f"{threads}, {one['images_per_second']:.1f}",
                f"{many['threads']}, {many['images_per_second']:.1f}",
                f"{derived['ratio']:.2f}",
                f"{one['loss']} / {many['loss']} ({derived['loss_difference']:.1e})",
                f"{one['wall_seconds']} / {many['wall_seconds']}",
            ]
        )
    return out, set()


# ----------------------------------------------------------------- records with several seeds
# A pipeline record with `metrics/seed<S>/` folders (params.yaml's seeds:): its tables are
# the report's own seed-aware tables, built by bowflow.report from the record's metrics.


def seed_runs(record: Path) -> dict[str, dict[int, dict]]:
    """bowflow.report.load_seeds of a record: {run: {seed: evaluation metrics}}."""
    return report.load_seeds(record / "metrics")


def table_seeds(record: Path) -> tuple[list[list[str]], set[str]]:
    """The report's first table over seeds: each run's mean ± sd over its seeds."""
    per_seed = seed_runs(record)
    return md_cells(report.seed_table(per_seed)), set(per_seed)


def table_paired(record: Path) -> tuple[list[list[str]], set[str]]:
    """The report's paired comparisons (against the control, against the parent)."""
    per_seed = seed_runs(record)
    return md_cells(report.paired_table(per_seed)), set(per_seed)


def study_baseline(record: Path) -> Path:
    """The fp32 record a precision study's record names as its baseline (study.json)."""
    return ROOT / load_json(record / "study.json")["baseline"]


MODE_METRICS = ("few_shot_1", "few_shot_5", "linear_base", "knn_all")


def mode_rows(record: Path) -> list[dict]:
    """Each run x metric of a study record against its baseline record, paired by seed:
    {run, label, metric, base (mean, sd), mode (mean, sd), diffs, mean, sd, verdict}."""
    base, mode = report.load_seeds(study_baseline(record) / "metrics"), seed_runs(record)
    rows = []
    for run, by_seed in mode.items():
        for metric in MODE_METRICS:
            a = {s: report.accuracy_values(r)[metric] for s, r in by_seed.items()}
            b = {s: report.accuracy_values(r)[metric] for s, r in base.get(run, {}).items()}
            seeds = sorted(set(a) & set(b))
            if not seeds:
                continue
            diffs = [a[s] - b[s] for s in seeds]
            verdict = (
                "higher at every seed"
                if all(d > 0 for d in diffs)
                else "lower at every seed"
                if all(d < 0 for d in diffs)
                else "mixed"
            )
            rows.append(
                {
                    "run": run,
                    "label": f"{by_seed[seeds[0]]['label']} ({run})",
                    "metric": metric,
                    "base": report.spread([b[s] for s in seeds]),
                    "mode": report.spread([a[s] for s in seeds]),
                    "diffs": diffs,
                    **report.spread(diffs),
                    "verdict": verdict,
                }
            )
    return rows


def table_modes(record: Path) -> tuple[list[list[str]], set[str]]:
    """A compute mode against fp32 over the same seeds (benchmarks.seed_study records):
    per run and metric, each mode's mean ± sd over seeds, and the paired difference."""
    compared = mode_rows(record)
    rows = [["Model", "Metric", "fp32", "this mode", "difference (paired by seed)", "per seed", "verdict"]]
    for r in compared:
        rows.append(
            [
                r["label"],
                report.metric_label(r["metric"]),
                report.mean_sd_cell(r["base"]),
                report.mean_sd_cell(r["mode"]),
                f"{r['mean']:+.1f} ± {r['sd']:.1f}",
                " / ".join(f"{d:+.1f}" for d in r["diffs"]),
                r["verdict"],
            ]
        )
    return rows, {r["run"] for r in compared}


def table_spread(record: Path) -> tuple[list[list[str]], set[str]]:
    """benchmarks.spread_sources's study (spread/spread.json of a seeded record): per source
    of randomness, the sd over seeds of each metric with the other sources held fixed."""
    data = load_json(record / "spread" / "spread.json")
    metrics = list(data["sd"]["all"])
    names = {
        "all": "every source (the pipeline's seeds)",
        "parent": "the parent (its seed's RotNet)",
        "vocab": "the vocabulary's k-means",
        "student": "the student's init, order and views",
        "episodes": "the few-shot episodes (same model)",
    }
    rows = [
        ["Seed moves", *[f"sd {m.replace('shot_', '')}-shot" if m.startswith("shot_") else f"sd {m}" for m in metrics]]
    ]
    for source, sd in data["sd"].items():
        rows.append([names[source], *[f"{sd[m]:.1f}" for m in metrics]])
    return rows, set()


def bench_records(record: Path) -> list[dict]:
    """The benchmarks/recording.py records of a `bench` folder, in file-name order."""
    return [load_json(p) for p in sorted(record.glob("*.json"))]


def bench_module(records: list[dict]):
    """The benchmark module that wrote these records (all the same one)."""
    import importlib

    names = {r["benchmark"] for r in records}
    if len(names) != 1:
        raise ValueError(f"a bench record holds the records of one benchmark, not {sorted(names)}")
    return importlib.import_module(f"benchmarks.{names.pop()}")


def table_bench(record: Path) -> tuple[list[list[str]], set[str]]:
    """A benchmark's table from its records: `benchmarks.<benchmark>.table(records)`."""
    records = bench_records(record)
    if not records:
        raise FileNotFoundError(f"{record}: no benchmark record (*.json)")
    return bench_module(records).table(records), set()


def table_peer_summary(record: Path) -> tuple[list[list[str]], set[str]]:
    """A peer benchmark's short table (README) from its records: `summary_table(records)`."""
    records = bench_records(record)
    if not records:
        raise FileNotFoundError(f"{record}: no benchmark record (*.json)")
    return bench_module(records).summary_table(records), set()


def is_bench(folder: Path) -> bool:
    """A folder of benchmarks/recording.py records (no pipeline metrics, no lock)."""
    return not (folder / "dvc.lock").exists() and any(
        {"benchmark", "measurements"} <= set(load_json(p)) for p in folder.glob("*.json")
    )


TABLES = {
    "bench": table_bench,
    "peer-summary": table_peer_summary,
    "seeds": table_seeds,
    "paired": table_paired,
    "modes": table_modes,
    "spread": table_spread,
    "ablation": table_ablation,
    "processes": table_processes,
    "precision": table_precision,
    "generations": table_generations,
    "stage-times": table_stage_times,
    "family": table_family,
    "distill": table_distill,
    "distill-margins": lambda record: table_distill(record, margins=True),
    "distill-seeds": table_distill_seeds,
}


# ----------------------------------------------------------------------------- prose claims


def accuracy_columns(record: Path) -> dict:
    """{column: run record -> accuracy}: linear, k-NN and each few-shot column of the record."""
    value = {"linear": lambda r: r["linear_base"], "k-NN": lambda r: r["knn_all"]}
    for n in report.shots_of(lineage(record)):
        value[f"{n}-shot"] = lambda r, n=n: r["few_shot"][n]["mean"]
    return value


# Figures quoted in the prose beside a record's tables, by record folder name.
def prose_metric(metric: str) -> str:
    """'few_shot_5' -> '5-shot', 'linear_base' -> 'base linear', 'knn_all' -> 'k-NN',
    'finetune_1pct' -> 'fine-tuned 1%', 'transfer_scenes_map' -> 'transfer scenes mAP'."""
    if metric.startswith("few_shot_"):
        return f"{metric[len('few_shot_') :]}-shot"
    if metric.startswith(("finetune_", "transfer_", "det_")):  # 'fine-tuned 1%', 'transfer scenes mAP', 'Det AP50'
        label = report.metric_label(metric)
        return label if metric.startswith("det_") else label[0].lower() + label[1:]
    return {"linear_base": "base linear", "knn_all": "k-NN"}.get(metric, metric)


def paired_sentences(per_seed: dict[str, dict[int, dict]]) -> list[str]:
    """One sentence per comparison of bowflow.report.paired_comparisons, grouping its
    metrics by verdict: 'BoWNet (g1) against RotNet (g0), its parent: above at every seed on
    n = 1, n = 5 and k-NN; mixed on base linear'. A seeded record's prose states these, so
    every 'above'/'below' it says holds at every seed of the record."""
    grouped: dict[tuple[str, str, str], dict[str, list[str]]] = {}
    for c in report.paired_comparisons(per_seed):
        by_verdict = grouped.setdefault((c["run"], c["partner"], c["kind"]), {})
        by_verdict.setdefault(c["verdict"], []).append(prose_metric(c["metric"]))
    label = lambda run: f"{report.model_label(next(iter(per_seed[run].values())))} ({run})"  # noqa: E731
    out = []
    for (run, partner, kind), by_verdict in grouped.items():
        role = "its parent" if kind == "parent" else "the untrained control"
        parts = [
            f"{verdict} on {join(metrics)}"
            for verdict in ("above at every seed", "below at every seed", "mixed")
            if (metrics := by_verdict.get(verdict))
        ]
        out.append(f"{label(run)} against {label(partner)}, {role}: " + "; ".join(parts))
    return out


def claims_seeds(record: Path) -> list[str]:
    """A record with several seeds: its paired comparisons, sentence by sentence."""
    return paired_sentences(seed_runs(record))


def record_claims(folder: Path) -> list[str]:
    """The sentence fragments a record's prose must hold: a record with several seeds, its
    paired verdicts; any other (a benchmark's too), its claims.yaml (benchmarks/claims.py)."""
    if any(folder.glob("metrics/seed*/eval")):
        return claims_seeds(folder)
    return declared_claims(folder)[0]


# ----------------------------------------------------------------------------- tables vs records


def compare_row_names(where: str, published: list[str], recorded: list[str]) -> list[str]:
    """The published rows (by first cell) must be exactly the record's, in its order."""
    pub, rec = Counter(published), Counter(recorded)
    out = [f"{where}: row '{key}': recorded but not published" for key in rec if key not in pub]
    out += [f"{where}: row '{key}': published but not in the record" for key in pub if key not in rec]
    out += [
        f"{where}: row '{key}': published {pub[key]} times, {rec[key]} in the record"
        for key in pub
        if key in rec and pub[key] != rec[key]
    ]
    if not out and published != recorded:
        out.append(f"{where}: rows in another order than the record's: published {published} vs recorded {recorded}")
    return out


def compare_cells(where: str, header: list[str], published: list[str], recorded: list[str]) -> list[str]:
    """One row: the same number of cells, and each cell equal."""
    key = recorded[0]
    if len(published) != len(recorded):
        return [
            f"{where}: row '{key}': {len(published)} cells published, {len(recorded)} in the "
            f"record: published {published} vs recorded {recorded}"
        ]
    return [
        f"{where}: row '{key}' column '{column}': published '{p}' vs recorded '{r}'"
        for column, p, r in zip(header[1:], published[1:], recorded[1:])
        if p != r
    ]


def compare(table: Table, rendered: list[list[str]]) -> list[str]:
    """Every difference between a published table and the one its record gives: header, the
    rows (by first cell, count and order), and each row's cells."""
    where = f"{table.file}:{table.line} table={table.kind}"
    published = [[plain(c) for c in row] for row in table.rows]
    recorded = [[plain(c) for c in row] for row in rendered]
    if published[0] != recorded[0]:
        return [f"{where}: columns: published {published[0]} vs recorded {recorded[0]}"]
    names = lambda rows: [row[0] for row in rows[1:]]  # noqa: E731
    out = compare_row_names(where, names(published), names(recorded))
    if out:  # pair each record row with its first published namesake
        first = {}
        for row in published[1:]:
            first.setdefault(row[0], row)
        pairs = [(first[row[0]], row) for row in recorded[1:] if row[0] in first]
    else:
        pairs = list(zip(published[1:], recorded[1:]))
    for pub, rec in pairs:
        out += compare_cells(where, recorded[0], pub, rec)
    return out


# ----------------------------------------------------------------------------- records' own consistency


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def check_record(root: Path, record: str, kinds: set[str], runs: set[str]) -> list[str]:
    """The record's own consistency. Every stage of its lock is check_params, prepare or
    report, or trains or evaluates a reported run (or a support run) and wrote the record's
    metrics and curves, with the md5 the lock holds; every metrics file and curve of the
    record was written by exactly one stage of the lock. A stage left over from another
    pipeline or preset fails one of these: its run is not reported, or the files it locked
    are not the record's. A lock lists every output under `outs` (dvc.yaml's `metrics:`,
    `plots:` and `outs:` alike), so records whose stages declared their JSON as metrics
    (before data/metrics/summary.json) and as `cache: false` outs read the same; a record's
    metrics/summary.json is the report stage's."""
    folder = root / record
    if not (folder / "dvc.lock").exists():  # a benchmark's JSON record: no stages to check
        return []
    stages = lock_stages(folder)
    allowed = runs | {run for kind in kinds for run in SUPPORT_RUNS.get(kind, ())}
    files = {
        "data/" + str(p.relative_to(folder)): p
        for p in [
            *folder.glob("metrics/*.json"),
            *folder.glob("metrics/*/*.json"),
            *folder.glob("plots/train/*.csv"),
            *folder.glob("metrics/seed*/*/*.json"),
            *folder.glob("plots/seed*/train/*.csv"),
        ]
    }
    writers: dict[str, list[str]] = {path: [] for path in files}
    out = []
    for name, stage in stages.items():
        run = stage_run(name)
        if run is not None and run not in allowed:
            out.append(f"{record}/dvc.lock: stage '{name}' belongs to no reported run")
            continue
        for entry in stage.get("outs", []):
            path = entry["path"]
            if not path.startswith(("data/metrics/", "data/plots/")) or path.endswith("generations.csv"):
                continue
            if path not in files:
                continue  # a record may keep only some of a run's files
            if entry.get("md5") != md5(files[path]):
                out.append(f"{record}/dvc.lock: stage '{name}' wrote another {path} than the record's")
            else:
                writers[path].append(name)
    for path, names in writers.items():
        if len(names) != 1:
            out.append(f"{record}/{path[5:]}: written by {len(names)} stages of the lock {names}")
    return out


def differ(stored, recomputed) -> bool:
    """Stored and recomputed summary values differ (floats beyond rounding noise)."""
    if isinstance(stored, (int, float)) and isinstance(recomputed, (int, float)):
        return not math.isclose(stored, recomputed, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(stored, list) and isinstance(recomputed, list) and len(stored) == len(recomputed):
        return any(differ(a, b) for a, b in zip(stored, recomputed))
    return stored != recomputed


def summary_differences(where: str, stored: dict, recomputed: dict) -> list[str]:
    """Each field of a stored summary ({name: value or nested dict}) against the recomputed one."""
    out = []
    for key in sorted(set(stored) | set(recomputed), key=str):
        a, b = stored.get(key), recomputed.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += summary_differences(f"{where} {key}", a, b)
        elif differ(a, b):
            out.append(f"{where} {key}: stored {a} vs recomputed from the rows {b}")
    return out


def summary_precision(record: str, folder: Path) -> list[str]:
    """precision.json: the per-mode summary equals bench_precision's summary of its rows."""
    data = load_json(folder / "precision.json")
    return summary_differences(f"{record}/precision.json: summary", data["summary"], precision_summary(data))


def summary_processes(record: str, folder: Path) -> list[str]:
    """processes.json: each method's ratio and loss difference equal those of its two runs."""
    out = []
    for row in load_json(folder / "processes.json")["rows"]:
        stored = {key: row.get(key) for key in ("ratio", "loss_difference")}
        out += summary_differences(f"{record}/processes.json: {row['method']}", stored, processes_summary(row))
    return out


# A variant's flag -> the field of its ablation row that shows it.
ABLATION_FIELDS = {"vocab.layer": "layer", "vocab.size": "words", "student.epochs": "epochs"}


def summary_ablation(record: str, folder: Path) -> list[str]:
    """seed<S>/<gN>.json of benchmarks.ablate_generation: its rows are already summaries of
    runs the record does not keep, so what is checked is that each row is the variant it
    names: the file's generation and seed are its name and folder's; a flag of
    ABLATION_FIELDS shows in its field and the others equal the pipeline row's; a variant
    that changes no vocab flag has the pipeline row's vocabulary (target entropy and usage
    perplexity: the same vocab command)."""
    out = []
    for path in sorted(folder.glob("seed*/g*.json")):
        data, where = load_json(path), f"{record}/{path.relative_to(folder)}"
        if data["generation"] != path.stem:
            out.append(f"{where}: generation '{data['generation']}' in a file named {path.name}")
        if f"seed{data.get('seed')}" != path.parent.name:
            out.append(f"{where}: seed {data.get('seed')} in a folder named {path.parent.name}")
        base = next(r for r in data["rows"] if r["variant"] == "pipeline")
        for row in data["rows"]:
            flags = dict(item.split("=", 1) for item in row["variant"].split(",") if "=" in item)
            expected = {f: flags.get(flag, base[f]) for flag, f in ABLATION_FIELDS.items()}
            if not any(flag.startswith("vocab.") for flag in flags):
                expected |= {f: base[f] for f in ("target_entropy", "usage_perplexity")}
            out += [
                f"{where}: variant '{row['variant']}': {f} {row[f]} but the variant gives {v}"
                for f, v in expected.items()
                if str(row[f]) != str(v)
            ]
    return out


def summary_seeds(record: str, folder: Path) -> list[str]:
    """seeds/seeds.json: every row's top-1 by seed, mean, sd and margins equal
    benchmarks.distill_seeds.spread of the metrics files (seed 0 the pipeline's run)."""
    seeds, top1, vanilla, _ = seed_study(folder)
    recomputed = {r["row"]: r for r in spread(top1, vanilla)}
    out = []
    for row in load_json(folder / "seeds" / "seeds.json")["rows"]:
        out += summary_differences(f"{record}/seeds/seeds.json: {row['row']}", row, recomputed[row["row"]])
    return out


# What each table kind's record stores beside its rows, recomputed.
SUMMARIES = {
    "precision": summary_precision,
    "processes": summary_processes,
    "ablation": summary_ablation,
    "distill-seeds": summary_seeds,
}


# ----------------------------------------------------------------------------- machine classes


def machine_class(flags: list[str]) -> str | None:
    """The docs/BENCHMARKS.md machine class of a CPU with these flags (None: no class)."""
    return next((letter for letter, flag in MACHINE_CLASSES if flag in flags), None)


def record_flags(folder: Path) -> list[list[str]]:
    """The CPU flags each run of a record recorded: `cpu_flags` of its training metrics (the
    seed study's too), `machine.flags` or `cpu_flags` of a benchmark's JSON (processes.json;
    an ablation's seed<S>/g<N>.json); runs that predate them give none."""
    out = []
    for path in sorted(
        [
            *folder.glob("metrics/train/*.json"),
            *folder.glob("seeds/s*/*.json"),
            *folder.glob("metrics/seed*/train/*.json"),
        ]
    ):
        flags = load_json(path).get("cpu_flags")
        if flags is not None:
            out.append(flags)
    for path in sorted([*folder.glob("*.json"), *folder.glob("seed*/g*.json")]):
        data = load_json(path)
        machine = data.get("machine")
        if isinstance(machine, dict) and "flags" in machine:
            out.append(machine["flags"])
        elif isinstance(data.get("cpu_flags"), list):
            out.append(data["cpu_flags"])
    return out


def named_machines(text: str) -> set[str]:
    """The machine letters a text names: 'machine C', 'machines A and B', 'machine A's'."""
    return {letter for names in MACHINE_NAMES.findall(text) for letter in re.findall(r"[A-Z]", names)}


def check_machine(where: str, record: str, flags: list[list[str]], text: str) -> list[str]:
    """Every machine class among a record's runs is named ('machine X') in its prose."""
    classes = {machine_class(f) for f in flags}
    out = []
    if None in classes:
        out.append(
            f"{where} {record}: cpu_flags {[f for f in flags if machine_class(f) is None][0]} "
            f"match no machine class of docs/BENCHMARKS.md ({MACHINE_CLASSES})"
        )
    named = named_machines(text)
    names = "machine " + ", ".join(sorted(named)) if named else "no machine"
    for letter in sorted(classes - {None} - named):
        flag = dict(MACHINE_CLASSES)[letter]
        out.append(
            f"{where} {record}: its runs' cpu_flags ({flag}) make it machine {letter}'s class, "
            f"but the prose beside its tables names {names}"
        )
    return out


def record_modes(folder: Path) -> set[str]:
    """The compute modes a record's trainings ran in, as params.yaml spells them
    ('fp32-channels-last-t1'): `compute` of each training's metrics, where recorded."""
    from bowflow.compute import describe

    paths = [*folder.glob("metrics/train/*.json"), *folder.glob("metrics/seed*/train/*.json")]
    ablation = {
        r["compute"]
        for p in folder.glob("seed*/g*.json")
        for r in load_json(p).get("rows", [])
        if isinstance(r.get("compute"), str)
    }  # an ablation's rows: their students' modes
    return ablation | {describe(m["compute"]) for m in map(load_json, paths) if isinstance(m.get("compute"), dict)}


def check_mode(where: str, record: str, modes: set[str], text: str) -> list[str]:
    """Every compute mode a record's trainings ran in is named in the prose beside its tables."""
    return [
        f"{where} {record}: its trainings ran in compute mode {mode} (their metrics), but the "
        f"prose beside its tables does not name it"
        for mode in sorted(modes)
        if mode not in text
    ]


# ----------------------------------------------------------------------------- the check


@dataclass
class RecordUse:
    """What the documents publish from one record: where first, table kinds, runs, prose."""

    where: str
    kinds: set[str] = field(default_factory=set)
    runs: set[str] = field(default_factory=set)
    prose: list[str] = field(default_factory=list)


def missing_claims(where: str, claims: list[str], text: str) -> list[str]:
    """The claims (sentence fragments) not found in `text`, as differences."""
    text = plain(text).lower()
    return [
        f"{where}: claim not found in the prose beside its table(s): '{c}'"
        for c in claims
        if plain(c).lower() not in text
    ]


def check(root: Path, allow_missing: set[str] = frozenset(), verbose: bool = True) -> list[str]:
    """Every difference between the documents and the records, as lines; prints counts."""
    out, checked, unrecorded, skipped, unknown_machine = [], 0, [], [], []
    uses: dict[str, RecordUse] = {}
    for name in figures.documents(root, DOCS):
        doc = parse_document(root / name, name)
        out += doc.problems
        for table in doc.tables:
            if not table.marked:
                continue
            where = f"{name}:{table.line}"
            if table.record is None:
                unrecorded.append(f"{where} {table.note}")
                continue
            folder = root / table.record
            if not folder.is_dir():
                if table.record in allow_missing:
                    skipped.append(f"{where} {table.record}")
                else:
                    out.append(f"{where} table={table.kind}: record missing: {table.record}")
                continue
            if table.kind not in TABLES:
                out.append(f"{where}: unknown table kind '{table.kind}' (known: {sorted(TABLES)})")
                continue
            rendered, runs = TABLES[table.kind](folder)
            out += compare(table, rendered)
            use = uses.setdefault(table.record, RecordUse(where))
            use.kinds.add(table.kind)
            use.runs |= runs
            use.prose.append(prose(doc, table))
            checked += 1
    for record, use in uses.items():
        folder, text = root / record, "\n".join(use.prose)
        claims = record_claims(folder)
        out += missing_claims(f"{use.where} {record}", claims, text)
        out += [f"{use.where} {record}: {failed}" for failed in declared_claims(folder)[1]]
        flags = record_flags(folder)
        if not flags:
            unknown_machine.append(record)
        out += check_machine(use.where, record, flags, text)
        out += check_mode(use.where, record, record_modes(folder), text)
        out += check_record(root, record, use.kinds, use.runs)
        for kind in sorted(use.kinds & set(SUMMARIES)):
            out += SUMMARIES[kind](record, folder)
    out += figures.check(root)  # figures quoted in prose, each marked with its record
    if verbose:
        print(
            f"{checked} tables checked against their records, {len(unrecorded)} unrecorded, "
            f"{len(skipped)} skipped (record absent, allowed); {figures.count(root)} figures in "
            f"prose checked (bowflow.figures)"
        )
        for line in unrecorded:
            print(f"  unrecorded: {line}")
        for line in skipped:
            print(f"  skipped: {line}")
        for record in unknown_machine:
            print(f"  machine not checked (no CPU flags recorded): {record}")
    return out


# ----------------------------------------------------------------------------- the root lock


def is_pipeline_data(path: str, outputs: set[str]) -> bool:
    """A path some stage writes, inside such an output, or a folder holding one."""
    return any(path == o or path.startswith(o + "/") or o.startswith(path + "/") for o in outputs)


def stage_changes(stage: str, changes: list, outputs: set[str]) -> list[str]:
    """One stage's entries of DVC's status that say the lock does not describe the tree: a
    changed command, params values, a changed dependency that is not pipeline data. Changed
    outputs are not: they are absent on a fresh clone."""
    out = []
    for change in changes:
        if isinstance(change, str):  # "changed command"; "always changed" is no news
            if change != "always changed":
                out.append(f"dvc.lock: stage '{stage}': {change}")
            continue
        for path, state in change.get("changed deps", {}).items():
            if isinstance(state, dict):  # a params file: {param: new / modified / deleted}
                out += [f"dvc.lock: stage '{stage}': {path} {param}: {s}" for param, s in state.items()]
            elif not is_pipeline_data(path, outputs):
                out.append(f"dvc.lock: stage '{stage}': {path}: {state}")
    return out


def copy_tree(root: Path, dest: Path) -> None:
    """The files of a git working tree that a clone of it would hold: tracked and untracked,
    not ignored, as they are on disk now (a deleted file stays out)."""
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    )
    for name in sorted(set(filter(None, listing.stdout.split("\0")))):
        source = root / name
        if source.is_file() or source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name, follow_symlinks=False)


def lock_differences(tree: Path) -> list[str]:
    """DVC's status of a tree (dvc.lock against dvc.yaml, params.yaml and the files): stages
    locked but not defined or defined but not locked, and stage_changes of each locked one."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    locked = set(load_yaml(tree / "dvc.lock").get("stages", {}))
    try:  # in the tree: DVC names stages relative to the working folder
        with contextlib.chdir(tree), Repo(str(tree), config={"core": {"no_scm": True}}) as repo:
            stages = list(repo.index.stages)
            defined = {stage.addressing for stage in stages}
            outputs = {os.path.relpath(o.fs_path, repo.root_dir) for s in stages for o in s.outs}
            status = repo.status()
    except DvcException as error:
        return [f"dvc status failed: {error}"]
    out = [f"dvc.lock: stage '{s}' is not in dvc.yaml" for s in sorted(locked - defined)]
    out += [f"dvc.lock: dvc.yaml stage '{s}' is not locked" for s in sorted(defined - locked)]
    for stage, changes in status.items():
        if stage in locked:
            out += stage_changes(stage, changes, outputs)
    return out


def check_root_lock(root: Path) -> list[str]:
    """The root dvc.lock describes the tree a clone would get: DVC's status of a copy of the
    repository's git-visible files (so the pipeline's data, ignored by git, is absent as on a
    fresh clone, and a `dvc repro` running in the repository is not in the way)."""
    with tempfile.TemporaryDirectory(prefix="root-lock-") as scratch:
        copy_tree(root, Path(scratch))
        return lock_differences(Path(scratch))


def render(root: Path, record: str, kind: str | None) -> str:
    folder = root / record if (root / record).is_dir() else root / "docs" / "results" / record
    rel = str(folder.relative_to(root))
    kinds = (
        [kind]
        if kind
        else sorted(
            {
                t.kind
                for name in figures.documents(root, DOCS)
                for t in find_tables(root / name, name)
                if t.record == rel
            }
        )
    )
    if not kinds:
        raise SystemExit(
            f"no table of README.md, docs/BENCHMARKS.md or docs/results/*/README.md names {rel}: give --table"
        )
    text = []
    for k in kinds:
        rows, _ = TABLES[k](folder)
        text += [f"<!-- record: {rel} table={k} -->", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        text += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        text.append("")
    text += [f"claim: {c}" for c in record_claims(folder)]
    return "\n".join(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="compare every marked table with its record")
    c.add_argument("--allow-missing", nargs="*", default=[], help="record folders whose absence is not a failure")
    r = sub.add_parser("render", help="print the tables of one record")
    r.add_argument("record", help="docs/results/NAME or NAME")
    r.add_argument("--table", choices=sorted(TABLES))
    sub.add_parser("root-lock", help="does dvc.lock describe dvc.yaml, params.yaml and the code?")
    args = parser.parse_args(argv)
    if args.command == "render":
        print(render(args.root, args.record, args.table))
        return 0
    problems = check(args.root, set(args.allow_missing)) if args.command == "check" else check_root_lock(args.root)
    for line in problems:
        print(line)
    print(f"{len(problems)} differences" if problems else "no differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
