"""Distillation with a vision transformer on either side (issue 16, the future work of the IFACD paper, Rios et
al., "IFACD: Intermediate Features Augmented Contrastive Distillation", https://github.com/arkel23/layerwiseclr).

A ViT's stages are its blocks and a stage's map is its patch tokens on the grid
[B, D, H/p, W/p] (bowflow/vit.py), so every distiller reads a ViT as it reads a convnet:
KD, CRD, RKD, PKT, SP, CC and IFACD from pooled features and logits, FitNet from its hint
stage, AT, NST and VID from every stage (maps of different sides are average-pooled to the
smaller, RepDistiller's rule). What cannot work is said before training: AT, NST and VID
pair the i-th stage of one network with the i-th of the other, so the ViT needs as many
blocks as the convnet has stages; otherwise the error names both counts.
"""

import pytest
import torch

from bowflow.frozen_teacher import Teacher
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.roles.base import available_methods, get_method

NUM_CLASSES, SIZE = 4, 16
DISTILLERS = [m for m in available_methods() if get_method(m).section == "distill"]
STAGE_BY_STAGE = {"at", "nst", "vid"}
CONVNET = ("convnet", 4, 0)  # stages of 4, 8, 16 channels: 3 stages
VIT = ("vit_p2", 16, 3)  # 3 blocks of 16 on the 8 x 8 token grid of 16 px images


def images_and_labels(n: int = 32):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    return images, torch.arange(n) % NUM_CLASSES


def frozen_teacher(arch, width, depth, images) -> Teacher:
    torch.manual_seed(2)
    backbone = build_backbone(arch, width, depth)
    return Teacher(backbone, Normalizer.fit(images), torch.nn.Linear(backbone.channels[-1], NUM_CLASSES))


def distiller(name, student, teacher_arch, images, labels):
    cls = get_method(name)
    arch, width, depth = student
    params = cls.Params(
        method=name,
        arch=arch,
        width=width,
        depth=depth,
        epochs=1,
        batch_size=16,
        lr=0.03,
        warmup_epochs=0.0,
        collapse_std=0.0,
        gamma=1.0,
    )
    params.validate()
    torch.manual_seed(0)
    inputs = cls.inputs(
        normalizer=Normalizer.fit(images),
        image_size=SIZE,
        labels=labels,
        num_classes=NUM_CLASSES,
        teacher=frozen_teacher(*teacher_arch, images),
    )
    return cls(params, build_backbone(arch, width, depth), inputs)


@pytest.mark.parametrize(
    "student, teacher", [(CONVNET, VIT), (VIT, CONVNET), (VIT, VIT)], ids=["vit-teacher", "vit-student", "vit-both"]
)
@pytest.mark.parametrize("name", DISTILLERS)
def test_every_distiller_trains_with_a_vit_teacher_or_student(name, student, teacher):
    images, labels = images_and_labels()
    method = distiller(name, student, teacher, images, labels)
    method.train()
    index = torch.arange(16)
    loss, stats = method.training_step(images[index], index, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss), (name, loss)
    grads = [p.grad for p in method.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads), f"{name}: no gradient reaches the student"
    if name != "kd":  # the method's own term (on the ViT's tokens or CLS) is computed and finite
        assert torch.isfinite(stats["method_loss"]), (name, stats)


@pytest.mark.parametrize("name", sorted(STAGE_BY_STAGE))
def test_stage_by_stage_distillers_refuse_a_vit_of_another_depth(name):
    images, labels = images_and_labels()
    with pytest.raises(
        ValueError,
        match=f"{name} pairs the networks' stages one to one, but the student has 3 stages and the teacher 2",
    ):
        distiller(name, CONVNET, ("vit_p2", 16, 2), images, labels)
