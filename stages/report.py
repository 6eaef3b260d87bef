"""Stage report: the results table (Markdown), figures, and the accuracy-by-generation CSV.

    python -m stages.report --prepared data/prepared --eval data/metrics/eval \
        --train data/plots/train --vocab data/models --out data/report \
        --generations-csv data/plots/generations.csv --runs data/runs.json \
        --words_shown 8 --patches_per_word 8

--runs (check_params writes it) lists the runs params.yaml names: metrics under --eval and
--train of any other run (left from another params file) stay out of the report.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from bowflow import report
from bowflow.cli import parse_section
from bowflow.data.prepared import load_ssl_images
from bowflow.io import load_torch, write_csv
from bowflow.sections import ReportParams


def paths(parser):
    for name in ("prepared", "eval", "train", "vocab", "out", "generations-csv"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--runs", type=Path, help="JSON list of the runs to report (default: every "
                        "run with metrics under --eval)")
    parser.add_argument("--seed", type=int, default=0)


def main(argv=None):
    params, args = parse_section(ReportParams, argv, __doc__, paths)
    names = json.loads(args.runs.read_text()) if args.runs else None
    records = report.load_lineage(args.eval, names)
    if not records:
        raise SystemExit(f"report: no evaluation metrics in {args.eval}"
                         + (f" of the runs in {args.runs}" if names is not None else ""))
    # Build the whole report in a temporary folder, then swap it in: never half a report.
    # A run killed mid-build leaves its folder behind (its `finally` never ran): remove it.
    for stale in args.out.parent.glob(".report-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".report-", dir=args.out.parent))
    try:
        report.plot_training_curves(args.train, records, work / "training_curves.png")
        report.plot_generations(records, work / "accuracy_by_generation.png")
        images, _ = load_ssl_images(args.prepared)
        figures = []
        for record in records:
            vocab_path = args.vocab / record["name"] / "vocab.pt"
            if not vocab_path.exists():
                continue
            vocab = load_torch(vocab_path)
            words, patches = report.word_patches(images, vocab["codes"], params.words_shown,
                                                 params.patches_per_word, args.seed)
            name = f"visual_words_{record['name']}.png"
            report.plot_word_patches(words, patches, f"Visual words of {vocab['teacher']}.{vocab['layer']} "
                                     f"(vocabulary of {record['label']})", work / name)
            figures.append(name)
        table = report.markdown_table(records)
        comparison = report.comparison_table(records)
        distillation = report.distill_tables(report.load_supervised(args.eval.parent / "train", names))
        times = report.stage_times(args.eval.parent, names)
        text = "\n".join([
            "# bowflow results", "",
            "Few-shot accuracy on the novel classes (mean ± 95% interval over episodes), "
            "linear probe on the base classes, k-NN on all classes; top-1 %.", "",
            table, "",
            "## Every run side by side", "",
            "Training cost (wall time and peak resident memory of the training stage, mean "
            "images/s) beside the same accuracies.", "",
            comparison, "",
            *(["## Distillation", "",
               "Rows: the teacher and the student trained alone, then each distillation method; "
               "columns: teacher → student pairs (the IFACD talk's tables).", "",
               distillation] if distillation else []),
            "![training curves](training_curves.png)", "",
            "![accuracy by generation](accuracy_by_generation.png)", "",
            *[f"![{f}]({f})\n" for f in figures],
            "## Stage wall times", "",
            "| stage | seconds |", "|---|---|",
            *[f"| {name} | {seconds:.1f} |" for name, seconds in times], ""])
        (work / "report.md").write_text(text)
        write_csv(args.generations_csv, report.generations_rows(records))
        if args.out.exists():
            shutil.rmtree(args.out)
        work.rename(args.out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    print(table)


if __name__ == "__main__":
    main()
