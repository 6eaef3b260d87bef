"""Vocabulary building: faiss k-means (`bowflow.bow.kmeans`) vs scikit-learn KMeans.

Both cluster the same float32 features [S, C] into K words with the same recipe:
    faiss    bow.kmeans(features, K, iters, seed, use_gpu=False)  (random-sample init)
    BASELINE sklearn.cluster.KMeans(K, init="random", n_init=1, max_iter=iters, tol=0,
             algorithm="lloyd")                                   (random-sample init)
i.e. one initialisation from K random feature vectors, then `iters` Lloyd iterations,
then a final assignment, all on every feature (faiss does not subsample here: its
max_points_per_centroid is at least S / K). Time is the wall time of the whole call.
Inertia (sum of squared distances to the nearest centroid) is recomputed for both
centroid sets by `inertia` below: nearest centroid by a float32 matmul, then the exact
squared distance to it in float64.

Features (--features):
    convnet  (default) "real-ish": smooth random images (8x8 uniform noise, bilinearly
             upsampled to --image-size) through a randomly initialised convnet whose stage2
             has C channels (width C / 2), sampled by `bow.sample_local_features`;
    gmm      a Gaussian mixture: 4K random unit-variance centres in C dims, spread 4.

Threads: --threads sets faiss's OpenMP, sklearn's (threadpoolctl) and torch's counts
alike. The default size (200,000 x 256, K = 2048, 10 iterations) takes minutes on a
2-core CPU; --samples / --words shrink it.

    python -m benchmarks.bench_vocab                   # 200000 x 256, K=2048, 10 iters
    python -m benchmarks.bench_vocab --smoke           # seconds

--json PATH also writes the run's record (benchmarks/recording.py): both wall times and
both inertias; `table(records)` gives docs/BENCHMARKS.md section 4, one row per record
(e.g. the default threads and --threads 1), ratios recomputed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.recording import load_average, load_range, write_record
from bowflow import bow
from bowflow.models import Normalizer
from bowflow.networks import build_backbone


def convnet_features(samples: int, channels: int, image_size: int, seed: int) -> torch.Tensor:
    """[samples, channels] float32 local features of a random convnet's stage2 map."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    per_image = (image_size // 2) ** 2
    n_images = -(-samples // per_image) + 1
    low = torch.rand(n_images, 3, 8, 8, generator=gen)
    smooth = F.interpolate(low, size=image_size, mode="bilinear", align_corners=False)
    images = (smooth * 255).round().to(torch.uint8)  # [N, 3, S, S]
    teacher = build_backbone("convnet", channels // 2).eval()
    return bow.sample_local_features(
        teacher, images, "stage2", samples, 128, torch.device("cpu"), Normalizer.fit(images), seed
    )


def gmm_features(samples: int, channels: int, components: int, seed: int) -> torch.Tensor:
    """[samples, channels] float32 from a Gaussian mixture (unit variance, centres ~ N(0, 4^2))."""
    gen = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(components, channels, generator=gen)
    which = torch.randint(0, components, (samples,), generator=gen)
    return centres[which] + torch.randn(samples, channels, generator=gen)


def inertia(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 16384) -> float:
    """Sum over x [S, C] of the squared distance to the nearest of centroids [K, C]."""
    c = centroids.float()
    c_norm = (c * c).sum(1)
    total = 0.0
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].float()
        nearest = (c_norm - 2.0 * part @ c.t()).argmin(1)  # [chunk]
        total += float((part.double() - c[nearest].double()).pow(2).sum())
    return total


def run_faiss(x: torch.Tensor, k: int, iters: int, seed: int) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    words = bow.kmeans(x, k, iters, seed, use_gpu=False)["words"]
    return words, time.perf_counter() - start


def run_sklearn(x: torch.Tensor, k: int, iters: int, seed: int) -> tuple[torch.Tensor, float]:
    from sklearn.cluster import KMeans

    data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    start = time.perf_counter()
    km = KMeans(
        n_clusters=k, init="random", n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd", random_state=seed
    ).fit(data)
    seconds = time.perf_counter() - start
    return torch.from_numpy(km.cluster_centers_.astype(np.float32)), seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200_000, help="feature vectors S")
    parser.add_argument("--channels", type=int, default=256, help="feature dimension C")
    parser.add_argument("--words", type=int, default=2048, help="K")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--features", choices=("convnet", "gmm"), default="convnet")
    parser.add_argument("--image-size", type=int, default=16, help="convnet features: image side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=0, help="threads of both (faiss OpenMP, sklearn OpenMP/BLAS, torch); 0 = default"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny, seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the run's record here")
    args = parser.parse_args(argv)
    load_before = load_average()
    if args.smoke:
        args.samples, args.channels, args.words, args.iters = 2000, 32, 16, 3
    import faiss
    from threadpoolctl import threadpool_limits

    threads_before = (torch.get_num_threads(), faiss.omp_get_max_threads())
    threads = args.threads or threads_before[0]
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            result = _run(args, threads)
        if args.json is not None:
            write_record(
                args.json,
                "bench_vocab",
                argv,
                load_before,
                settings={
                    "features": args.features,
                    "samples": result["samples"],
                    "channels": result["channels"],
                    "words": args.words,
                    "iters": args.iters,
                    "image_size": args.image_size,
                    "seed": args.seed,
                    "threads": threads,
                    "smoke": args.smoke,
                },
                measurements={
                    "feature_seconds": result["feature_seconds"],
                    "sklearn_seconds": result["sklearn_seconds_raw"],
                    "faiss_seconds": result["faiss_seconds_raw"],
                    "sklearn_inertia": result["sklearn_inertia"],
                    "faiss_inertia": result["faiss_inertia"],
                },
            )
        for k in ("feature_seconds", "sklearn_seconds_raw", "faiss_seconds_raw"):
            result.pop(k)
        print("RESULT " + json.dumps(result))
        return result
    finally:  # main() may be called in-process (tests): restore global state
        torch.set_num_threads(threads_before[0])
        faiss.omp_set_num_threads(threads_before[1])


