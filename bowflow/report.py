"""The results report: the talk's table, training curves, accuracy by generation and
pictures of visual words.

Inputs are the metrics and curves the other stages wrote; nothing here trains or
evaluates. Rows follow the lineage: RotNet (g0), then BoWNet, BoWNet x2, ...
"""
from __future__ import annotations

import csv
import json
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
    records = {p.stem: json.loads(p.read_text()) for p in sorted(Path(eval_dir).glob("*.json"))
               if names is None or p.stem in names}
    ordered = sorted(records.values(), key=lambda r: (r.get("generation", 0), r["name"]))
    train_dir = Path(eval_dir).parent / "train"
    for record in ordered:
        record["label"] = model_label(record)
        train = train_dir / f"{record['name']}.json"
        record["train"] = json.loads(train.read_text()) if train.exists() else {}
    return ordered


def comparison_table(records: list[dict]) -> str:
    """The talk's "evaluating self-supervised pre-trained networks" table: one row per run
    with its training cost (epochs, batch, parameters, wall time, peak memory, images/s)
    and its accuracy (base linear, k-NN, few-shot with 95% intervals)."""
    shots = shots_of(records)
    header = (["Run", "Method", "Parent", "Epochs", "Batch", "Params", "Train time", "Peak RSS",
               "img/s", "Linear", "k-NN"] + [f"{n}-shot" for n in shots])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        t = r.get("train", {})
        cells = [r["name"], r["label"], r.get("parent") or "-", str(t.get("epochs", "-")),
                 str(t.get("batch_size", "-")), f"{r['parameters'] / 1e6:.2f}M",
                 f"{t['wall_seconds'] / 60:.1f} min" if "wall_seconds" in t else "-",
                 f"{t['peak_rss_mb'] / 1024:.1f} GB" if "peak_rss_mb" in t else "-",
                 f"{t['images_per_second']:.0f}" if "images_per_second" in t else "-",
                 f"{r['linear_base']:.1f}", f"{r['knn_all']:.1f}"]
        cells += [f"{r['few_shot'][n]['mean']:.1f} ± {r['few_shot'][n]['ci95']:.1f}"
                  if n in r["few_shot"] else "-" for n in shots]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shots_of(records: list[dict]) -> list[str]:
    return sorted({n for r in records for n in r["few_shot"]}, key=int)


