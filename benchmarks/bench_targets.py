"""BoW targets per training step: per-image teacher loop vs batched vs cached codes.

All three produce the BoWNet targets y [B, K] (L1-normalised histograms of the frozen
teacher's nearest visual words over the `--layer` map of the clean image) for the same
batches of one epoch (a seeded permutation, --batch-size images per step):

BASELINE  per step, per image: teacher `feature_map` of one image [1, C, h, w] ->
          `bow.nearest_words` -> `torch.bincount` / L. The "targets computed per batch,
          one image at a time" anti-pattern.
A         per step, batched on the device: one teacher forward of the batch ->
          `bow.nearest_words` -> `bow.bow_targets`.
B         what the pipeline does: `bow.assign_codes` once per generation (timed
          separately), then per step only `bow.bow_targets(codes[index])`.

Setup: synthetic random uint8 images, a randomly initialised convnet teacher in eval mode,
a vocabulary from `bow.sample_local_features` + `bow.kmeans` on that teacher. The three
targets (and the word codes behind them) are compared: A and B must be bit-identical; the
per-image baseline runs batch-1 convolutions, which round differently, so a rare code may
differ at a float near-tie (two words at relative distance gap < --tie-tolerance, checked
in float64); `agree` in the RESULT line is true when nothing else differs.
Rounds: the three run alternately for --rounds epochs; each rate is from its best epoch
(the least disturbed on a shared machine). Rates: images/s over the epoch, ratios vs the baseline; B is
also reported with its one-time assignment amortised over one epoch (its worst case).

    python -m benchmarks.bench_targets            # 4096 images 16 px, K=64, B=64 (pipeline)
    python -m benchmarks.bench_targets --smoke    # seconds

--json PATH also writes the run's record (benchmarks/recording.py): each method's seconds
per epoch in every round and assign_codes' seconds; `table(records)` gives
docs/BENCHMARKS.md section 3 (rates and ratios recomputed from the best rounds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.recording import load_average, thousands, write_record
from bowflow import bow
from bowflow.models import Normalizer
from bowflow.networks import build_backbone


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def targets_per_image(teacher, normalizer, images, batches, layer, words, k, device):
    """BASELINE. -> (targets [N_steps * B, K], codes [N_steps * B, L], seconds)."""
    out, codes, start = [], [], time.perf_counter()
    for index in batches:
        for i in index.tolist():
            maps = teacher.feature_map(normalizer(images[i : i + 1]), layer)  # [1, C, h, w]
            c = bow.nearest_words(maps, words)[0]  # [L]
            out.append(torch.bincount(c, minlength=k).float() / c.numel())  # [K]
            codes.append(c)
    _sync(device)
    return torch.stack(out), torch.stack(codes), time.perf_counter() - start


@torch.no_grad()
def targets_batched(teacher, normalizer, images, batches, layer, words, k, device):
    """A. -> (targets [N_steps * B, K], codes [N_steps * B, L], seconds)."""
    out, codes, start = [], [], time.perf_counter()
    for index in batches:
        maps = teacher.feature_map(normalizer(images[index]), layer)  # [B, C, h, w]
        c = bow.nearest_words(maps, words)  # [B, L]
        out.append(bow.bow_targets(c, k))  # [B, K]
        codes.append(c)
    _sync(device)
    return torch.cat(out), torch.cat(codes), time.perf_counter() - start


def targets_cached(teacher, normalizer, images, batches, layer, words, k, device, batch_size):
    """B. -> (targets, codes, per-step seconds, one-time assign_codes seconds)."""
    start = time.perf_counter()
    all_codes = bow.assign_codes(teacher, images, layer, words, batch_size, device, normalizer).to(
        device
    )  # [N, L] int16
    _sync(device)
    assign_seconds = time.perf_counter() - start
    out, codes, start = [], [], time.perf_counter()
    for index in batches:
        out.append(bow.bow_targets(all_codes[index], k))  # [B, K]
        codes.append(all_codes[index])
    _sync(device)
    return torch.cat(out), torch.cat(codes).long(), time.perf_counter() - start, assign_seconds


@torch.no_grad()
def near_tie_gap(teacher, normalizer, images, rows, codes_a, codes_b, layer, words) -> float:
    """Largest relative gap |d_a - d_b| / d_a between the squared distances (float64) of the
    per-image map's features to two disagreeing words, over the disagreeing locations.

    rows [M] image index, codes_a/codes_b [M, L] word codes. A gap of ~1e-6 means a float
    near-tie that batch-1 and batched convolutions round differently, not a bug.
    """
    gap = 0.0
    for row in torch.nonzero((codes_a != codes_b).any(1)).flatten().tolist():
        i = int(rows[row])
        maps = teacher.feature_map(normalizer(images[i : i + 1]), layer)[0]  # [C, h, w]
        f = maps.flatten(1).t().double()  # [L, C]
        for loc in torch.nonzero(codes_a[row] != codes_b[row]).flatten().tolist():
            d_a = (f[loc] - words[codes_a[row, loc]].double()).pow(2).sum()
            d_b = (f[loc] - words[codes_b[row, loc]].double()).pow(2).sum()
            gap = max(gap, float((d_a - d_b).abs() / d_a.clamp_min(1e-12)))
    return gap


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--size", type=int, default=16, help="image side, px")
    parser.add_argument("--width", type=int, default=32, help="convnet teacher width")
    parser.add_argument("--layer", default="stage2")
    parser.add_argument("--words", type=int, default=64, help="vocabulary size K")
    parser.add_argument("--batch-size", type=int, default=64, help="images per training step")
    parser.add_argument("--assign-batch-size", type=int, default=256, help="B's assign_codes batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs of each method")
    parser.add_argument(
        "--tie-tolerance",
        type=float,
        default=1e-4,
        help="relative distance gap below which a differing code is a near-tie",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny, seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the run's record here")
    args = parser.parse_args(argv)
    load_before = load_average()
    if args.smoke:
        args.images, args.size, args.width, args.words, args.batch_size = 128, 8, 8, 16, 32
        args.rounds = 1
    device = torch.device(args.device)

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=gen).to(
        device
    )  # [N, 3, S, S]
    teacher = build_backbone("convnet", args.width).to(device).eval()
    normalizer = Normalizer.fit(images.cpu())
    features = bow.sample_local_features(
        teacher, images, args.layer, min(20000, 8 * args.images), args.assign_batch_size, device, normalizer, seed=0
    )
    words = bow.kmeans(features, args.words, iters=10, seed=0, use_gpu=False)["words"].to(device)
    order = torch.randperm(args.images, generator=gen).to(device)
    steps = args.images // args.batch_size
    batches = [order[i * args.batch_size : (i + 1) * args.batch_size] for i in range(steps)]
    n = steps * args.batch_size
    common = (teacher, normalizer, images, batches, args.layer, words, args.words, device)

    # Warm-up (allocator, oneDNN primitives) on one batch each, then the timed epoch.
    targets_per_image(*common[:3], batches[:1], *common[4:])
    targets_batched(*common[:3], batches[:1], *common[4:])
    rounds = {"baseline": [], "A": [], "B": [], "assign": []}
    for _ in range(args.rounds):  # interleaved; best round of each (least disturbed)
        y0, c0, seconds = targets_per_image(*common)
        rounds["baseline"].append(seconds)
        ya, ca, seconds = targets_batched(*common)
        rounds["A"].append(seconds)
        yb, cb, seconds, assign = targets_cached(*common, args.assign_batch_size)
        rounds["B"].append(seconds)
        rounds["assign"].append(assign)
    base_s, a_s, b_s, assign_s = (min(rounds[k]) for k in ("baseline", "A", "B", "assign"))

    agreement = {
        "baseline_vs_A": (c0 == ca).float().mean().item(),
        "baseline_vs_B": (c0 == cb).float().mean().item(),
        "A_vs_B": (ca == cb).float().mean().item(),
    }
    identical = torch.equal(y0, ya) and torch.equal(y0, yb)
    max_diff = max((y0 - ya).abs().max().item(), (y0 - yb).abs().max().item())
    mismatches = int((c0 != ca).sum())
    gap = near_tie_gap(teacher, normalizer, images, torch.cat(batches), c0, ca, args.layer, words)
    # Agreement: A and B bit-identical; the per-image baseline may differ only at near-ties.
    agree = torch.equal(ya, yb) and torch.equal(ca, cb) and gap < args.tie_tolerance
    rates = {"baseline": n / base_s, "A": n / a_s, "B": n / b_s, "B_with_assign": n / (b_s + assign_s)}

    print(
        f"{n} images {args.size}x{args.size} in {steps} steps of {args.batch_size}, convnet "
        f"w{args.width} teacher, {args.layer} codes ({c0.shape[1]} per image), K={args.words}, "
        f"{device}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'method':<58}{'images/s':>12}{'ratio':>9}")
    labels = {
        "baseline": "BASELINE per-image teacher + nearest words + bincount",
        "A": "A batched teacher + nearest_words + bow_targets",
        "B": "B cached codes, bow_targets(codes[index]) per step",
        "B_with_assign": "B incl. one-time assign_codes, amortised over 1 epoch",
    }
    for key, label in labels.items():
        print(f"{label:<58}{rates[key]:>12.0f}{rates[key] / rates['baseline']:>9.1f}")
    print(
        f"assign_codes once: {assign_s:.3f} s ({args.images / assign_s:.0f} images/s); "
        f"targets identical: {identical} (max |diff| {max_diff:.2g}); code agreement {agreement}"
    )
    print(
        f"A == B exactly: {torch.equal(ya, yb)}; baseline vs A: {mismatches} of {c0.numel()} "
        f"codes differ, largest relative distance gap {gap:.1e} (near-tie if < "
        f"{args.tie_tolerance:g}) -> agree: {agree}"
    )
    result = {
        "images": n,
        "size": args.size,
        "width": args.width,
        "layer": args.layer,
        "words": args.words,
        "batch_size": args.batch_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "codes_per_image": int(c0.shape[1]),
        "rounds": args.rounds,
        **{f"{key}_images_per_s": round(rate, 1) for key, rate in rates.items()},
        **{f"ratio_{key}": round(rate / rates["baseline"], 2) for key, rate in rates.items() if key != "baseline"},
        "assign_seconds": round(assign_s, 4),
        "targets_identical": identical,
        "targets_max_abs_diff": max_diff,
        "code_agreement": agreement,
        "baseline_code_mismatches": mismatches,
        "mismatch_max_relative_gap": gap,
        "agree": agree,
    }
    if args.json is not None:
        write_record(
            args.json,
            "bench_targets",
            argv,
            load_before,
            settings={
                "images": n,
                "size": args.size,
                "width": args.width,
                "layer": args.layer,
                "words": args.words,
                "batch_size": args.batch_size,
                "steps": steps,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "rounds": args.rounds,
                "smoke": args.smoke,
            },
            measurements={
                "seconds_per_epoch": rounds,
                "codes_per_image": int(c0.shape[1]),
                "codes": c0.numel(),
                "targets_identical": identical,
                "A_equals_B": torch.equal(ya, yb) and torch.equal(ca, cb),
                "baseline_code_mismatches": mismatches,
                "mismatch_max_relative_gap": gap,
                "agree": agree,
            },
        )
    print("RESULT " + json.dumps(result))
    return result


def rates(record: dict) -> dict[str, float]:
    """Images/s of each method over its best round; B_with_assign: B plus one assign_codes."""
    n, sec = record["settings"]["images"], record["measurements"]["seconds_per_epoch"]
    best = {k: min(v) for k, v in sec.items()}
    return {
        "baseline": n / best["baseline"],
        "A": n / best["A"],
        "B": n / best["B"],
        "B_with_assign": n / (best["B"] + best["assign"]),
    }


def table(records: list[dict]) -> list[list[str]]:
    """docs/BENCHMARKS.md section 3 from one record: images/s of each method (best round)
    and its ratio to the per-image baseline."""
    (record,) = records
    rate = rates(record)
    labels = {
        "baseline": "per image, per step: teacher forward + nearest word + histogram (baseline)",
        "A": "batched teacher forward + `nearest_words` + `bow_targets` per step",
        "B": "codes cached once per generation (`assign_codes`), `bow_targets(codes[index])` per step (the pipeline)",
    }
    rows = [["method", "images/s per step", "ratio"]]
    for key, label in labels.items():
        value = rate[key]
        shown = f"{value / 1e6:.2f} M" if value >= 1e6 else thousands(value)
        ratio = value / rate["baseline"]
        rows.append([label, shown, f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.1f}x"])
    return rows


if __name__ == "__main__":
    main()
