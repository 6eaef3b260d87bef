"""torchdistill's KD on bowflow's resnet56 -> resnet20: the peer side of `benchmarks/bench_peer_kd.py`.

Runs inside the throw-away virtual env that bench_peer_kd creates (torchdistill 1.1 installed
there, torch/torchvision/numpy/PyYAML/SciPy seen through a .pth pointing at the project's
site-packages). It imports torchdistill, torch, torchvision and from bowflow only
`bowflow/networks.py` and the architecture modules it registers (torch alone), so teacher and
student are the very same networks, and the budget rule `bowflow/budget.py` (standard library).

As torchdistill's users run it (https://github.com/yoshitomo-matsubara/torchdistill,
`examples/torchvision/image_classification.py` with its CIFAR-10 KD sample config
`configs/sample/cifar10/kd/resnet20_from_densenet_bc_k12_depth100-final_run.yaml`):
- the `train:` section of that config as YAML, read by `torchdistill.common.yaml_util`
  (RandomSampler, batch 64, drop_last false; teacher frozen, student trained; SGD lr 0.1,
  momentum 0.9, weight decay 1e-4 on every parameter; MultiStepLR x0.1 at 50% and 75% of the
  epochs, stepped per epoch; `WeightedSumLoss` of one `KDLoss`, T 4, alpha 0.9, i.e.
  0.9 CE + 0.1 T^2 KL, batchmean);
- the dataset: the config's transforms (RandomCrop 32 with padding 4, RandomHorizontalFlip,
  ToTensor, Normalize) on a PIL image per sample, as torchvision's CIFAR10 serves them; the
  Normalize statistics are bowflow's (those of the training images), so both sides see the
  same standardised pixels and the teacher its own training statistics;
- `get_distillation_box(...)`, then per epoch `pre_epoch_process`, per batch
  `forward_process` + `post_forward_process`, `post_epoch_process`: the example's loop.
  Not run: the example's per-epoch validation and best-checkpoint saving (not training, and
  bowflow's side has none), and its MetricLogger printing.
- The teacher stays in training mode, as in the example (it loads the model and never calls
  eval() before training): its BatchNorm normalises with the batch's statistics, not its
  running ones, and updates them. That is how torchdistill's users run it, so it is kept.

    python benchmarks/peer_torchdistill_kd.py --inputs IN.pt --config CFG.json --out DIR

IN.pt: {"images": uint8 [N, H, W, 3], "labels": int64 [N], "teacher": {"backbone", "classifier"}
state dicts, "init_student": {"backbone", "classifier"}}. Trains until the measured training
time reaches the config's `seconds` (bowflow.budget.EpochBudget, the rule bowflow's side uses):
the milestones of MultiStepLR are laid out over the planned epochs and moved when the plan
moves. Writes DIR/student.pt ({"backbone", "classifier"} state dicts) and DIR/train.json.
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import resource
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torchdistill  # noqa: E402
from torchdistill.common import yaml_util  # noqa: E402
from torchdistill.core.distillation import get_distillation_box  # noqa: E402

from bowflow.budget import EpochBudget  # noqa: E402  (standard library only)
from bowflow.networks import build_backbone  # noqa: E402  (torch only: the same resnets)

# The `train:` section of torchdistill's CIFAR-10 KD sample config, with the numbers this
# benchmark sets ({...}); on a CPU no wrapper applies (torchdistill wraps on CUDA only).
TRAIN_YAML = """
train:
  log_freq: 100
  num_epochs: {epochs}
  train_data_loader:
    dataset_id: 'cifar10/train'
    sampler:
      class_or_func: !import_get
        key: 'torch.utils.data.RandomSampler'
      kwargs:
    kwargs:
      batch_size: {batch_size}
      num_workers: {workers}
      drop_last: False
  teacher:
    forward_proc: 'forward_batch_only'
    sequential: []
    requires_grad: False
    frozen_modules: []
  student:
    forward_proc: 'forward_batch_only'
    adaptations:
    sequential: []
    requires_grad: True
    frozen_modules: []
  optimizer:
    key: 'SGD'
    kwargs:
      lr: {lr}
      momentum: 0.9
      weight_decay: {weight_decay}
  scheduler:
    key: 'MultiStepLR'
    kwargs:
      milestones: {milestones}
      gamma: 0.1
  criterion:
    key: 'WeightedSumLoss'
    kwargs:
      sub_terms:
        kd:
          criterion:
            key: 'KDLoss'
            kwargs:
              student_module_path: '.'
              student_module_io: 'output'
              teacher_module_path: '.'
              teacher_module_io: 'output'
              temperature: {temperature}
              alpha: {alpha}
              reduction: 'batchmean'
          weight: 1.0
