"""DINO (Caron et al., ICCV 2021): self-distillation with no labels.

A student (backbone + DINOHead) learns to match the output distribution of a teacher
that is an exponential moving average of itself. Each step:

    images [B] -> 2 global crops (full size) + L local crops (small), all augmented
    teacher (EMA, no gradient): global crops -> logits t_g [B, D]
    student: every crop -> logits s_v [B, D]   (globals and locals batched separately)
    loss = mean over pairs (g, v != g) of CE(softmax((t_g - c) / tau_t), softmax(s_v / tau_s))
    c <- 0.9 c + 0.1 mean(t)          (centring: no dimension may dominate)
    teacher <- m teacher + (1 - m) student, m: 0.996 -> 1 on a cosine over the steps

Under torchrun the centre is updated from every process's teacher outputs (gathered), so
all hold the same centre; the loss is per image, averaged over each process's rows.
Centring pushes the teacher towards uniform outputs and the low teacher temperature
(sharpening) towards one-hot outputs; together they avoid both collapses. The logs show
which way a run drifts: `teacher_entropy` (mean entropy of one image's target, nats) falls
towards 0 when it collapses onto one dimension, and `teacher_batch_entropy` (entropy of
the batch-mean target) falls when all images share the same target; both approach
log D when the targets go uniform. The evaluated network is the teacher's backbone (the
authors report the teacher, which is better than the student throughout training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bowflow import augment
from bowflow.checks import param
from bowflow.distributed import gather_no_grad
from bowflow.heads import DINOHead, cosine_momentum, ema_update, frozen_copy
from bowflow.losses import embedding_std, float32
from bowflow.optim import clip_gradients
from bowflow.roles.base import TrainParams, register_method
from bowflow.roles.self_supervised import SelfSupervised

# ---------------------------------------------------------------- loss


@float32
def dino_loss(
    student_logits: list[torch.Tensor],
    teacher_logits: list[torch.Tensor],
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """DINO: cross-entropy between the teacher's centred, sharpened softmax of one view and
    the student's softmax of every other view.

    student_logits: V tensors [B, D], the global views first, then the local crops;
    teacher_logits: G tensors [B, D] (G <= V) of the same global views in the same order
    (the teacher sees global views only). center [1, D] (see `update_center`).
    teacher p_t = softmax((t - center) / teacher_temp), detached; student log p_s =
    log_softmax(s / student_temp). loss = mean over pairs (g, v) with v != g of
    mean_batch sum_D -p_t[g] log p_s[v]: same-view pairs are skipped (trivial to match).
    student_temp = 0.1 (DINO); teacher_temp from `teacher_temperature`. Centring alone
    would push towards uniform outputs and sharpening alone towards one dimension; DINO
    balances the two to avoid both collapses.
    """
    if len(student_logits) < 2 or len(teacher_logits) > len(student_logits):
        raise ValueError("DINO needs at least two student views, the teacher's views first")
    targets = [F.softmax((t - center) / teacher_temp, dim=1).detach() for t in teacher_logits]
    log_probs = [F.log_softmax(s / student_temp, dim=1) for s in student_logits]
    terms = [
        -(p * log_p).sum(dim=1).mean() for g, p in enumerate(targets) for v, log_p in enumerate(log_probs) if v != g
    ]
    return torch.stack(terms).mean()


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: list[torch.Tensor], momentum: float = 0.9) -> torch.Tensor:
    """EMA of the teacher's batch-mean output: center [1, D], teacher_logits G x [B, D]
    -> momentum * center + (1 - momentum) * mean over all G*B rows. momentum = 0.9 (DINO).
    Call after `dino_loss` with the same teacher logits."""
    batch_center = torch.cat(teacher_logits).float().mean(dim=0, keepdim=True)
    return momentum * center + (1 - momentum) * batch_center


def teacher_temperature(epoch: int, warmup_epochs: int, start: float = 0.04, end: float = 0.07) -> float:
    """DINO's teacher temperature at `epoch`: the authors' schedule
    np.linspace(start, end, warmup_epochs) over epochs 0 .. warmup_epochs - 1 (so `end` is
    reached at epoch warmup_epochs - 1), then `end` (the paper: 0.04 -> 0.07 over the first
    30 epochs). A low temperature (sharp teacher) early on keeps training stable."""
    if epoch >= warmup_epochs:
        return end
    if warmup_epochs == 1:
        return start
    return start + (end - start) * epoch / (warmup_epochs - 1)


@dataclass
class DINOParams(TrainParams):
    method: str = "dino"
    lr: float = param(0.05, "peak SGD lr at batch 64 (lightly's CIFAR DINO: SGD 0.06 x batch/128)")
    weight_decay: float = param(
        5e-4,
        "fixed L2 factor (the trainer has no wd schedule): DINO's cosine "
        "0.04 -> 0.4 belongs to its AdamW ViT recipe and would be far "
        "too strong with SGD; 5e-4 is the SGD convnet value "
        "RotNet/BoWNet use here",
    )
    optimizer: str = param(
        "sgd",
        "sgd (Nesterov). DINO: AdamW (lr 5e-4 x batch/256) for ViTs, "
        "LARS/SGD for ResNet-50. On digits AdamW (lr 1e-3, wd 0.04) drifted "
        "towards uniform targets as fast as SGD in a 30-step probe, so SGD, "
        "like the other convnets",
    )
    clip_grad: float = param(
        3.0,
        "max gradient L2 norm of each parameter tensor (DINO: 3.0, clipped "
        "per parameter by its utils.clip_gradients; see "
        "clip_grad_per_parameter)",
    )
    clip_grad_per_parameter: bool = param(
        True,
        "clip each parameter tensor's gradient norm separately "
        "(DINO's clip_gradients) instead of the global norm of "
        "all of them",
    )
    out_dim: int = param(
        2048,
        "D, prototypes of the head's last layer (DINO: 65536 for ImageNet). "
        "2048 as in lightly's CIFAR DINO: far more than the classes, while "
        "65536 would make the last layer larger than the convnet and leave most "
        "prototypes unused",
        above=0,
    )
    hidden_dim: int = param(512, "head MLP width (DINO: 2048)", above=0)
    head_bn: bool = param(
        True,
        "BN after each hidden layer of the head MLP (DINO's use_bn_in_head, "
        "its ResNet-50 recipe). Without it a small convnet's pooled features "
        "are nearly identical across images at init, the centred targets are "
        "uniform and the run collapses within 2 epochs (digits: embedding_std "
        "0.15 -> 0.02)",
    )
    bottleneck_dim: int = param(128, "head bottleneck before the L2 norm (DINO: 256)", above=0)
    teacher_momentum: float = param(
        0.99,
        "EMA momentum at step 0, raised to 1 on a cosine (DINO: "
        "0.996 for ~1000 steps/epoch x 100+ epochs; runs of a few "
        "hundred steps need a faster teacher)",
        low=0,
        high=1,
    )
    center_momentum: float = param(0.9, "EMA of the teacher's batch mean (DINO)", low=0, high=1)
    student_temp: float = param(0.1, "student softmax temperature (DINO)", above=0)
    warmup_teacher_temp: float = param(
        0.02,
        "teacher temperature at epoch 0 (DINO: 0.04). Halved, as "
        "the authors advise when targets drift to uniform: at "
        "0.04 a convnet on digits loses its spread (teacher "
        "entropy -> log D) within 30 steps, at 0.02 it recovers",
        above=0,
    )
    teacher_temp: float = param(
        0.04, "teacher temperature after the warm-up (DINO: 0.04-0.07; 0.04 here, see above)", above=0
    )
    teacher_temp_warmup_epochs: int = param(
        10,
        "epochs of linear teacher temperature warm-up (DINO: 30 of 100-800 epochs; scaled to our 20-60 epoch runs)",
        low=0,
    )
    freeze_last_layer_epochs: int = param(
        1, "epochs during which the head's last layer gets no update (DINO: 1)", low=0
    )
    local_crops: int = param(
        0,
        "local crops per image, seen by the student only (DINO: 10 at 96 px of "
        "224, recipe 4-6 elsewhere). 0 on small images: on 16 px digits 4 "
        "local crops (7 px, 5-40% of the image) drove the teacher's targets to "
        "uniform within 4 epochs (teacher entropy 2.9 -> 6.1 of log D = 7.6) "
        "while the 2 global crops alone learned; try 4-6 from 32 px up",
        low=0,
    )
    global_scale_min: float = param(
        0.4,
        "smallest global crop area fraction, largest is 1 (DINO multi-crop: 0.4; 0.14 with the ImageNet 2-crop recipe)",
        above=0,
        high=1,
    )
    local_scale_min: float = param(0.05, "local crop area fraction, lower end (DINO: 0.05)", above=0, high=1)
    local_scale_max: float = param(0.4, "local crop area fraction, upper end (DINO: 0.4)", above=0, high=1)
    local_size: float = param(
        3 / 7,
        "local crop side as a fraction of the image side (DINO: 96/224), "
        "at least 4 px; on a ViT rounded down to whole patches",
        above=0,
        high=1,
    )
    jitter: float = param(0.4, "brightness/contrast/saturation strength (DINO: 0.4, 0.4, 0.2)", low=0)
    hue: float = param(0.1, "hue shift, fraction of a turn (DINO)", low=0)
    jitter_p: float = param(0.8, "colour jitter probability (DINO)", low=0, high=1)
    gray_p: float = param(0.2, "grayscale probability (DINO)", low=0, high=1)
    blur_p: float = param(
        1.0,
        "Gaussian blur probability of the first global view; a tenth of it on "
        "the second, half on the locals (DINO: 1.0 / 0.1 / 0.5). Sigma 0.1-2.0 "
        "px at 224 scaled to the view (augment.blur_sigma_px): negligible at "
        "16-32 px, as in every other method's views",
        low=0,
        high=1,
    )
    solarize_p: float = param(
        0.0,
        "solarization probability of the second global view (DINO: 0.2). 0 "
        "for digits, whose bright strokes on black would vanish; 0.2 for "
        "natural images",
        low=0,
        high=1,
    )

    def validate(self) -> None:
        super().validate()
        if self.local_scale_min > self.local_scale_max:
            raise ValueError(
                f"local_scale_min ({self.local_scale_min}) must be <= local_scale_max ({self.local_scale_max})"
            )


@register_method("dino")
class DINO(SelfSupervised):
    label = "DINO"
    Params = DINOParams
    params: DINOParams  # an instance of Params (typing only)
    center: torch.Tensor  # buffers, registered in __init__ (typing only)
    steps_done: torch.Tensor
    batch_spanning = ("centre",)
    # tests/test_method_learning.py: k-NN (measured, seed 0; untrained control 40.6) 55.9.
    learning_recipe = {
        "epochs": 20,
        "out_dim": 256,
        "hidden_dim": 64,
        "bottleneck_dim": 32,
        "teacher_temp_warmup_epochs": 5,
        "lr": 0.2,
    }

    def __init__(self, params, backbone, inputs):
        super().__init__(params, backbone, inputs)
        self.head = DINOHead(
            backbone.out_channels, params.out_dim, params.hidden_dim, params.bottleneck_dim, bn=params.head_bn
        )
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, params.out_dim), persistent=True)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long), persistent=True)
        size = inputs.image_size
        colour = dict(jitter=params.jitter, hue=params.hue, jitter_p=params.jitter_p, gray_p=params.gray_p)
        global_scale = (params.global_scale_min, 1.0)
        local_size = augment.scaled_size(size, params.local_size)
        patch = getattr(backbone, "patch", 1)  # a ViT: whole patches (96 = 6 x 16 px in DINO)
        local_size = max(patch, local_size // patch * patch)
        local = augment.ViewSpec(
            size=local_size,
            crop_scale=(params.local_scale_min, params.local_scale_max),
            blur_p=params.blur_p / 2,
            **colour,
        )
        self.specs = [
            augment.ViewSpec(size=size, crop_scale=global_scale, blur_p=params.blur_p, **colour),
            augment.ViewSpec(
                size=size, crop_scale=global_scale, blur_p=params.blur_p / 10, solarize_p=params.solarize_p, **colour
            ),
            *[local] * params.local_crops,
        ]

    def views(self, images, index, generator):
        """uint8 [B, 3, H, W] -> {"global0", "global1": [B, 3, H, H], "local0".. : [B, 3, h, h]},
        float in [0, 1] (not normalised), in the specs' order."""
        crops = augment.make_views(images, self.specs, generator)
        names = ["global0", "global1"] + [f"local{i}" for i in range(len(crops) - 2)]
        return dict(zip(names, crops))

    def step(self, views, index):
        p, batch = self.params, len(views["global0"])
        epoch = int(self.steps_done) // self.steps_per_epoch
        teacher_temp = teacher_temperature(epoch, p.teacher_temp_warmup_epochs, p.warmup_teacher_temp, p.teacher_temp)
        norm = self.normalizer.normalize
        global_x = norm(torch.cat([views["global0"], views["global1"]]))  # [2B, 3, H, H]
        locals_ = [views[f"local{i}"] for i in range(p.local_crops)]
        with torch.no_grad():
            _, teacher_logits = self.teacher_head.outputs(self.teacher_backbone(global_x))
        bottleneck, student_logits = self.head.outputs(self.backbone(global_x))
        if locals_:
            student_logits = torch.cat([student_logits, self.head(self.backbone(norm(torch.cat(locals_))))])
        teacher_views = list(teacher_logits.split(batch))  # 2 x [B, D]
        loss = dino_loss(list(student_logits.split(batch)), teacher_views, self.center, teacher_temp, p.student_temp)
        with torch.no_grad():
            targets = F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=1)
            stats = {
                "loss": loss.detach(),
                "embedding_std": embedding_std(bottleneck[:batch]),
                "teacher_entropy": -torch.xlogy(targets, targets).sum(1).mean(),
                "teacher_batch_entropy": -torch.xlogy(targets.mean(0), targets.mean(0)).sum(),
                "center_norm": self.center.norm(),
                "teacher_temp": torch.tensor(teacher_temp),
                "teacher_momentum": torch.tensor(self.momentum(int(self.steps_done))),
            }
            # The centre is the mean of the GLOBAL batch's teacher outputs (the authors
            # all-reduce it), view by view, so every process holds the same centre.
            everyone = [gather_no_grad(t) for t in teacher_views]  # 2 x [B_global, D]
            self.center.copy_(update_center(self.center, everyone, p.center_momentum))
        return loss, stats

    def momentum(self, step: int) -> float:
        return cosine_momentum(step, self.total_steps, self.params.teacher_momentum)

    def before_optimizer_step(self, step):
        if step < self.params.freeze_last_layer_epochs * self.steps_per_epoch:
            self.head.last_direction.grad = None  # the optimizer skips it entirely

    def clip_gradients(self, parameters):
        """DINO's `utils.clip_gradients`: each parameter tensor's gradient on its own (or
        their global norm with `clip_grad_per_parameter: false`)."""
        if self.params.clip_grad > 0:
            clip_gradients(parameters, self.params.clip_grad, per_parameter=self.params.clip_grad_per_parameter)

    def after_step(self, step, total_steps):
        momentum = self.momentum(step)
        ema_update(self.teacher_backbone, self.backbone, momentum, copy_buffers=False)
        ema_update(self.teacher_head, self.head, momentum, copy_buffers=False)
        self.steps_done.fill_(step + 1)

    def export_backbone(self):
        return self.teacher_backbone
