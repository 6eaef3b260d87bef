"""The results report: the BoWNet paper's few-shot table (Gidaris et al., CVPR 2020,
https://arxiv.org/abs/2002.12247), training curves, accuracy by generation and
pictures of visual words.

Inputs are the metrics and curves the other stages wrote; nothing here trains or
evaluates. Rows follow the lineage: RotNet (g0), then BoWNet, BoWNet x2, ...

Two layouts. One training per run (older records): metrics/{eval,train,vocab}/NAME.json,
read by `load_lineage`, `load_supervised` and rendered by `markdown_table`,
`comparison_table`, `generations_rows`, `distill_tables` (± there is the 95% interval over
few-shot episodes). One training per run and seed (the pipeline now):
metrics/seed{S}/{eval,train,vocab}/NAME.json, read by `load_seeds` /
`load_supervised_seeds` into {run: {seed: record}} and rendered by the seed functions
below (`seed_table`, `per_seed_table`, `paired_table`, `seed_comparison_table`); each
table's caption says what its ± measures: seeds (training runs) or episodes (one training).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def model_label(record: dict) -> str:
    """'RotNet', 'BYOL' for pretrain runs; 'BoWNet', 'BoWNet x2' ... along a generation chain."""
    generation = record.get("generation", 0)
    method = record.get("method_label") or record.get("method", "model")
    return method if generation <= 1 else f"{method} x{generation}"


def load_lineage(eval_dir: Path, names: list[str] | None = None) -> list[dict]:
    """Evaluation records, pretrain runs first, then each generation along parent links;
    only the runs in `names` when given. Each record gets its `label` and, when its training
    metrics sit beside the evaluation folder (data/metrics/train/<name>.json), their cost
    figures under `train`."""
    records = {
        p.stem: json.loads(p.read_text())
        for p in sorted(Path(eval_dir).glob("*.json"))
        if names is None or p.stem in names
    }
    ordered = sorted(records.values(), key=lambda r: (r.get("generation", 0), r["name"]))
    train_dir = Path(eval_dir).parent / "train"
    for record in ordered:
        record["label"] = model_label(record)
        train = train_dir / f"{record['name']}.json"
        record["train"] = json.loads(train.read_text()) if train.exists() else {}
        attach_evaluations(record, Path(eval_dir).parent, record["name"])
    return ordered


# The per-run evaluation stages beside `evaluate` (each only with its optional params section):
# record key -> (folder under data/metrics/seedS/, the key of the stage's JSON holding the results)
EVALUATIONS = {
    "finetune": ("finetune", "finetune"),
    "transfer": ("transfer", "transfer"),
    "detection": ("detect", "detection"),
}


def attach_evaluations(record: dict, seed_dir: Path, name: str) -> None:
    """A run's results of the optional evaluation stages that ran (seedS/finetune/NAME.json,
    seedS/transfer/NAME.json, seedS/detect/NAME.json) as record["finetune"] ({fraction:
    {top1, ...}}), record["transfer"] ({source: {metric, value, ...}}) and record["detection"]
    ({ap50, ap75, ap, ...})."""
    for key, (folder, field) in EVALUATIONS.items():
        path = Path(seed_dir) / folder / f"{name}.json"
        if path.exists():
            record[key] = json.loads(path.read_text())[field]


def transfer_metric(source: str, result: dict) -> str:
    """A transfer source's metric name: 'transfer_<source>_top1' or 'transfer_<source>_map'."""
    return f"transfer_{source}_{result['metric']}"


# Detection columns (stages/detect.py, with a `detection:` section): metric -> the record's key
DETECTION_METRICS = {"det_ap50": "ap50", "det_ap75": "ap75", "det_ap": "ap"}


def finetune_metric(fraction: str) -> str:
    """A fine-tuning fraction's metric name: '0.01' -> 'finetune_1pct', '0.1' -> 'finetune_10pct'."""
    return f"finetune_{float(fraction) * 100:g}pct"