"""


class Classifier(nn.Module):
    """A bowflow backbone + linear classifier as one module: standardised images -> logits
    (what torchdistill's KDLoss reads at module path '.')."""

    def __init__(self, arch: str, num_classes: int, state: dict | None = None):
        super().__init__()
        self.backbone = build_backbone(arch)
        self.classifier = nn.Linear(self.backbone.out_channels, num_classes)
        if state is not None:
            self.backbone.load_state_dict(state["backbone"])
            self.classifier.load_state_dict(state["classifier"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))


class LabelledImages(torch.utils.data.Dataset):
    """uint8 [N, H, W, 3] + labels -> (transform(PIL image), label), as torchvision's CIFAR10."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def milestones_for(epochs: int, fractions: list[float]) -> list[int]:
    """MultiStepLR milestones at these fractions of a run of `epochs` (the sample config's
    91 and 136 of 182 are 50% and 75%)."""
    return [max(1, round(f * epochs)) for f in fractions]


def move_milestones(box, epochs: int, fractions: list[float], gamma: float) -> None:
    """Lay MultiStepLR out over `epochs` from now on, and set the coming epoch's lr from the
    moved milestones (MultiStepLR only decays when it steps onto one)."""
    scheduler = box.lr_scheduler
    milestones = milestones_for(epochs, fractions)
    scheduler.milestones = Counter(milestones)
    passed = bisect.bisect_right(sorted(milestones), scheduler.last_epoch)
    for group, base_lr in zip(box.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * gamma**passed


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(inputs: dict, cfg: dict) -> tuple[Classifier, dict]:
    seed = cfg["seed"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    num_classes = cfg["num_classes"]
    teacher = Classifier(cfg["teacher_arch"], num_classes, inputs["teacher"])
    student = Classifier(cfg["student_arch"], num_classes, inputs["init_student"])
    transform = T.Compose(
        [
            T.RandomCrop(cfg["image_size"], padding=cfg["padding"]),
            T.RandomHorizontalFlip(p=0.5),
            T.ToTensor(),
            T.Normalize(mean=cfg["mean"], std=cfg["std"]),
        ]
    )
    dataset = LabelledImages(inputs["images"].numpy(), inputs["labels"].numpy(), transform)
    steps_per_epoch = -(-len(dataset) // cfg["batch_size"])  # drop_last False
    budget = EpochBudget(cfg["seconds"], steps_per_epoch)
    fractions = cfg["milestone_fractions"]
    config_path = Path(cfg["out"]) / "train.yaml"
    config_path.write_text(
        TRAIN_YAML.format(
            epochs=budget.planned,
            batch_size=cfg["batch_size"],
            workers=cfg["workers"],
            lr=cfg["lr"],
            weight_decay=cfg["weight_decay"],
            milestones=milestones_for(budget.planned, fractions),
            temperature=cfg["temperature"],
            alpha=cfg["alpha"],
        )
    )
    train_config = yaml_util.load_yaml_file(str(config_path))["train"]
    device = torch.device("cpu")
    box = get_distillation_box(teacher, student, {"cifar10/train": dataset}, train_config, device, None, False, 1)

    history = []
    step = 0
    cpu_start, children_start = time.process_time(), children_cpu_seconds()
    wall_start = time.perf_counter()
    while True:
        epoch = budget.epochs
        box.pre_epoch_process(epoch=epoch)
        total_loss, images = 0.0, 0
        lr = box.optimizer.param_groups[0]["lr"]
        epoch_start = step_end = time.perf_counter()  # before the iterator (and its workers)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            if not torch.isfinite(loss):
                raise SystemExit(f"torchdistill KD diverged at epoch {epoch + 1}: loss {loss.item()}")
            total_loss += float(loss.detach()) * len(targets)
            images += len(targets)
            step += 1
            step_end = time.perf_counter()
        seconds = step_end - epoch_start
        box.post_epoch_process()  # the epoch-wise MultiStepLR step
        go_on = budget.end_epoch(seconds)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": round(total_loss / images, 5),
                "lr": round(lr, 6),
                "seconds": round(seconds, 3),
                "planned_epochs": budget.planned,
                "images_per_second": round(images / seconds, 1),
            }
        )
        print(
            f"[torchdistill] epoch {epoch + 1}/{budget.planned} loss {history[-1]['loss']:.4f} lr {lr:.4g} "
            f"{history[-1]['images_per_second']:.1f} images/s, {budget.elapsed:.1f}/{budget.seconds:g} s",
            file=sys.stderr,
            flush=True,
        )
        if not go_on:
            break
        move_milestones(box, budget.planned, fractions, 0.1)
    wall_seconds = time.perf_counter() - wall_start
    cpu_seconds = time.process_time() - cpu_start + children_cpu_seconds() - children_start
    images_seen = budget.epochs * len(dataset)  # drop_last False: every image once per epoch
    teacher_in_training_mode = box.teacher_model.training  # as the example leaves it (docstring)
    box.clean_modules()
    stats = {
        **budget.record(),
        "steps": step,
        "images": images_seen,
        "seconds": round(budget.elapsed, 3),
        "wall_seconds": round(wall_seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "images_per_second": round(images_seen / budget.elapsed, 2),
        "history": history,
        "torchdistill": torchdistill.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "workers": cfg["workers"],
        "teacher_in_training_mode": teacher_in_training_mode,
    }
    return student, stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    cfg = json.loads(args.config.read_text())
    torch.set_num_threads(cfg["threads"])
    inputs = torch.load(args.inputs, weights_only=True)
    args.out.mkdir(parents=True, exist_ok=True)
    student, stats = train(inputs, {**cfg, "out": str(args.out)})
    torch.save(
        {"backbone": student.backbone.state_dict(), "classifier": student.classifier.state_dict()},
        args.out / "student.pt",
    )
    (args.out / "train.json").write_text(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
