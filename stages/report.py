"""Stage report: the results tables (Markdown), figures, and the accuracy-by-generation CSV.

    python -m stages.report --prepared data/prepared --metrics data/metrics \
        --plots data/plots --models data/models --out data/report \
        --generations-csv data/plots/generations.csv --runs data/runs.json \
        --summary data/metrics/summary.json --words_shown 8 --patches_per_word 8

Every run trained once per seed: metrics in --metrics/seed{S}/{eval,train,vocab}/, curves in
--plots/seed{S}/train/, vocabularies in --models/seed{S}/gN/vocab.pt. --runs (check_params
writes it: {"runs": [...], "seeds": [...]}) names the runs and seeds params.yaml asks for:
metrics of any other run (left from another params file) stay out of the report. Tables give
each run's mean ± standard deviation over seeds, every training's own values, and the paired
comparisons (each run against the untrained control of its architecture, each generation
against its parent); the figures of one training (curves, visual words) are those of the
lowest seed.

--summary: the pipeline's one metrics file (`dvc metrics show`, `dvc exp show`): each run's
linear, k-NN, few-shot (shot_N), test top-1 and training minutes, means over its seeds
(`report.summary`). It lies outside the metrics this stage reads (dvc.yaml's deps are the
seed folders data/metrics/seed{S}, not data/metrics).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bowflow import report
from bowflow.cli import parse_section
from bowflow.data.prepared import load_ssl_images
from bowflow.io import load_torch, write_csv, write_json
from bowflow.sections import ReportParams


def paths(parser):
    for name in ("prepared", "metrics", "plots", "models", "out", "generations-csv"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument(
        "--runs",
        type=Path,
        required=True,
        help='JSON {"runs": [names], "seeds": [seeds]} of the runs and seeds to report',
    )
    parser.add_argument("--summary", type=Path, help="write the runs' summary metrics (JSON) here")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the pictured patches")


def main(argv=None):
    params, args = parse_section(ReportParams, argv, __doc__, paths)
    names, seeds = report.read_runs(args.runs)
    per_seed = report.load_seeds(args.metrics, names, seeds)
    if not per_seed:
        raise SystemExit(
            f"report: no evaluation metrics in {args.metrics}/seed*/eval of the runs and seeds in {args.runs}"
        )
    records = report.mean_records(per_seed)
    shown = min(seeds)  # the seed whose trainings the curve and visual-word figures show
    # Build the whole report in a temporary folder, then swap it in: never half a report.
    # A run killed mid-build leaves its folder behind (its `finally` never ran): remove it.
    for stale in args.out.parent.glob(".report-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".report-", dir=args.out.parent))
    try:
        report.plot_training_curves(
            args.plots / f"seed{shown}" / "train", records, work / "training_curves.png", seed=shown
        )
        report.plot_generations(records, work / "accuracy_by_generation.png")
        images, figures = None, []
        for record in records:
            vocab_path = args.models / f"seed{shown}" / record["name"] / "vocab.pt"
            if not vocab_path.exists():
                continue
            if images is None:
                images, _ = load_ssl_images(args.prepared)
            vocab = load_torch(vocab_path)
            words, patches = report.word_patches(
                images, vocab["codes"], params.words_shown, params.patches_per_word, args.seed
            )
            name = f"visual_words_{record['name']}.png"
            report.plot_word_patches(
                words,
                patches,
                f"Visual words of {vocab['teacher']}.{vocab['layer']} (vocabulary of {record['label']}, seed {shown})",
                work / name,
            )
            figures.append(name)
        table = report.seed_table(per_seed)
        paired = report.paired_table(per_seed)
        supervised = report.load_supervised_seeds(args.metrics, names, seeds)
        distillation = report.distill_tables(report.mean_supervised(supervised))
        times = report.seed_stage_times(args.metrics, names, seeds)
        text = "\n".join(
            [
                "# bowflow results",
                "",
                "Few-shot accuracy on the novel classes, linear probe on the base classes, k-NN on all "
                f"classes; top-1 %. Every run trained once per seed (seeds {', '.join(map(str, seeds))}).",
                "",
                table,
                "",
                *(["## Paired comparisons", "", paired, ""] if paired else []),
                "## Every run side by side",
                "",
                report.seed_comparison_table(per_seed),
                "",
                "## Every training",
                "",
                report.per_seed_table(per_seed),
                "",
                *(
                    [
                        "## Distillation",
                        "",
                        "Rows: the teacher and the student trained alone, then each distillation method; "
                        "columns: teacher → student pairs (the IFACD paper's tables).",
                        "",
                        distillation,
                    ]
                    if distillation
                    else []
                ),
                f"![training curves (seed {shown})](training_curves.png)",
                "",
                "![accuracy by generation](accuracy_by_generation.png)",
                "",
                *[f"![{f}]({f})\n" for f in figures],
                "## Stage wall times",
                "",
                "| stage | seconds |",
                "|---|---|",
                *[f"| {name} | {seconds:.1f} |" for name, seconds in times],
                "",
            ]
        )
        (work / "report.md").write_text(text)
        write_csv(args.generations_csv, report.seed_generations_rows(per_seed))
        if args.summary:
            write_json(args.summary, report.summary(per_seed, supervised))
        if args.out.exists():
            shutil.rmtree(args.out)
        work.rename(args.out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    print(table)


if __name__ == "__main__":
    main()
