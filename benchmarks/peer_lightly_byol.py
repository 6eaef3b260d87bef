"""lightly's BYOL on bowflow's convnet: the peer side of `benchmarks/bench_peer.py`.

Runs inside the throw-away virtual env that bench_peer creates (lightly 1.6 installed there,
torch/torchvision seen through a .pth pointing at the project's site-packages). It imports
lightly, torch, torchvision (through lightly's transforms), numpy, PIL, and from bowflow
only `bowflow/networks.py` and the architecture modules it registers (via sys.path; torch
alone), so the backbone is the very same `convnet`, and
the budget rule `bowflow/budget.py` (standard library only).

The model, the transforms, the DataLoader and the loop are written as lightly's BYOL example
(`examples/pytorch/byol.py`: a `BYOL` module with `backbone`, `projection_head`,
`prediction_head` and their momentum copies; `BYOLTransform`; a torch DataLoader with
shuffle and drop_last; `update_momentum` with `cosine_schedule` before each step;
`0.5 * (criterion(p0, z1) + criterion(p1, z0))`), with the hyperparameters bench_peer
passes (bowflow's BYOL defaults; see bench_peer's docstring for what differs and why).

    python benchmarks/peer_lightly_byol.py --inputs IN.pt --config CFG.json --out DIR

IN.pt: {"images": uint8 [N, H, W, 3], "init_backbone": state_dict}. Trains on all images
until the measured training time reaches the config's `seconds`, by the rule of
`bowflow/budget.py` (the one bowflow's side uses too): the clock is checked after
each epoch, the epochs left are re-planned from the measured ones, and lightly's schedules
(`CosineWarmupScheduler` for the lr, `cosine_schedule` for the EMA momentum) are laid out
over the planned steps, their total moved when the plan changes. Writes DIR/backbone.pt (the
online backbone's state_dict) and DIR/train.json (training seconds, epochs, per-epoch
seconds and plans, wall and CPU seconds, images/s, per-epoch loss).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lightly  # noqa: E402
from lightly.loss import NegativeCosineSimilarity  # noqa: E402
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead  # noqa: E402
from lightly.models.utils import deactivate_requires_grad, get_weight_decay_parameters, update_momentum  # noqa: E402
from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform  # noqa: E402
from lightly.utils.scheduler import CosineWarmupScheduler, cosine_schedule  # noqa: E402

from bowflow.budget import EpochBudget  # noqa: E402  (standard library only)
from bowflow.networks import build_backbone  # noqa: E402  (torch only: the same convnet)


class BYOL(nn.Module):
    """lightly's example model, with the head sizes of bowflow's BYOL."""

    def __init__(self, backbone, feature_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feature_dim, hidden_dim, out_dim)
        self.prediction_head = BYOLPredictionHead(out_dim, hidden_dim, out_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        y = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(y)
        p = self.prediction_head(z)
        return p

    def forward_momentum(self, x):
        y = self.backbone_momentum(x).flatten(start_dim=1)
        z = self.projection_head_momentum(y)
        z = z.detach()
        return z


class ImageArray(torch.utils.data.Dataset):
    """uint8 [N, H, W, 3] -> (transform(PIL image), 0), as torchvision's CIFAR10 serves them."""

    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), 0


def byol_transform(cfg: dict) -> BYOLTransform:
    """lightly's BYOL views with bowflow's BYOL parameters (crop scale, blur sigma scaled
    to the image size, the same colour jitter, grayscale, blur and solarize probabilities,
    and bowflow's per-channel normalisation of the training images)."""
    size = cfg["image_size"]
    b, c, s, h = cfg["jitter"]
    scale = size / 224
    sigmas = (cfg["blur_sigma"][0] * scale, cfg["blur_sigma"][1] * scale)
    normalize = {"mean": cfg["mean"], "std": cfg["std"]}
    common = dict(
        input_size=size,
        cj_prob=cfg["jitter_p"],
        cj_bright=b,
        cj_contrast=c,
        cj_sat=s,
        cj_hue=h,
        min_scale=cfg["crop_scale_min"],
        random_gray_scale=cfg["gray_p"],
        sigmas=sigmas,
        normalize=normalize,
    )
    return BYOLTransform(
        view_1_transform=BYOLView1Transform(
            gaussian_blur=cfg["blur_p"][0], solarization_prob=cfg["solarize_p"][0], **common
        ),
        view_2_transform=BYOLView2Transform(
            gaussian_blur=cfg["blur_p"][1], solarization_prob=cfg["solarize_p"][1], **common
        ),
    )


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (DataLoader workers, joined each epoch)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def set_total_steps(scheduler: CosineWarmupScheduler, optimizer, total_steps: int) -> None:
    """Lay lightly's lr schedule out over `total_steps` from now on: its `max_epochs`, and the
    lr of the coming step (LambdaLR set it at its last step() from the old total)."""
    scheduler.max_epochs = total_steps
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * scheduler.scale_lr(scheduler.last_epoch)