def markdown_table(records: list[dict]) -> str:
    shots = shots_of(records)
    header = ["Model"] + [f"n = {n}" for n in shots] + ["Base linear", "k-NN"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        cells = [f"{r['label']} ({r['name']})"]
        cells += [f"{r['few_shot'][n]['mean']:.1f} ± {r['few_shot'][n]['ci95']:.1f}" if n in r["few_shot"]
                  else "-" for n in shots]
        cells += [f"{r['linear_base']:.1f}", f"{r['knn_all']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def generations_rows(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        row = {"generation": r.get("generation", 0), "name": r["name"], "label": r["label"],
               "linear_base": r["linear_base"], "knn_all": r["knn_all"]}
        row.update({f"few_shot_{n}": r["few_shot"][n]["mean"] for n in r["few_shot"]})
        rows.append(row)
    return rows


def read_curve(path: Path) -> list[dict]:
    with open(path) as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def plot_training_curves(train_dir: Path, records: list[dict], out: Path) -> None:
    """Loss per epoch of every model, and the captured fraction of the students."""
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
    ax_loss.set(xlabel="epoch", ylabel="training loss (nats)", title="Training loss")
    ax_cap.set(xlabel="epoch", ylabel="fraction", ylim=(0, 1),
               title="Students: fraction of the learnable BoW loss captured")
    for ax in (ax_loss, ax_cap):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_generations(records: list[dict], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    x = list(range(len(records)))
    for n in shots_of(records):
        ax.plot(x, [r["few_shot"][n]["mean"] for r in records], marker="o", label=f"{n}-shot")
    ax.plot(x, [r["linear_base"] for r in records], marker="s", label="base linear")
    ax.plot(x, [r["knn_all"] for r in records], marker="^", label="k-NN")
    ax.set_xticks(x, [r["label"] for r in records])
    ax.set(ylabel="accuracy (%)", title="Accuracy by generation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def word_patches(images: torch.Tensor, codes: torch.Tensor, words_shown: int, per_word: int,
                 seed: int) -> tuple[list[int], list[list[torch.Tensor]]]:
    """Image patches under the map cells assigned to some visual words.

    images uint8 [N, 3, H, W]; codes [N, h*w] word per cell (h = w). The `words_shown`
    most used words are pictured with `per_word` random cells each; a cell's patch is the
    3 x 3-cell neighbourhood of the image centred on it (about its receptive field's core).
    -> (word ids, per word a list of uint8 patches [3, P, P]).
    """
    n, cells = codes.shape
    side = int(round(cells ** 0.5))
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
            row.append(padded[image_index, :, top:top + patch, left:left + patch])
        patches.append(row)
    return words, patches


def plot_word_patches(words: list[int], patches: list[list[torch.Tensor]], title: str, out: Path) -> None:
    per_word = max(len(row) for row in patches)
    fig, axes = plt.subplots(len(words), per_word, figsize=(per_word * 0.9, len(words) * 0.9),
                             squeeze=False)
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
            runs[path.stem] = record
    return runs


DISTILL_COLUMNS = {   # table title -> (cell value of a run's metrics, format, unit note)
    "Top-1 accuracy (%)": (lambda r: r["top1"], "{:.2f}", "test split, last epoch"),
    "Peak memory (GB)": (lambda r: r.get("peak_gpu_mb", r["peak_rss_mb"]) / 1024, "{:.2f}",
                         "of the training process: GPU memory on a GPU, resident memory on a CPU"),
    "Parameters (M)": (lambda r: r["trained_parameters"] / 1e6, "{:.3f}",
                       "student + the method's extra modules (not the frozen teacher)"),
    "Training time (min)": (lambda r: r["wall_seconds"] / 60, "{:.1f}", "wall clock"),
}


def distill_tables(runs: dict[str, dict]) -> str:
    """The IFACD talk's four tables (accuracy, memory, parameters, time): one column per
    teacher -> student pair, rows 'Teacher (vanilla)', 'Student (vanilla)' and one per
    distillation method, and the average over pairs. Empty when there is no distill run.

    A pair's vanilla student is the teachers: run with the student's architecture (the
    first by name that is not the teacher itself)."""
    distilled = {n: r for n, r in runs.items() if r.get("parent")}
    if not distilled:
        return ""
    pairs: dict[str, dict[str, dict]] = {}          # pair label -> row label -> metrics
    for record in distilled.values():
        teacher = runs.get(record["parent"])
        if teacher is None:
            continue
        student_arch = arch_label(record)
        pair = f"{arch_label(teacher)} → {student_arch}"
        rows = pairs.setdefault(pair, {"Teacher (vanilla)": teacher})
        vanilla = next((r for n, r in runs.items() if not r.get("parent") and n != record["parent"]
                        and arch_label(r) == student_arch), None)
        if vanilla is not None:
            rows["Student (vanilla)"] = vanilla
        rows[record["method_label"]] = record
    labels = ["Teacher (vanilla)", "Student (vanilla)"]
    labels += sorted({label for rows in pairs.values() for label in rows} - set(labels))
    columns = list(pairs)
    text = []
    for title, (value, fmt, note) in DISTILL_COLUMNS.items():
        text += [f"### {title}", "", f"{note}.", "",
                 "| Method | " + " | ".join(columns) + " | Average |", "|---|" + "---|" * (len(columns) + 1)]
        for label in labels:
            cells = [pairs[c].get(label) for c in columns]
            values = [value(r) for r in cells if r is not None]
            shown = [fmt.format(value(r)) if r is not None else "-" for r in cells]
            average = fmt.format(sum(values) / len(values)) if len(values) == len(cells) else "-"
            text.append(f"| {label} | " + " | ".join(shown) + f" | {average} |")
        text.append("")
    return "\n".join(text)
