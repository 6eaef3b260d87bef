"""Model files: a trained backbone plus everything needed to use it again.

`data/models/<name>/model.pt` holds the backbone's architecture (`arch`, `width`, `depth`,
`arch_params`: a `BackboneSpec`) and weights, the input normalisation computed on its
training images, and the method/params that produced it. A file written before
`arch_params` existed loads with none (the arch's defaults, which it was trained with).
The vocab, student and evaluate stages load teachers and students through `load_model`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from bowflow.io import load_torch, save_torch
from bowflow.networks import Backbone, BackboneSpec, build_backbone


class Normalizer:
    """uint8 or [0,1] float images [B, 3, H, W] -> per-channel standardised float32."""

    def __init__(self, mean: list[float], std: list[float]):
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def fit(cls, images: torch.Tensor, max_images: int = 10000) -> Normalizer:
        """Channel mean/std of uint8 images [N, 3, H, W] (first max_images rows)."""
        x = images[:max_images].float() / 255.0
        return cls(x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())

    def _stats(self, device):
        if device not in self._cache:
            self._cache[device] = (
                torch.tensor(self.mean, device=device).view(1, -1, 1, 1),
                torch.tensor(self.std, device=device).view(1, -1, 1, 1),
            )
        return self._cache[device]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x float in [0, 1] [B, 3, H, W] -> standardised."""
        mean, std = self._stats(x.device)
        return (x - mean) / std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> standardised float32 (the clean, unaugmented input)."""
        return self.normalize(images.float() / 255.0)


def save_model(
    path: str | Path, backbone: Backbone, normalizer: Normalizer, params, image_size: int, extra: dict | None = None
) -> None:
    """A model file: the backbone's architecture and weights, its input normalizer, the
    method's params and `extra`, the run's record. The training stages put in it the run's
    name, parent, generation and `seed` (the seed that trained it: with the params, what
    reproduces the weights), the method's label and what the method exports."""
    save_torch(
        {
            **BackboneSpec.of(params).record(),
            "state_dict": backbone.state_dict(),
            "mean": normalizer.mean,
            "std": normalizer.std,
            "method": params.method,
            "params": asdict(params),
            "image_size": image_size,
            **(extra or {}),
        },
        path,
    )


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[Backbone, Normalizer, dict]:
    """-> (backbone in eval mode on device, its input normalizer, the raw model record)."""
    record = load_torch(path)
    backbone = build_backbone(BackboneSpec.from_record(record))
    backbone.load_state_dict(record["state_dict"])
    backbone.to(device).eval()
    return backbone, Normalizer(record["mean"], record["std"]), record


def load_classifier(record: dict, path: str | Path = "model.pt") -> torch.nn.Linear:
    """The linear classifier a supervised model file stores (pooled [B, C] -> logits [B, K]),
    in eval mode on the CPU. A model file without one (self-supervised) is a ValueError."""
    if "classifier" not in record:
        raise ValueError(
            f"{path}: has no classifier: it was trained by '{record.get('method')}', "
            f"expected a supervised or distillation run (a teachers: entry)"
        )
    weight = record["classifier"]["weight"]
    classifier = torch.nn.Linear(weight.shape[1], weight.shape[0])
    classifier.load_state_dict(record["classifier"])
    return classifier.eval()


@torch.no_grad()
def classifier_top1(
    backbone: Backbone,
    normalizer: Normalizer,
    classifier: torch.nn.Linear,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> float:
    """Top-1 accuracy (%) of backbone + classifier on uint8 images [N, 3, H, W], labels [N]."""
    logits = classifier.to(device)(pooled_features(backbone, normalizer, images, "last", batch_size, device).to(device))
    return round(float((logits.argmax(1).cpu() == labels).float().mean()) * 100, 2)


@torch.no_grad()
def pooled_features(
    backbone: Backbone,
    normalizer: Normalizer,
    images: torch.Tensor,
    layer: str,
    batch_size: int,
    device: torch.device,
    progress: str = "",
) -> torch.Tensor:
    """uint8 images [N, 3, H, W] -> globally average-pooled features [N, C] of `layer` (CPU).

    Runs in fp32 in the default layout, so that evaluation does not depend on the training
    compute choice. `progress`, when given, labels a progress bar over the batches.
    """
    backbone.eval()
    chunks = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=progress, disable=not progress, leave=False, mininterval=2.0):
        x = normalizer(images[start : start + batch_size].to(device))
        chunks.append(backbone.pooled(x, layer).float().cpu())
    return torch.cat(chunks)
