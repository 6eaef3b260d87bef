"""Stage vocab: visual words of a teacher's feature map (faiss k-means) and the cached
BoW codes of every SSL training image under that vocabulary.

    python -m stages.vocab --prepared data/prepared --teacher data/models/g0/model.pt \
        --out data/models/g1/vocab.pt --metrics data/metrics/vocab/g1.json --seed 0 \
        --device auto --layer stage2 --size 256 --samples 50000 --iters 20 ...
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from bowflow import bow
from bowflow.cli import parse_section
from bowflow.data.prepared import load_ssl_images
from bowflow.io import save_torch, write_json
from bowflow.models import load_model
from bowflow.networks import count_parameters
from bowflow.runtime import StageClock, log, resolve_device, seed_everything
from bowflow.sections import VocabParams


def paths(parser):
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True, help="parent model.pt")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--device", default="auto")


def main(argv=None):
    params, args = parse_section(VocabParams, argv, __doc__, paths)
    device = resolve_device(args.device)
    clock = StageClock(device)
    seed_everything(args.seed)
    teacher, normalizer, record = load_model(args.teacher, device)
    teacher.stage_index(params.layer)  # fail on a bad layer before any work
    images, _ = load_ssl_images(args.prepared)
    log(f"sampling {params.samples} local features of {record['name']}.{params.layer} over {len(images)} images")
    start = time.perf_counter()
    features = bow.sample_local_features(
        teacher,
        images,
        params.layer,
        params.samples,
        params.batch_size,
        device,
        normalizer,
        args.seed,
        params.drop_border,
    )
    sample_seconds = time.perf_counter() - start
    log(f"faiss k-means: {len(features)} x {features.shape[1]} -> K={params.size}, {params.iters} iterations")
    km = bow.kmeans(features, params.size, params.iters, args.seed)
    start = time.perf_counter()
    codes = bow.assign_codes(
        teacher, images, params.layer, km["words"], params.batch_size, device, normalizer, params.drop_border
    )
    code_seconds = time.perf_counter() - start
    targets = bow.bow_targets(codes, params.size)
    save_torch(
        {
            "words": km["words"],
            "codes": codes,
            "layer": params.layer,
            "drop_border": params.drop_border,
            "teacher": record["name"],
            "teacher_path": str(args.teacher),
            "params": asdict(params),
        },
        args.out,
    )
    metrics = {
        "teacher": record["name"],
        "layer": params.layer,
        "size": params.size,
        "features": list(features.shape),
        "inertia": km["inertia"],
        "inertia_per_feature": km["inertia"] / len(features),
        **bow.word_usage(km["word_counts"]),
        "codes_per_image": codes.shape[1],
        "target_entropy": float(bow.entropy(targets).mean()),
        "mean_histogram_perplexity": float(torch.exp(bow.entropy(targets.mean(0, keepdim=True)))[0]),
        "sample_seconds": round(sample_seconds, 3),
        "kmeans_seconds": round(km["seconds"], 3),
        "assign_seconds": round(code_seconds, 3),
        "assign_images_per_second": round(len(images) / max(code_seconds, 1e-9), 1),
        "faiss_gpu": km["gpu"],
        "parameters": count_parameters(teacher),
        **clock.summary(),
    }
    write_json(args.metrics, metrics)
    log(
        f"vocabulary: inertia/feature {metrics['inertia_per_feature']:.4g}, "
        f"{metrics['words_used']}/{params.size} words used, target entropy {metrics['target_entropy']:.3f} nats"
    )


if __name__ == "__main__":
    main()
