"""Semi-supervised fine-tuning: the whole network plus a new linear head, trained on a seeded,
class-balanced fraction of the labelled training images, scored by top-1 on the test split.

The protocol the teacher-student papers report as "semi-supervised learning, 1% and 10% of
the labels" (OBoW, BYOL and SwAV use SimCLR's): SimCLR, Chen et al. 2020, appendix B.5
(https://arxiv.org/abs/2002.05709; code https://github.com/google-research/simclr):
  - the labelled subset: a fixed random 1% or 10% of the training images, balanced over
    the classes (SimCLR publishes its ImageNet subsets; here a seeded draw per class);
  - every weight trained, backbone and a new linear head (BatchNorm in training mode);
  - SGD with Nesterov momentum 0.9, learning rate 0.05 x batch / 256, no warm-up, cosine
    decay to 0 over the run, no weight decay or other regularisation;
  - augmentation: random resized crop and horizontal flip only;
  - 60 epochs for 1% of the labels, 30 for 10%.
Deliberate differences (docs/fidelity/finetune.md): the crop keeps at least `crop_scale_min`
of the image area (0.2 by default, as every view of bowflow on small images; the
Inception crop's 0.08 leaves a few pixels of an 8 or 32 px image), and a class with fewer
images than 1 / fraction still gets one labelled image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bowflow.augment import random_resized_crop, to_float
from bowflow.backbone import Backbone
from bowflow.models import Normalizer, classifier_top1


@dataclass(frozen=True)
class FineTuneRecipe:
    """One fine-tuning run's settings (units beside each)."""

    epochs: int  # passes over the labelled subset
    batch_size: int  # images per step (the subset's size when it is smaller)
    lr: float  # learning rate per 256 images (SimCLR: 0.05), scaled by batch / 256
    momentum: float = 0.9  # Nesterov momentum (SimCLR)
    weight_decay: float = 0.0  # SimCLR fine-tunes without any regularisation
    crop_scale_min: float = 0.2  # smallest crop, as a fraction of the image area


def balanced_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """A seeded, class-balanced subset of the rows: labels [N] int64 -> sorted row indices [M].

    Each class keeps round(fraction x its images) of them, at least one, drawn by a seeded
    permutation of its rows: the same seed and labels give the same rows on any machine."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels.unique(sorted=True).tolist():
        rows = (labels == label).nonzero().flatten()
        keep = max(1, round(fraction * len(rows)))
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:keep]])
    return torch.cat(chosen).sort().values


def fine_tune(
    backbone: Backbone,
    normalizer: Normalizer,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    recipe: FineTuneRecipe,
    seed: int,
    device: torch.device,
) -> tuple[torch.nn.Linear, dict]:
    """Train `backbone` (in place) and a new linear head on uint8 images [N, 3, H, W] with
    labels [N]; -> (the head, pooled [B, C] -> logits [B, num_classes], in eval mode;
    {"steps", "final_loss"}). Every random draw (head init, order, crops) comes from `seed`."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(backbone.out_channels, num_classes).to(device)
    backbone.to(device).train()
    head.train()
    n = len(images)
    batch = min(recipe.batch_size, n)
    lr = recipe.lr * batch / 256
    optimizer = torch.optim.SGD(
        [*backbone.parameters(), *head.parameters()],
        lr=lr,
        momentum=recipe.momentum,
        nesterov=True,
        weight_decay=recipe.weight_decay,
    )
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(n / batch)
    total, step, loss = recipe.epochs * steps_per_epoch, 0, torch.zeros(())
    size = images.shape[-1]
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            rows = order[start : start + batch]
            x = random_resized_crop(
                to_float(images[rows]), size, scale=(recipe.crop_scale_min, 1.0), generator=generator
            )  # [B, 3, H, W] in [0, 1]
            logits = head(backbone(normalizer.normalize(x.to(device))))  # [B, num_classes]
            loss = F.cross_entropy(logits, labels[rows].to(device))
            for group in optimizer.param_groups:  # cosine to 0, no warm-up
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    backbone.eval()
    return head.eval(), {"steps": step, "final_loss": round(loss.item(), 5)}


def fine_tuned_top1(
    backbone: Backbone,
    normalizer: Normalizer,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    num_classes: int,
    fraction: float,
    recipe: FineTuneRecipe,
    seed: int,
    device: torch.device,
    batch_size: int = 256,
) -> dict:
    """Fine-tune on `fraction` of the training rows (balanced_subset), then score the test
    split: {"top1": %, "train_images", "epochs", "steps", "final_loss"}."""
    rows = balanced_subset(train_labels, fraction, seed)
    head, trained = fine_tune(
        backbone, normalizer, train_images[rows], train_labels[rows], num_classes, recipe, seed, device
    )
    top1 = classifier_top1(backbone, normalizer, head, test_images, test_labels, batch_size, device)
    return {"top1": top1, "train_images": len(rows), "epochs": recipe.epochs, **trained}