def _run(args: argparse.Namespace, threads: int) -> dict:
    start = time.perf_counter()
    if args.features == "convnet":
        x = convnet_features(args.samples, args.channels, args.image_size, args.seed)
    else:
        x = gmm_features(args.samples, args.channels, 4 * args.words, args.seed)
    feature_seconds = time.perf_counter() - start

    faiss_words, faiss_s = run_faiss(x, args.words, args.iters, args.seed)
    sk_words, sk_s = run_sklearn(x, args.words, args.iters, args.seed)
    faiss_inertia, sk_inertia = inertia(x, faiss_words), inertia(x, sk_words)

    print(
        f"{args.features} features {tuple(x.shape)} ({feature_seconds:.1f} s to make), "
        f"K={args.words}, {args.iters} iterations, {threads} threads each"
    )
    print(f"{'k-means':<40}{'seconds':>10}{'inertia':>16}")
    print(f"{'BASELINE sklearn KMeans lloyd':<40}{sk_s:>10.2f}{sk_inertia:>16.6g}")
    print(f"{'faiss bow.kmeans':<40}{faiss_s:>10.2f}{faiss_inertia:>16.6g}")
    print(
        f"speed-up faiss vs sklearn {sk_s / faiss_s:.1f}x; inertia ratio faiss / sklearn "
        f"{faiss_inertia / sk_inertia:.4f}"
    )
    result = {
        "features": args.features,
        "samples": int(x.shape[0]),
        "channels": int(x.shape[1]),
        "words": args.words,
        "iters": args.iters,
        "threads": threads,
        "sklearn_seconds": round(sk_s, 3),
        "faiss_seconds": round(faiss_s, 3),
        "speedup": round(sk_s / faiss_s, 2),
        "sklearn_inertia": sk_inertia,
        "faiss_inertia": faiss_inertia,
        "inertia_ratio": round(faiss_inertia / sk_inertia, 5),
        "feature_seconds": feature_seconds,
        "sklearn_seconds_raw": sk_s,
        "faiss_seconds_raw": faiss_s,
    }
    return result


def table(records: list[dict]) -> list[list[str]]:
    """docs/BENCHMARKS.md section 4: one row per record (threads, load before-after), both
    wall times, faiss's speed relative to sklearn and the inertia ratio, recomputed."""
    rows = [["threads", "scikit-learn", "faiss", "faiss speed vs sklearn", "inertia faiss / sklearn"]]
    for r in records:
        m = r["measurements"]
        rows.append(
            [
                f"{r['settings']['threads']} (load {load_range(r)})",
                f"{m['sklearn_seconds']:.2f} s",
                f"{m['faiss_seconds']:.2f} s",
                f"{m['sklearn_seconds'] / m['faiss_seconds']:.2f}x",
                f"{m['faiss_inertia'] / m['sklearn_inertia']:.4f}",
            ]
        )
    return rows


if __name__ == "__main__":
    main()