def comparison_table(records: list[dict]) -> str:
    """The comparison table of self-supervised pre-trained networks, as in OBoW (Gidaris et al.,
    https://arxiv.org/abs/2012.11552): one row per run with its training cost (epochs, batch,
    parameters, wall time, peak memory, images/s) and its accuracy (base linear, k-NN, few-shot
    with 95% intervals)."""
    shots = shots_of(records)
    header = [
        "Run",
        "Method",
        "Parent",
        "Epochs",
        "Batch",
        "Params",
        "Train time",
        "Peak RSS",
        "img/s",
        "Linear",
        "k-NN",
    ] + [f"{n}-shot" for n in shots]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        cells = cost_cells(r) + [f"{r['linear_base']:.1f}", f"{r['knn_all']:.1f}"]
        cells += [
            f"{r['few_shot'][n]['mean']:.1f} ± {r['few_shot'][n]['ci95']:.1f}" if n in r["few_shot"] else "-"
            for n in shots
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_cells(r: dict) -> list[str]:
    """Run, Method, Parent, Epochs, Batch, Params, Train time, Peak RSS, img/s of a record
    (its training metrics under `train`)."""
    t = r.get("train", {})
    return [
        r["name"],
        r["label"],
        r.get("parent") or "-",
        str(t.get("epochs", "-")),
        str(t.get("batch_size", "-")),
        f"{r['parameters'] / 1e6:.2f}M",
        f"{t['wall_seconds'] / 60:.1f} min" if "wall_seconds" in t else "-",
        f"{t['peak_rss_mb'] / 1024:.1f} GB" if "peak_rss_mb" in t else "-",
        f"{t['images_per_second']:.0f}" if "images_per_second" in t else "-",
    ]


def shots_of(records: list[dict]) -> list[str]:
    return sorted({n for r in records for n in r["few_shot"]}, key=int)


def markdown_table(records: list[dict]) -> str:
    shots = shots_of(records)
    header = ["Model"] + [f"n = {n}" for n in shots] + ["Base linear", "k-NN"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        cells = [f"{r['label']} ({r['name']})"]
        cells += [
            f"{r['few_shot'][n]['mean']:.1f} ± {r['few_shot'][n]['ci95']:.1f}" if n in r["few_shot"] else "-"
            for n in shots
        ]
        cells += [f"{r['linear_base']:.1f}", f"{r['knn_all']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def generations_rows(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        row = {
            "generation": r.get("generation", 0),
            "name": r["name"],
            "label": r["label"],
            "linear_base": r["linear_base"],
            "knn_all": r["knn_all"],
        }
        row.update({f"few_shot_{n}": r["few_shot"][n]["mean"] for n in r["few_shot"]})
        rows.append(row)
    return rows


def read_curve(path: Path) -> list[dict]:
    with open(path) as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def plot_training_curves(train_dir: Path, records: list[dict], out: Path, seed: int | None = None) -> None:
    """Loss per epoch of every model, and the captured fraction of the students (the curves
    of one seed's trainings when `seed` is given: train_dir is then plots/seed{S}/train)."""
    fig, (ax_loss, ax_cap) = plt.subplots(1, 2, figsize=(11, 4))
    for r in records:
        path = Path(train_dir) / f"{r['name']}.csv"
        if not path.exists():
            continue
        curve = read_curve(path)
        epochs = [c["epoch"] for c in curve]
        ax_loss.plot(epochs, [c["loss"] for c in curve], label=r["label"])
        if "captured" in curve[0]:
            ax_cap.plot(epochs, [c["captured"] for c in curve], label=r["label"])
    of_seed = "" if seed is None else f" (seed {seed})"
    ax_loss.set(xlabel="epoch", ylabel="training loss (nats)", title=f"Training loss{of_seed}")
    ax_cap.set(
        xlabel="epoch",
        ylabel="fraction",
        ylim=(0, 1),
        title=f"Students: fraction of the learnable BoW loss captured{of_seed}",
    )
    for ax in (ax_loss, ax_cap):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_generations(records: list[dict], out: Path) -> None:
    """Accuracy of every run; for `mean_records` (several seeds) the mean over seeds with
    the standard deviation over seeds as error bars."""
    fig, ax = plt.subplots(figsize=(6, 4))
    x = list(range(len(records)))
    seeds = any("spread" in r for r in records)

    def line(metric, values, **style):
        sd = [(r.get("spread", {}).get(metric, {}).get("sd") or 0.0) for r in records]
        if seeds:
            ax.errorbar(x, values, yerr=sd, capsize=3, **style)
        else:
            ax.plot(x, values, **style)

    for n in shots_of(records):
        line(f"few_shot_{n}", [r["few_shot"][n]["mean"] for r in records], marker="o", label=f"{n}-shot")
    line("linear_base", [r["linear_base"] for r in records], marker="s", label="base linear")
    line("knn_all", [r["knn_all"] for r in records], marker="^", label="k-NN")
    ax.set_xticks(x, [r["label"] for r in records])
    ax.set(ylabel="accuracy (%)", title="Accuracy by generation" + (" (mean ± sd over seeds)" if seeds else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def word_patches(
    images: torch.Tensor, codes: torch.Tensor, words_shown: int, per_word: int, seed: int
) -> tuple[list[int], list[list[torch.Tensor]]]:
    """Image patches under the map cells assigned to some visual words.

    images uint8 [N, 3, H, W]; codes [N, h*w] word per cell (h = w). The `words_shown`
    most used words are pictured with `per_word` random cells each; a cell's patch is the
    3 x 3-cell neighbourhood of the image centred on it (about its receptive field's core).
    -> (word ids, per word a list of uint8 patches [3, P, P]).
    """
    n, cells = codes.shape
    side = int(round(cells**0.5))
    stride = images.shape[-1] / side
    patch = max(4, int(round(3 * stride)))
    counts = torch.bincount(codes.flatten().long(), minlength=int(codes.max()) + 1)
    words = counts.argsort(descending=True)[:words_shown].tolist()
    generator = torch.Generator().manual_seed(seed)
    padded = torch.nn.functional.pad(images, (patch, patch, patch, patch))
    patches = []
    for word in words:
        where = torch.nonzero(codes.long() == word)
        pick = where[torch.randperm(len(where), generator=generator)[:per_word]]
        row = []
        for image_index, cell in pick.tolist():
            cy, cx = (cell // side + 0.5) * stride, (cell % side + 0.5) * stride
            top, left = int(round(cy - patch / 2)) + patch, int(round(cx - patch / 2)) + patch
            row.append(padded[image_index, :, top : top + patch, left : left + patch])
        patches.append(row)
    return words, patches


def plot_word_patches(words: list[int], patches: list[list[torch.Tensor]], title: str, out: Path) -> None:
    per_word = max(len(row) for row in patches)
    fig, axes = plt.subplots(len(words), per_word, figsize=(per_word * 0.9, len(words) * 0.9), squeeze=False)
    for i, (word, row) in enumerate(zip(words, patches)):
        for j in range(per_word):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(row[j].permute(1, 2, 0).numpy(), interpolation="nearest")
        axes[i][0].set_title(f"word {word}", fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def stage_times(metrics_root: Path, names: list[str] | None = None) -> list[tuple[str, float]]:
    """(stage file, wall seconds) of every metrics file under metrics_root (of the runs in
    `names` when given: the files are named after their run)."""
    out = []
    for path in sorted(Path(metrics_root).rglob("*.json")):
        if names is not None and path.stem not in names:
            continue
        data = json.loads(path.read_text())
        if "wall_seconds" in data:
            out.append((f"{path.parent.name}/{path.stem}", data["wall_seconds"]))
    return out


# ------------------------------------------------------------------ distillation tables


def arch_label(metrics: dict) -> str:
    """'resnet56' for a named architecture; 'convnet-16' / 'wrn-28-4' when width (and depth)
    choose the size."""
    parts = [metrics["arch"]] + [str(metrics[k]) for k in ("depth", "width") if metrics.get(k)]
    return "-".join(parts)


def load_supervised(train_dir: Path, names: list[str] | None = None) -> dict[str, dict]:
    """{run name: training metrics} of the runs that report a test top-1 (teachers: and
    distill: entries; only those in `names` when given), in name order."""
    runs = {}
    for path in sorted(Path(train_dir).glob("*.json")):
        if names is not None and path.stem not in names:
            continue
        record = json.loads(path.read_text())
        if "top1" in record:
            attach_evaluations(record, Path(train_dir).parent, path.stem)
            runs[path.stem] = record
    return runs


DISTILL_COLUMNS = {  # table title -> (cell value of a run's metrics, format, unit note)
    "Top-1 accuracy (%)": (lambda r: r["top1"], "{:.2f}", "test split, last epoch"),
    "Peak memory (GB)": (
        lambda r: r.get("peak_gpu_mb", r["peak_rss_mb"]) / 1024,
        "{:.2f}",
        "of the training process: GPU memory on a GPU, resident memory on a CPU",
    ),
    "Parameters (M)": (
        lambda r: r["trained_parameters"] / 1e6,
        "{:.3f}",
        "student + the method's extra modules (not the frozen teacher)",
    ),
    "Training time (min)": (lambda r: r["wall_seconds"] / 60, "{:.1f}", "wall clock"),
}


def distill_tables(runs: dict[str, dict]) -> str:
    """The four tables of the IFACD paper (Rios et al., "IFACD: Intermediate Features Augmented
    Contrastive Distillation", https://github.com/arkel23/layerwiseclr; CRD's benchmark,
    https://github.com/HobbitLong/RepDistiller): accuracy, memory, parameters, time: one column
    per teacher -> student pair, rows 'Teacher (vanilla)', 'Student (vanilla)' and one per
    distillation method, and the average over pairs. Empty when there is no distill run.
    `runs` from `mean_supervised` (one record per run, averaged over seeds, with `seeds`
    = n) adds "mean over N seeds" to each table's note.

    A pair's vanilla student is the teachers: run with the student's architecture (the
    first by name that is not the teacher itself)."""
    distilled = {n: r for n, r in runs.items() if r.get("parent")}
    if not distilled:
        return ""
    pairs: dict[str, dict[str, dict]] = {}  # pair label -> row label -> metrics
    for record in distilled.values():
        teacher = runs.get(record["parent"])
        if teacher is None:
            continue
        student_arch = arch_label(record)
        pair = f"{arch_label(teacher)} → {student_arch}"
        rows = pairs.setdefault(pair, {"Teacher (vanilla)": teacher})
        vanilla = next(
            (
                r
                for n, r in runs.items()
                if not r.get("parent") and n != record["parent"] and arch_label(r) == student_arch
            ),
            None,
        )
        if vanilla is not None:
            rows["Student (vanilla)"] = vanilla
        rows[record["method_label"]] = record
    labels = ["Teacher (vanilla)", "Student (vanilla)"]
    labels += sorted({label for rows in pairs.values() for label in rows} - set(labels))
    columns = list(pairs)
    counts = sorted({r["seeds"] for rows in pairs.values() for r in rows.values() if "seeds" in r})
    over = (
        ""
        if not counts
        else f"; mean over {counts[0]} seeds"
        if len(counts) == 1
        else f"; mean over each run's seeds ({counts[0]} to {counts[-1]})"
    )
    text = []
    for title, (value, fmt, note) in DISTILL_COLUMNS.items():
        text += [
            f"### {title}",
            "",
            f"{note}{over}.",
            "",
            "| Method | " + " | ".join(columns) + " | Average |",
            "|---|" + "---|" * (len(columns) + 1),
        ]
        for label in labels:
            cells = [pairs[c].get(label) for c in columns]
            values = [value(r) for r in cells if r is not None]
            shown = [fmt.format(value(r)) if r is not None else "-" for r in cells]
            average = fmt.format(sum(values) / len(values)) if len(values) == len(cells) else "-"
            text.append(f"| {label} | " + " | ".join(shown) + f" | {average} |")
        text.append("")
    return "\n".join(text)


# ------------------------------------------------------------------ one training per seed
#
# Layout: metrics_root/seed{S}/eval/NAME.json (and train/, vocab/ beside it). A run's
# records over seeds are {seed: record}; a report's, {run: {seed: record}} in lineage order.

T_975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)  # Student's t 0.975 quantile, df 1..30


def t_quantile(df: int) -> float:
    """Student's t 0.975 quantile with `df` degrees of freedom (two-sided 95%): scipy's when
    installed, else the table (df above 30 take df 30's value, slightly wide)."""
    try:
        from scipy.stats import t
    except ImportError:
        return T_975[min(df, 30) - 1]
    return float(t.ppf(0.975, df))


def read_runs(path: Path) -> tuple[list[str], list[int]]:
    """data/runs.json (check_params writes it): {"runs": [names], "seeds": [seeds]}."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not {"runs", "seeds"} <= set(data):
        raise ValueError(f'{path}: expected {{"runs": [...], "seeds": [...]}} (check_params writes it)')
    return list(data["runs"]), [int(s) for s in data["seeds"]]


def seed_folders(metrics_root: Path, seeds: list[int] | None = None) -> dict[int, Path]:
    """{seed: metrics_root/seed{S}} of `seeds`, or of every seed{S} folder there when None."""
    root = Path(metrics_root)
    if seeds is None:
        seeds = sorted(int(p.name[4:]) for p in root.glob("seed*") if p.is_dir() and p.name[4:].isdigit())
    return {seed: root / f"seed{seed}" for seed in sorted(seeds)}


def load_seeds(
    metrics_root: Path, names: list[str] | None = None, seeds: list[int] | None = None
) -> dict[str, dict[int, dict]]:
    """{run: {seed: evaluation record}} (`load_lineage` of each metrics_root/seed{S}/eval, so
    each record has its `label` and training metrics under `train`), runs in lineage order,
    only the runs in `names` and the seeds in `seeds` when given. A seed without a run's
    metrics is absent from that run's dict."""
    by_run: dict[str, dict[int, dict]] = {}
    for seed, folder in seed_folders(metrics_root, seeds).items():
        for record in load_lineage(folder / "eval", names):
            by_run.setdefault(record["name"], {})[seed] = record
    order = sorted(by_run, key=lambda n: (next(iter(by_run[n].values())).get("generation", 0), n))
    return {name: by_run[name] for name in order}


def load_supervised_seeds(
    metrics_root: Path, names: list[str] | None = None, seeds: list[int] | None = None
) -> dict[str, dict[int, dict]]:
    """{run: {seed: training metrics}} of the runs that report a test top-1 (`load_supervised`
    of each metrics_root/seed{S}/train)."""
    by_run: dict[str, dict[int, dict]] = {}
    for seed, folder in seed_folders(metrics_root, seeds).items():
        for name, record in load_supervised(folder / "train", names).items():
            by_run.setdefault(name, {})[seed] = record
    return {name: by_run[name] for name in sorted(by_run)}


def seed_stage_times(
    metrics_root: Path, names: list[str] | None = None, seeds: list[int] | None = None
) -> list[tuple[str, float]]:
    """(stage file, wall seconds) per seed: 'seed0/train/g0', 'seed0/eval/g0', ..."""
    return [
        (f"seed{seed}/{stage}", seconds)
        for seed, folder in seed_folders(metrics_root, seeds).items()
        for stage, seconds in stage_times(folder, names)
    ]


def accuracy_values(record: dict) -> dict[str, float]:
    """{metric: value} of one training's record: few_shot_N (mean over its episodes),
    linear_base, knn_all (evaluation records), top1 (supervised training metrics)."""
    values = {f"few_shot_{n}": record["few_shot"][n]["mean"] for n in sorted(record.get("few_shot", {}), key=int)}
    values |= {key: record[key] for key in ("linear_base", "knn_all", "top1") if key in record}
    values |= {finetune_metric(f): r["top1"] for f, r in record.get("finetune", {}).items()}
    values |= {transfer_metric(s, r): r["value"] for s, r in record.get("transfer", {}).items()}
    values |= {metric: record["detection"][key] for metric, key in DETECTION_METRICS.items() if "detection" in record}
    return values


def metric_label(metric: str) -> str:
    """The main table's column of a metric: 'n = 5', 'Base linear', 'k-NN', 'Top-1'."""
    if metric.startswith("few_shot_"):
        return f"n = {metric[len('few_shot_') :]}"
    if metric.startswith("finetune_"):
        return f"Fine-tuned {metric[len('finetune_') : -len('pct')]}%"
    if metric.startswith("transfer_"):
        source, _, kind = metric[len("transfer_") :].rpartition("_")
        return f"Transfer {source} {'mAP' if kind == 'map' else 'top-1'}"
    return {
        "linear_base": "Base linear",
        "knn_all": "k-NN",
        "top1": "Top-1",
        "det_ap50": "Det AP50",
        "det_ap75": "Det AP75",
        "det_ap": "Det AP",
    }[metric]


def metric_order(metrics) -> list[str]:
    """Few-shot columns by n, then base linear, k-NN, fine-tuning by fraction, transfer by
    source name, top-1 (as the main table)."""
    shots = sorted((m for m in set(metrics) if m.startswith("few_shot_")), key=lambda m: int(m[9:]))
    finetuned = sorted(
        (m for m in set(metrics) if m.startswith("finetune_")), key=lambda m: float(m[len("finetune_") : -len("pct")])
    )
    rest = [m for m in ("linear_base", "knn_all") if m in set(metrics)]
    transferred = sorted(m for m in set(metrics) if m.startswith("transfer_"))
    detection = [m for m in DETECTION_METRICS if m in set(metrics)]
    return shots + rest + finetuned + transferred + detection + (["top1"] if "top1" in set(metrics) else [])


def spread(values: list[float]) -> dict:
    """{mean, sd, n}: sd is the sample standard deviation (n - 1 in the denominator), None
    (undefined) with one value."""
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def _merge(values: list):
    """A value equal in every record stays; numbers that differ are averaged; dicts merge
    key by key; anything else that differs keeps the first (lowest seed's) value."""
    first = values[0]
    if all(v == first for v in values):
        return first
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.fmean(values)
    if all(isinstance(v, dict) for v in values):
        keys = dict.fromkeys(k for v in values for k in v)
        return {k: _merge([v[k] for v in values if k in v]) for k in keys}
    return first


def mean_record(by_seed: dict[int, dict]) -> dict:
    """One record of a run from its per-seed records, shaped like a one-training record so the
    one-training functions read it: every number averaged over seeds (the training cost under
    `train` too; values equal at every seed, e.g. epochs, kept as they are), plus
    `seeds` (n, the seeds with metrics), `seed_ids`, `values` {metric: {seed: value}} (the
    per-seed values) and `spread` {metric: {mean, sd, n}} (sd over seeds, None for n = 1).
    A few-shot entry's `sd` is that standard deviation over seeds; its `ci95` is the mean of
    the per-seed intervals over episodes."""
    records = list(by_seed.values())
    merged = copy.deepcopy(_merge(records))  # never the per-seed records' own dicts
    merged.pop("seed", None)
    if isinstance(merged.get("train"), dict):
        merged["train"].pop("seed", None)
    per_seed = {seed: accuracy_values(r) for seed, r in by_seed.items()}
    metrics = metric_order({m for values in per_seed.values() for m in values})
    merged["values"] = {m: {s: v[m] for s, v in per_seed.items() if m in v} for m in metrics}
    merged["spread"] = {m: spread(list(merged["values"][m].values())) for m in metrics}
    for n in merged.get("few_shot", {}):
        merged["few_shot"][n] = dict(merged["few_shot"][n], sd=merged["spread"][f"few_shot_{n}"]["sd"])
    merged["seeds"], merged["seed_ids"] = len(records), list(by_seed)
    return merged


def mean_records(per_seed: dict[str, dict[int, dict]]) -> list[dict]:
    """`mean_record` of every run, in the order of `per_seed` (lineage order from load_seeds)."""
    return [mean_record(by_seed) for by_seed in per_seed.values()]


def mean_supervised(per_seed: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """{run: mean_record} of `load_supervised_seeds`' runs, for `distill_tables`."""
    return {name: mean_record(by_seed) for name, by_seed in per_seed.items()}


def mean_sd_cell(stats: dict | None) -> str:
    """'72.3 ± 1.2' (mean ± sd over seeds); '72.3' with one seed (sd undefined)."""
    if stats is None:
        return "-"
    return f"{stats['mean']:.1f}" if stats["sd"] is None else f"{stats['mean']:.1f} ± {stats['sd']:.1f}"


def seeds_phrase(counts: list[int]) -> str:
    """'3 seeds (training runs)', or "each run's seeds (training runs; 2 to 3, the Seeds
    column)" when runs have different numbers of seeds."""
    counts = sorted(set(counts))
    if len(counts) == 1:
        return f"{counts[0]} seed" + ("s" if counts[0] != 1 else "") + " (training runs)"
    return f"each run's seeds (training runs; {counts[0]} to {counts[-1]}, the Seeds column)"


def seed_table(per_seed: dict[str, dict[int, dict]]) -> str:
    """The main accuracy table over seeds, with its caption: one row per run (Model =
    'Label (name)'), columns n = 1, n = 5, ..., Base linear, k-NN, Seeds. A cell is the mean
    over the run's seeds ± the sample standard deviation over seeds (training runs); a run
    with one seed shows its value alone."""
    records = mean_records(per_seed)
    metrics = metric_order({m for r in records for m in r["spread"]} - {"top1"})
    header = ["Model"] + [metric_label(m) for m in metrics] + ["Seeds"]
    caption = (
        f"Mean over seeds; ± is the standard deviation over {seeds_phrase([r['seeds'] for r in records])}"
        "; the interval over few-shot episodes of one training is in the per-seed "
        "table. A run with one seed shows its value alone (standard deviation undefined)."
    )
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        cells = [f"{r['label']} ({r['name']})"] + [mean_sd_cell(r["spread"].get(m)) for m in metrics]
        lines.append("| " + " | ".join(cells + [str(r["seeds"])]) + " |")
    return "\n".join(lines)


def per_seed_table(per_seed: dict[str, dict[int, dict]]) -> str:
    """One row per training (run, seed), with its caption: few-shot mean ± the 95% interval
    over that training's episodes (evaluation noise, not seed-to-seed spread), base linear
    and k-NN."""
    records = [r for by_seed in per_seed.values() for r in by_seed.values()]
    shots = shots_of(records)
    episodes = sorted({r["few_shot"][n].get("episodes") for r in records for n in r["few_shot"]} - {None})
    count = f"{episodes[0]} " if len(episodes) == 1 else ""
    header = ["Model", "Seed"] + [f"n = {n}" for n in shots] + ["Base linear", "k-NN"]
    lines = [
        f"One row per training (run and seed). Few-shot: mean ± the 95% interval over the {count}"
        "test episodes of that one training (episode-to-episode noise, not seed-to-seed spread); "
        "base linear and k-NN: one value per training.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for by_seed in per_seed.values():
        for seed, r in by_seed.items():
            cells = [f"{r['label']} ({r['name']})", str(seed)]
            cells += [
                f"{r['few_shot'][n]['mean']:.1f} ± {r['few_shot'][n]['ci95']:.1f}" if n in r["few_shot"] else "-"
                for n in shots
            ]
            cells += [f"{r['linear_base']:.1f}", f"{r['knn_all']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_comparison_table(per_seed: dict[str, dict[int, dict]]) -> str:
    """`comparison_table` over seeds, with its caption: cost columns are means over seeds,
    accuracy cells mean ± standard deviation over seeds; Seeds = n."""
    records = mean_records(per_seed)
    metrics = metric_order({m for r in records for m in r["spread"]} - {"top1"})
    shots = [m for m in metrics if m.startswith("few_shot_")]
    header = (
        ["Run", "Method", "Parent", "Epochs", "Batch", "Params", "Train time", "Peak RSS", "img/s", "Linear", "k-NN"]
        + [f"{m[9:]}-shot" for m in shots]
        + ["Seeds"]
    )
    lines = [
        f"Training cost: mean over seeds of the training stage's wall time, peak resident memory "
        f"and images/s. Accuracy: mean ± the standard deviation over "
        f"{seeds_phrase([r['seeds'] for r in records])}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in records:
        cells = cost_cells(r) + [mean_sd_cell(r["spread"].get(m)) for m in ["linear_base", "knn_all", *shots]]
        lines.append("| " + " | ".join(cells + [str(r["seeds"])]) + " |")
    return "\n".join(lines)


def seed_generations_rows(per_seed: dict[str, dict[int, dict]]) -> list[dict]:
    """generations.csv: `generations_rows` of the means over seeds, plus `seeds` (n)."""
    records = mean_records(per_seed)
    return [row | {"seeds": r["seeds"]} for row, r in zip(generations_rows(records), records)]


def _architecture(by_seed: dict[int, dict]) -> tuple | None:
    """(arch, width, depth) from a run's training metrics (`train` of its records)."""
    for record in by_seed.values():
        train = record.get("train") or {}
        if train.get("arch"):
            return train["arch"], train.get("width"), train.get("depth")
    return None


def comparison_partners(per_seed: dict[str, dict[int, dict]]) -> list[tuple[str, str, str]]:
    """(run, partner, kind) of every comparison, in run order. kind 'control': the untrained
    control of the run's architecture, the pretrain run (no parent) whose method is
    random_init with the same arch, width and depth in its training metrics (the first by
    name if several; a random_init run is not compared with a control). kind 'parent': a
    generation (a non-empty parent and generation >= 1, a BoWNet student) against its parent."""
    first = {name: next(iter(by_seed.values())) for name, by_seed in per_seed.items()}
    controls: dict[tuple, str] = {}
    for name in sorted(per_seed):
        if first[name].get("method") == "random_init" and not first[name].get("parent"):
            arch = _architecture(per_seed[name])
            if arch is not None:
                controls.setdefault(arch, name)
    pairs = []
    for name, by_seed in per_seed.items():
        record = first[name]
        arch = _architecture(by_seed)
        control = None if arch is None else controls.get(arch)
        if control is not None and record.get("method") != "random_init":
            pairs.append((name, control, "control"))
        parent = record.get("parent")
        if parent and record.get("generation", 0) >= 1 and parent in per_seed:
            pairs.append((name, parent, "parent"))
    return pairs


def paired_comparisons(per_seed: dict[str, dict[int, dict]]) -> list[dict]:
    """Every run against its partners (`comparison_partners`), paired by seed, per metric.

    For each (run, partner, metric) with at least one seed where both have the metric:
    diffs {seed: run - partner} (percentage points), n, mean, sd (sample standard deviation
    of the differences; None for n = 1), min, max, ci95_low / ci95_high (the paired t
    interval mean ± t(0.975, n - 1) * sd / sqrt(n); None for n = 1) and verdict: 'above at
    every seed' when every difference is > 0, 'below at every seed' when every one is < 0,
    else 'mixed' (a tie at some seed is mixed). A run beats its partner on a metric only
    where the verdict is 'above at every seed'.
    -> [{run, partner, kind ('control' | 'parent'), metric, diffs, n, mean, sd, min, max,
    ci95_low, ci95_high, verdict}]"""
    values = {name: {seed: accuracy_values(r) for seed, r in by_seed.items()} for name, by_seed in per_seed.items()}
    out = []
    for run, partner, kind in comparison_partners(per_seed):
        a, b = values[run], values[partner]
        metrics = metric_order({m for v in a.values() for m in v} & {m for v in b.values() for m in v})
        for metric in metrics:
            diffs = {
                seed: a[seed][metric] - b[seed][metric]
                for seed in sorted(set(a) & set(b))
                if metric in a[seed] and metric in b[seed]
            }
            if not diffs:
                continue
            d = list(diffs.values())
            stats = spread(d)
            half = t_quantile(len(d) - 1) * stats["sd"] / math.sqrt(len(d)) if stats["sd"] is not None else None
            verdict = (
                "above at every seed"
                if all(x > 0 for x in d)
                else "below at every seed"
                if all(x < 0 for x in d)
                else "mixed"
            )
            out.append(
                {
                    "run": run,
                    "partner": partner,
                    "kind": kind,
                    "metric": metric,
                    "diffs": diffs,
                    "n": len(d),
                    "mean": stats["mean"],
                    "sd": stats["sd"],
                    "min": min(d),
                    "max": max(d),
                    "ci95_low": None if half is None else stats["mean"] - half,
                    "ci95_high": None if half is None else stats["mean"] + half,
                    "verdict": verdict,
                }
            )
    return out


def paired_cell(c: dict) -> str:
    """'+11.4 ± 2.1 [+6.2, +16.6] ↑ all' (mean difference ± sd of the differences [95%
    paired interval] verdict); one seed: '+11.4 ↑ all'; mixed: 'mixed 2↑ 1↓'."""
    if c["verdict"] == "mixed":
        mark = f"mixed {sum(x > 0 for x in c['diffs'].values())}↑ {sum(x < 0 for x in c['diffs'].values())}↓"
    else:
        mark = "↑ all" if c["verdict"] == "above at every seed" else "↓ all"
    if c["sd"] is None:
        return f"{c['mean']:+.1f} {mark}"
    return f"{c['mean']:+.1f} ± {c['sd']:.1f} [{c['ci95_low']:+.1f}, {c['ci95_high']:+.1f}] {mark}"


def paired_table(per_seed: dict[str, dict[int, dict]]) -> str:
    """The paired comparisons (`paired_comparisons`) as Markdown, with their caption: one row per
    (run, partner), one column per metric; empty when no run has a partner."""
    comparisons = paired_comparisons(per_seed)
    if not comparisons:
        return ""
    label = {name: next(iter(by_seed.values()))["label"] for name, by_seed in per_seed.items()}
    metrics = metric_order({c["metric"] for c in comparisons})
    rows: dict[tuple, dict[str, dict]] = {}
    for c in comparisons:
        rows.setdefault((c["run"], c["partner"], c["kind"]), {})[c["metric"]] = c
    header = ["Run", "Against", "Seeds"] + [metric_label(m) for m in metrics]
    lines = [
        "Paired comparisons over seeds. A cell is run − partner in percentage points: the mean "
        "over the seeds where both have metrics (Seeds), ± the standard deviation of the per-seed "
        "differences, [the 95% paired t interval of the mean difference] (none with one seed); "
        "↑ all: above the partner at every seed, ↓ all: below at every seed, mixed: neither (seeds "
        "above ↑, below ↓). A run beats its partner on a metric only where the cell says ↑ all. "
        "Partners: the untrained control of the run's architecture (random_init with the same arch, "
        "width and depth) and, for a BoWNet generation, its parent.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for (run, partner, kind), cells in rows.items():
        n = max(c["n"] for c in cells.values())
        against = f"{label[partner]} ({partner}), " + ("untrained control" if kind == "control" else "parent")
        shown = [
            paired_cell(cells[m]) + ("" if cells[m]["n"] == n else f" (n = {cells[m]['n']})") if m in cells else "-"
            for m in metrics
        ]
        lines.append("| " + " | ".join([f"{label[run]} ({run})", against, str(n), *shown]) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ the pipeline's metrics

SUMMARY_DIGITS = 2  # accuracies in %, minutes: two decimals keep `dvc exp show`'s columns narrow


def summary(per_seed: dict[str, dict[int, dict]], supervised: dict[str, dict[int, dict]]) -> dict:
    """What a user compares between runs and experiments, the one file dvc.yaml declares as
    `metrics:` (data/metrics/summary.json, written by the report stage; every stage's full
    record stays an output that is not a metric). {run: {linear, knn, shot_N (each shot
    count's mean accuracy over episodes), ft_Ppct (test top-1 after fine-tuning on P% of the
    labels, with a `finetune:` section), tr_SOURCE_top1 / tr_SOURCE_map (linear transfer to
    each source of a `transfer:` section: test top-1, or VOC07 SVM mAP), det_ap50, det_ap75,
    det_ap (detection fine-tuning's COCO AP in %, with a `detection:` section), top1 (teacher
    and distill runs: test top-1),
    train_min (the training stage's wall clock, minutes), n_seeds}}; each value the mean
    over the run's seeds, rounded to two decimals. `per_seed`: `load_seeds` (evaluated
    runs, lineage order), `supervised`: `load_supervised_seeds` (runs with a test top-1)."""
    out: dict[str, dict] = {}
    for name in [*per_seed, *(n for n in supervised if n not in per_seed)]:
        evaluated, trained = per_seed.get(name, {}), supervised.get(name, {})
        seeds = sorted(set(evaluated) | set(trained))
        values: dict[str, list[float]] = {}
        for seed in seeds:
            record = evaluated.get(seed, {})
            train = trained.get(seed) or record.get("train") or {}
            row: dict[str, float] = {}
            if record:
                row |= {"linear": record["linear_base"], "knn": record["knn_all"]}
                row |= {f"shot_{n}": record["few_shot"][n]["mean"] for n in sorted(record.get("few_shot", {}), key=int)}
            if "top1" in train:
                row["top1"] = train["top1"]
            finetune = record.get("finetune") or train.get("finetune") or {}  # evaluated or supervised runs
            row |= {
                f"ft_{finetune_metric(f)[len('finetune_') :]}": r["top1"]
                for f, r in sorted(finetune.items(), key=lambda item: float(item[0]))
            }
            transfer = record.get("transfer") or train.get("transfer") or {}  # evaluated or supervised runs
            row |= {f"tr_{source}_{r['metric']}": r["value"] for source, r in sorted(transfer.items())}
            detection = record.get("detection") or train.get("detection")  # evaluated or supervised runs
            if detection:
                row |= {metric: detection[key] for metric, key in DETECTION_METRICS.items()}
            if "wall_seconds" in train:
                row["train_min"] = train["wall_seconds"] / 60
            for key, value in row.items():
                values.setdefault(key, []).append(value)
        out[name] = {key: round(statistics.fmean(v), SUMMARY_DIGITS) for key, v in values.items()}
        out[name]["n_seeds"] = len(seeds)
    return out
