"""Throughput of batched `make_view` vs the usual per-image torchvision pipeline.

Baseline: a Dataset holding per-image uint8 tensors (or PIL images with --pil), each
passed through torchvision.transforms.v2
    RandomResizedCrop(size, scale) -> RandomHorizontalFlip -> RandomApply(ColorJitter(0.4,
    0.4, 0.4, 0.1), p=0.8) -> RandomGrayscale(0.2) -> ToDtype(float32, scale=True)
and collated by a DataLoader(batch_size=B, num_workers=--workers).
Candidate: `bowflow.augment.make_view` on one in-memory uint8 [N, 3, H, W] tensor, one
batch slice at a time, on --device.

Both produce float [B, 3, size, size] views in [0, 1]. The first batch of each pass is a
warm-up (worker start-up, allocator) and is excluded from the rate. Images are synthetic
random uint8 (no download). Also reported: milliseconds per batch of make_view and cutmix.

    python -m benchmarks.bench_augment                      # 10000 images, 32 px, B=256
    python -m benchmarks.bench_augment --smoke              # a few hundred images, seconds

--json PATH also writes the run's record (benchmarks/recording.py); `table(records)` gives
docs/BENCHMARKS.md section 1 from one record per run (e.g. with and without --threads 1
and --pil), one row each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.recording import load_average, load_range, thousands, write_record
from bowflow.augment import ViewSpec, cutmix, make_view


class _PerImageDataset(Dataset):
    """Per-image views of a uint8 [N, 3, H, W] tensor (or a list of PIL images)."""

    def __init__(self, images, transform):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i])


def _torchvision_transform(spec: ViewSpec, pil: bool):
    from torchvision.transforms import v2

    steps = [
        v2.RandomResizedCrop(spec.size, scale=spec.crop_scale, ratio=spec.crop_ratio),
        v2.RandomHorizontalFlip(spec.flip_p),
        v2.RandomApply([v2.ColorJitter(spec.jitter, spec.jitter, spec.jitter, spec.hue)], p=spec.jitter_p),
        v2.RandomGrayscale(spec.gray_p),
    ]
    if pil:
        steps.append(v2.PILToTensor())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_baseline(images: torch.Tensor, spec: ViewSpec, batch_size: int, workers: int, pil: bool) -> float:
    """Images/s of the per-image torchvision pipeline through a DataLoader (CPU)."""
    if pil:
        from PIL import Image

        data = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    else:
        data = list(images.unbind(0))  # per-image [3, H, W] uint8 tensors
    loader = DataLoader(
        _PerImageDataset(data, _torchvision_transform(spec, pil)),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
    )
    count, start = 0, None
    for batch in loader:
        assert batch.shape[1:] == (3, spec.size, spec.size) and batch.dtype == torch.float32
        if start is None:  # first batch = warm-up (worker start-up)
            start = time.perf_counter()
            continue
        count += batch.shape[0]
    return count / (time.perf_counter() - start)


def bench_batched(
    images: torch.Tensor, spec: ViewSpec, batch_size: int, device: torch.device
) -> tuple[float, float, float]:
    """(images/s of make_view, ms per batch of make_view, ms per batch of cutmix)."""
    images = images.to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    n = images.shape[0]
    perm = torch.randperm(n, generator=gen, device=device)
    targets = torch.full((batch_size, 10), 0.1, device=device)  # soft targets, K = 10
    count, timed, view_s, mix_s = 0, 0, 0.0, 0.0
    for b, lo in enumerate(range(0, n, batch_size)):
        _sync(device)
        t0 = time.perf_counter()
        views = make_view(images[perm[lo : lo + batch_size]], spec, gen)
        _sync(device)
        t1 = time.perf_counter()
        cutmix(views, targets[: views.shape[0]], generator=gen)
        _sync(device)
        t2 = time.perf_counter()
        if b == 0:  # warm-up
            continue
        count, timed = count + views.shape[0], timed + 1
        view_s += t1 - t0
        mix_s += t2 - t1
    if timed == 0:
        raise ValueError("need at least two batches (the first one is a warm-up)")
    return count / view_s, 1e3 * view_s / timed, 1e3 * mix_s / timed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10000, help="synthetic images")
    parser.add_argument("--size", type=int, default=32, help="image side in and out, px")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (baseline)")
    parser.add_argument("--device", default="cpu", help="device of the batched pipeline")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads of the main process (0 = torch default); "
        "DataLoader workers always use 1 thread each",
    )
    parser.add_argument("--pil", action="store_true", help="baseline on PIL images")
    parser.add_argument("--smoke", action="store_true", help="few hundred images, seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the run's record here")
    args = parser.parse_args(argv)
    threads_before = torch.get_num_threads()
    try:
        return _run(args, argv)
    finally:  # main() may be called in-process (tests): restore global state
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, argv: list[str] | None) -> dict:
    load_before = load_average()
    if args.smoke:  # just check that everything runs: tiny, in-process, one thread
        args.images = min(args.images, 192)
        args.batch_size = min(args.batch_size, 64)
        args.workers = 0
        args.threads = 1

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = ViewSpec(size=args.size)
    images = torch.randint(
        0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    base = bench_baseline(images, spec, args.batch_size, args.workers, args.pil)
    batched, view_ms, mix_ms = bench_batched(images, spec, args.batch_size, device)

    print(
        f"{args.images} images {args.size}x{args.size}, batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'pipeline':<52}{'images/s':>12}")
    tag = "PIL" if args.pil else "uint8 tensors"
    print(f"{f'torchvision v2 per-image ({tag}), {args.workers} workers':<52}{base:>12.0f}")
    print(f"{f'bowflow make_view batched ({device})':<52}{batched:>12.0f}")
    print(f"{'ratio batched / baseline':<52}{batched / base:>12.1f}")
    print(f"per batch of {args.batch_size}: make_view {view_ms:.2f} ms, cutmix {mix_ms:.2f} ms")
    result = {
        "images": args.images,
        "size": args.size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "baseline_input": tag,
        "baseline_images_per_s": round(base, 1),
        "batched_images_per_s": round(batched, 1),
        "ratio": round(batched / base, 2),
        "make_view_ms_per_batch": round(view_ms, 3),
        "cutmix_ms_per_batch": round(mix_ms, 3),
    }
    if args.json is not None:
        write_record(
            args.json,
            "bench_augment",
            argv,
            load_before,
            settings={
                "images": args.images,
                "size": args.size,
                "batch_size": args.batch_size,
                "workers": args.workers,
                "threads": torch.get_num_threads(),
                "device": str(device),
                "pil": args.pil,
                "smoke": args.smoke,
            },
            measurements={
                "baseline_images_per_s": base,
                "batched_images_per_s": batched,
                "make_view_ms_per_batch": view_ms,
                "cutmix_ms_per_batch": mix_ms,
            },
        )
    print("RESULT " + json.dumps(result))
    return result


def table(records: list[dict]) -> list[list[str]]:
    """docs/BENCHMARKS.md section 1: one row per record (threads, baseline input), the
    ratio recomputed from the two rates, the 1-minute load average before-after the run."""
    batch = {r["settings"]["batch_size"] for r in records}
    per = f" / {batch.pop()}" if len(batch) == 1 else " / batch"
    rows = [["run", "baseline img/s", "batched img/s", "ratio", f"make_view ms{per}", f"cutmix ms{per}", "load"]]
    for r in records:
        s, m = r["settings"], r["measurements"]
        threads = f"{s['threads']} thread{'s' if s['threads'] != 1 else ''}"
        rows.append(
            [
                f"{threads}, {'PIL input' if s['pil'] else 'uint8 tensors'}",
                thousands(m["baseline_images_per_s"]),
                thousands(m["batched_images_per_s"]),
                f"{m['batched_images_per_s'] / m['baseline_images_per_s']:.1f}x",
                f"{m['make_view_ms_per_batch']:.1f}",
                f"{m['cutmix_ms_per_batch']:.1f}",
                load_range(r),
            ]
        )
    return rows


if __name__ == "__main__":
    main()