def train(images: np.ndarray, cfg: dict, init_backbone: dict | None) -> tuple[BYOL, dict]:
    """Train lightly's BYOL on uint8 images [N, H, W, 3] until the measured training time
    reaches cfg["seconds"] (bowflow.budget.EpochBudget)."""
    seed = cfg["seed"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    backbone = build_backbone("convnet", cfg["width"])
    if init_backbone is not None:
        backbone.load_state_dict(init_backbone)
    model = BYOL(backbone, backbone.out_channels, cfg["hidden_dim"], cfg["out_dim"])

    dataset = ImageArray(images, byol_transform(cfg))
    dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg["batch_size"],
        shuffle=True,
        drop_last=True,
        num_workers=cfg["workers"],
        generator=torch.Generator().manual_seed(seed),
    )
    steps_per_epoch = len(dataloader)
    budget = EpochBudget(cfg["seconds"], steps_per_epoch)
    total_steps = budget.total_steps()

    criterion = NegativeCosineSimilarity()
    # 0.5 * (-cos - cos) has 1/4 of the gradient of bowflow's (2 - 2cos) + (2 - 2cos): with
    # lr x4 and weight decay / 4, SGD (momentum, Nesterov) makes exactly bowflow's updates.
    scale = cfg["loss_scale"]
    decay, no_decay = get_weight_decay_parameters([model.backbone, model.projection_head, model.prediction_head])
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg["weight_decay"] / scale}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"] * scale,
        momentum=cfg["momentum"],
        nesterov=cfg["momentum"] > 0,
    )
    # warm-up in steps, fixed: 1 epoch whatever the plan (the plan is never under 1 epoch)
    warmup_steps = int(cfg["warmup_epochs"] * steps_per_epoch)
    scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=warmup_steps, max_epochs=total_steps, end_value=0.0)

    history = []
    step = 0
    cpu_start, children_start = time.process_time(), children_cpu_seconds()
    wall_start = time.perf_counter()
    while True:
        epoch = budget.epochs
        model.train()
        total_loss = 0.0
        epoch_start = step_end = time.perf_counter()  # before the iterator (and its workers)
        for batch in dataloader:
            x0, x1 = batch[0]
            momentum_val = cosine_schedule(step, total_steps, cfg["momentum_base"], 1.0)
            update_momentum(model.backbone, model.backbone_momentum, m=momentum_val)
            update_momentum(model.projection_head, model.projection_head_momentum, m=momentum_val)
            p0 = model(x0)
            z0 = model.forward_momentum(x0)
            p1 = model(x1)
            z1 = model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            if not torch.isfinite(loss):
                raise SystemExit(f"lightly BYOL diverged at epoch {epoch + 1}: loss {loss.item()}")
            total_loss += float(loss.detach())
            lr = optimizer.param_groups[0]["lr"] / scale  # this step's, in bowflow's units
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            step += 1
            step_end = time.perf_counter()
        seconds = step_end - epoch_start  # to the end of the last step
        go_on = budget.end_epoch(seconds)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": round(total_loss / steps_per_epoch, 5),
                "lr": round(lr, 6),
                "seconds": round(seconds, 3),
                "planned_epochs": budget.planned,
                "images_per_second": round(steps_per_epoch * cfg["batch_size"] / seconds, 1),
            }
        )
        print(
            f"[lightly] epoch {epoch + 1}/{budget.planned} loss {history[-1]['loss']:.4f} "
            f"{history[-1]['images_per_second']:.1f} images/s, {budget.elapsed:.1f}/{budget.seconds:g} s",
            file=sys.stderr,
            flush=True,
        )
        if not go_on:
            break
        if budget.total_steps() != total_steps:
            total_steps = budget.total_steps()
            set_total_steps(scheduler, optimizer, total_steps)
    wall_seconds = time.perf_counter() - wall_start
    cpu_seconds = time.process_time() - cpu_start + children_cpu_seconds() - children_start
    images_seen = step * cfg["batch_size"]
    stats = {
        **budget.record(),
        "steps": step,
        "images": images_seen,
        "seconds": round(budget.elapsed, 3),
        "wall_seconds": round(wall_seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "images_per_second": round(images_seen / budget.elapsed, 2),
        "history": history,
        "lightly": lightly.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "workers": cfg["workers"],
    }
    return model, stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    cfg = json.loads(args.config.read_text())
    torch.set_num_threads(cfg["threads"])
    inputs = torch.load(args.inputs, weights_only=True)
    images = inputs["images"].numpy()  # [N, H, W, 3] uint8
    args.out.mkdir(parents=True, exist_ok=True)
    model, stats = train(images, cfg, inputs["init_backbone"])
    torch.save(model.backbone.state_dict(), args.out / "backbone.pt")
    (args.out / "train.json").write_text(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
