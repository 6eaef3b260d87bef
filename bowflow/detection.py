"""Detection fine-tuning: torchvision's Faster R-CNN around a run's network, trained whole on a
box source (bowflow/data/boxes.py `BoxSet`) and scored by COCO AP with pycocotools.

The protocol the teacher-student papers report as "VOC detection, AP50 / AP75 / AP" (MoCo's,
https://github.com/facebookresearch/moco/tree/main/detection, which OBoW reuses with its own
learning rate, https://github.com/valeoai/obow utils/configs/benchmark_tasks/object_detection):
detectron2's Faster R-CNN R50-C4 (RPN and RoI head on res4, res5 as the box head followed by
an extra BatchNorm), every layer trained with synchronised BatchNorm (FREEZE_AT 0), VOC07+12
trainval, 24k iterations of 16 images, SGD lr 0.02 (MoCo) / 0.01 (OBoW), momentum 0.9, weight
decay 1e-4 (none on norm layers), linear warm-up over 100 iterations, lr x 0.1 at 18k and
22k, random horizontal flip and shorter side drawn from 480..800 px (800 at test), precise BN
statistics before testing; VOC07 test scored at IoU .50, .75 and the mean over .50:.95,
"difficult" objects trained on and ignored by the evaluation.

How a `bowflow.backbone.Backbone` becomes the detector's backbone:
- `head='c4'` (the reference's): the stem and every stage but the last make the trunk, whose
  last map ([B, C, H / r, W / r], the "C4" map) feeds the RPN and a RoIAlign of `roi_size`
  cells; the network's last stage is the box head (run on each RoI's map, then the network's
  `head_norm`, MoCo's extra BatchNorm and a global average pool), so the run's weights train
  in every layer as in the reference. A ViT's last block runs on the RoI's cells as tokens.
- `head='fpn'`: for each distinct reduction the deepest stage's map feeds a
  `torchvision.ops.FeaturePyramidNetwork` (plus its max-pooled extra level), torchvision's
  two-layer MLP box head on 7 x 7 RoIs; any backbone, timm's included.
Anchors (aspect ratios 0.5, 1, 2) are the reference's in units of the feature stride (C4:
2, 4, 8, 16, 32 strides, detectron2's 32..512 px at stride 16; FPN: 8 strides per level), so
they fit a small image's CIFAR-style net, or `anchor_sizes` in pixels. The images are
already S x S: the transform resizes the shorter side to one of `train_sizes` (training,
drawn per batch) or to `test_size`, and normalises with the run's mean and std.
Deliberate differences: docs/fidelity/detection.md.
"""

from __future__ import annotations

import contextlib
import io
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from bowflow.backbone import Backbone
from bowflow.data.box_tables import BoxSet
from bowflow.models import Normalizer
from bowflow.timm_backbones import TimmBackbone
from bowflow.vit import VisionTransformer

HEADS = ("c4", "fpn")
ASPECT_RATIOS = (0.5, 1.0, 2.0)  # detectron2's and torchvision's default
C4_ANCHOR_STRIDES = (2, 4, 8, 16, 32)  # detectron2's C4 anchors 32..512 px at stride 16
FPN_ANCHOR_STRIDES = 8  # detectron2's / torchvision's FPN: 32 px at stride 4 ... 512 at 64
PRE_NMS = 6  # RPN: best-scored anchors before NMS per proposal kept after (detectron2's C4: 12000 / 2000)


@dataclass(frozen=True)
class DetectorSpec:
    """How the detector is built around a backbone (units beside each)."""

    num_classes: int  # object classes, background excluded
    head: str = "c4"  # 'c4' (the reference's R50-C4) or 'fpn'
    train_sizes: tuple[int, ...] = (32,)  # shorter side at training, px, one drawn per batch
    test_size: int = 32  # shorter side at test, px
    anchor_sizes: tuple[float, ...] = ()  # px at the detector's input; () = the reference's rule
    roi_size: int = 14  # RoIAlign cells per side for the C4 head (detectron2's 14)
    fpn_channels: int = 256  # FPN and RPN channels (detectron2's / torchvision's 256)
    mlp_dim: int = 1024  # the FPN box head's hidden units (torchvision's TwoMLPHead)
    rpn_batch: int = 256  # anchors sampled per image for the RPN loss (detectron2)
    proposals: int = 2000  # RPN proposals kept per image after NMS in training (detectron2's
    #                        C4: 2000; at test half, its 1000), from the 6x as many best-scored
    #                        anchors before NMS (its 12000 / 6000)
    roi_batch: int = 512  # RoIs sampled per image for the box head loss (detectron2)
    detections: int = 100  # kept per test image (detectron2's DETECTIONS_PER_IMAGE)


class C4Trunk(nn.Module):
    """The stem and every stage but the last: images [B, 3, H, W] -> {"0": the C4 map
    [B, C, H / r, W / r]} (r: the second-to-last stage's reduction)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        if len(backbone.stages) < 2:
            raise ValueError(
                f"head 'c4' needs a backbone of at least 2 stages (its last is the box head), "
                f"got {len(backbone.stages)}: use head 'fpn'"
            )
        self.backbone = backbone
        self.out_channels = backbone.channels[-2]
        self.reduction = backbone.reductions[-2]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return OrderedDict([("0", self.backbone.feature_maps(x, upto=len(self.backbone.stages) - 2)[-1])])


def last_stage(backbone: Backbone) -> nn.Module:
    """The backbone's last stage as a module on maps [R, C, h, w] -> [R, C', h', w'] (with the
    network's own `head_norm`): a conv stage as is, a ViT block on the map's cells as tokens
    followed by the final LayerNorm. ValueError for a timm model whose last stage is not a
    map-to-map module (its ViTs: use head 'fpn')."""
    if isinstance(backbone, VisionTransformer):
        return _TokenStage(backbone.stages[-1], backbone.norm)
    if isinstance(backbone, TimmBackbone):
        if backbone.reductions[-1] == backbone.reductions[-2] or hasattr(backbone.model, "blocks"):
            raise ValueError(
                f"head 'c4': the last stage of 'timm/{backbone.timm_name}' does not map feature maps "
                f"to feature maps (a token model): use head 'fpn'"
            )
        return backbone.model.get_submodule(backbone.stage_modules[-1])
    return nn.Sequential(backbone.stages[-1], backbone.head_norm)


class _TokenStage(nn.Module):
    """A transformer block on a map's cells: [R, D, h, w] -> tokens [R, h * w, D] -> block ->
    LayerNorm -> [R, D, h, w]."""

    def __init__(self, block: nn.Module, norm: nn.Module):
        super().__init__()
        self.block, self.norm = block, norm

    def forward(self, x: Tensor) -> Tensor:
        r, d, h, w = x.shape
        t = self.norm(self.block(x.flatten(2).transpose(1, 2)))
        return t.transpose(1, 2).reshape(r, d, h, w)


class C4BoxHead(nn.Module):
    """RoI maps [R, C4, s, s] -> the last stage -> MoCo's extra BatchNorm -> average pool
    [R, C_last] (detectron2's Res5ROIHeads with MoCo's `Res5ROIHeadsExtraNorm`)."""

    def __init__(self, stage: nn.Module, channels: int):
        super().__init__()
        self.stage = stage
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.stage(x)).mean(dim=(2, 3))


class FPNBody(nn.Module):
    """images [B, 3, H, W] -> {"0".."L-1": FPN maps [B, fpn_channels, H / r_l, W / r_l], "pool":
    the last one max-pooled}: the deepest stage of each distinct reduction feeds the pyramid."""

    def __init__(self, backbone: Backbone, channels: int):
        super().__init__()
        self.backbone = backbone
        deepest = {r: i for i, r in enumerate(backbone.reductions)}  # reduction -> its deepest stage
        self.stages = sorted(deepest.values())
        self.reductions = [backbone.reductions[i] for i in self.stages] + [2 * backbone.reductions[self.stages[-1]]]
        self.fpn = FeaturePyramidNetwork(
            [backbone.channels[i] for i in self.stages], channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        maps = self.backbone.feature_maps(x)
        return self.fpn(OrderedDict((str(level), maps[i]) for level, i in enumerate(self.stages)))


def anchor_sizes(spec: DetectorSpec, reductions: list[int]) -> tuple[tuple[float, ...], ...]:
    """Anchor sizes per feature level (px at the detector's input): `spec.anchor_sizes` when
    given (C4: every size on its one level; FPN: one per level when as many as the levels,
    else all on every level), else the reference's rule in units of each level's stride;
    sizes beyond twice the test size are dropped (no object is that large), one kept."""
    if spec.anchor_sizes:
        given = tuple(float(s) for s in spec.anchor_sizes)
        if spec.head == "fpn" and len(given) == len(reductions):
            return tuple((s,) for s in given)
        return tuple(given for _ in reductions)
    limit = 2 * spec.test_size
    if spec.head == "c4":
        sizes = [float(r * k) for k in C4_ANCHOR_STRIDES for r in reductions]
        return (tuple(s for s in sizes if s <= limit) or (sizes[0],),)
    return tuple((float(FPN_ANCHOR_STRIDES * r),) for r in reductions)


def build_detector(backbone: Backbone, normalizer: Normalizer, spec: DetectorSpec) -> FasterRCNN:
    """torchvision's FasterRCNN around `backbone` (its weights shared, not copied): images are
    lists of float [3, H, W] in [0, 1]; in training mode it takes targets (boxes [M, 4] x1, y1,
    x2, y2 in px, labels [M] in 1..num_classes) and returns the four losses, in eval mode
    {boxes [K, 4], labels [K], scores [K]} per image. New layers are drawn from torch's RNG."""
    if spec.head not in HEADS:
        raise ValueError(f"head must be one of {list(HEADS)}, got {spec.head!r}")
    body: nn.Module
    if spec.head == "c4":
        body = C4Trunk(backbone)
        reductions = [body.reduction]
        roi_pool = MultiScaleRoIAlign(["0"], output_size=spec.roi_size, sampling_ratio=0)
        box_head: nn.Module = C4BoxHead(last_stage(backbone), backbone.channels[-1])
        representation = backbone.channels[-1]
    else:
        body = FPNBody(backbone, spec.fpn_channels)
        reductions = body.reductions
        roi_pool = MultiScaleRoIAlign([str(i) for i in range(len(body.stages))], output_size=7, sampling_ratio=2)
        box_head = TwoMLPHead(spec.fpn_channels * 7 * 7, spec.mlp_dim)
        representation = spec.mlp_dim
    sizes = anchor_sizes(spec, reductions)
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=(ASPECT_RATIOS,) * len(sizes))
    largest = max(*spec.train_sizes, spec.test_size)
    model = FasterRCNN(
        body,
        num_classes=None,
        min_size=tuple(spec.train_sizes),
        max_size=largest,  # square images: the shorter side decides, never the cap
        image_mean=list(normalizer.mean),
        image_std=list(normalizer.std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=PRE_NMS * spec.proposals,  # detectron2's C4 ratios: 12000 -> 2000,
        rpn_pre_nms_top_n_test=PRE_NMS * max(1, spec.proposals // 2),  # 6000 -> 1000 at test
        rpn_post_nms_top_n_train=spec.proposals,
        rpn_post_nms_top_n_test=max(1, spec.proposals // 2),
        rpn_batch_size_per_image=spec.rpn_batch,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation, spec.num_classes + 1),
        box_batch_size_per_image=spec.roi_batch,
        box_detections_per_img=spec.detections,
    )
    # batches are padded to a multiple of the coarsest stride the body computes (a ViT's
    # patch; detectron2: none for C4, the backbone's 32 for FPN), not torchvision's fixed 32
    model.transform.size_divisible = max(reductions[:1] if spec.head == "c4" else backbone.reductions)
    model.bowflow_sizes = (tuple(spec.train_sizes), spec.test_size)
    return model


def set_mode(model: FasterRCNN, training: bool) -> FasterRCNN:
    """Train or eval mode, with the transform's shorter side for it (train: drawn from
    train_sizes per batch; eval: test_size)."""
    train_sizes, test_size = model.bowflow_sizes
    model.transform.min_size = train_sizes if training else (test_size,)
    return model.train(training)


@dataclass(frozen=True)
class DetectionRecipe:
    """The fine-tuning schedule (units beside each; defaults: the reference's)."""

    steps: int = 24000  # SGD iterations (MoCo / OBoW: 24k)
    batch_size: int = 16  # images per iteration (IMS_PER_BATCH 16)
    lr: float = 0.01  # base learning rate at `batch_size` (OBoW 0.01, MoCo 0.02, at 16 images)
    momentum: float = 0.9
    weight_decay: float = 1e-4  # not on norm layers or biases of norms (detectron2 WEIGHT_DECAY_NORM 0)
    warmup_steps: int = 100  # linear warm-up from lr x 0.001 (detectron2's WARMUP_FACTOR)
    milestones: tuple[float, ...] = (0.75, 11 / 12)  # lr x 0.1 at these fractions (18k, 22k of 24k)
    flip: bool = True  # horizontal flip with probability 0.5 (detectron2's training augmentation)
    precise_bn_steps: int = 200  # batches recomputing BN statistics before the test (PRECISE_BN, 200)


def lr_at(recipe: DetectionRecipe, step: int) -> float:
    """detectron2's WarmupMultiStepLR: lr x warm-up factor (0.001 -> 1 linearly over
    warmup_steps) x 0.1 per milestone passed."""
    warm = 1.0 if step >= recipe.warmup_steps else 0.001 * (1 - step / recipe.warmup_steps) + step / recipe.warmup_steps
    drops = sum(step >= round(m * recipe.steps) for m in recipe.milestones)
    return recipe.lr * warm * 0.1**drops


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """detectron2's groups: no weight decay on normalisation layers' parameters."""
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    norms: list[nn.Parameter] = []
    others: list[nn.Parameter] = []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (norms if isinstance(module, norm_types) else others).append(p)
    return [{"params": others, "weight_decay": weight_decay}, {"params": norms, "weight_decay": 0.0}]


def to_inputs(s: BoxSet, rows: np.ndarray | list[int], flips: Tensor | None, device: torch.device):
    """Rows of a BoxSet -> (images: list of float [3, S, S] in [0, 1], targets: boxes [M, 4]
    float32 px, labels [M] int64 in 1..C), each image flipped where `flips` [len(rows)] is
    True (x1, x2 -> S - x2, S - x1)."""
    images, targets = [], []
    for j, i in enumerate(rows):
        image = torch.from_numpy(s.images[i]).permute(2, 0, 1).float().div_(255)  # [3, S, S]
        boxes = torch.from_numpy(s.boxes[i]).float().reshape(-1, 4)
        if flips is not None and bool(flips[j]):
            image = image.flip(-1)
            boxes = torch.stack(
                [image.shape[-1] - boxes[:, 2], boxes[:, 1], image.shape[-1] - boxes[:, 0], boxes[:, 3]], 1
            )
        images.append(image.to(device))
        targets.append({"boxes": boxes.to(device), "labels": torch.from_numpy(s.labels[i]).long().add(1).to(device)})
    return images, targets


def train_detector(model: FasterRCNN, train: BoxSet, recipe: DetectionRecipe, seed: int, device: torch.device) -> dict:
    """Fine-tune every layer of `model` on `train` (images without objects left out, as
    detectron2's FILTER_EMPTY_ANNOTATIONS): seeded epoch permutations, flips and scales, SGD
    with the recipe's schedule, difficult objects trained on (detectron2's VOC loader), then
    `precise_bn_steps` batches of BN statistics; -> {"steps", "images", "final_loss", losses}."""
    rows = np.array([i for i, b in enumerate(train.boxes) if len(b)], dtype=np.int64)
    if not len(rows):
        raise ValueError("the training split has no image with an object")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the transform's scale draws (torch's global RNG)
    model.to(device)
    set_mode(model, True)
    optimizer = torch.optim.SGD(_param_groups(model, recipe.weight_decay), lr=recipe.lr, momentum=recipe.momentum)
    batch = min(recipe.batch_size, len(rows))

    def batches():
        while True:
            order = rows[torch.randperm(len(rows), generator=generator).numpy()]
            for start in range(0, len(order) - batch + 1, batch):
                yield order[start : start + batch]

    stream = batches()
    losses: dict[str, float] = {}
    total = torch.zeros(())
    for step in range(recipe.steps):
        chosen = next(stream)
        flips = torch.rand(len(chosen), generator=generator) < 0.5 if recipe.flip else None
        images, targets = to_inputs(train, chosen, flips, device)
        parts = model(images, targets)
        total = sum(parts.values(), torch.zeros((), device=device))
        if not torch.isfinite(total):
            raise FloatingPointError(f"detection loss is {total.item()} at step {step}: lower the lr")
        for group in optimizer.param_groups:
            group["lr"] = lr_at(recipe, step)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        losses = {k: round(float(v.detach()), 5) for k, v in parts.items()}
    precise_bn(model, train, rows, recipe, generator, device)
    set_mode(model, False)
    return {"steps": recipe.steps, "images": int(len(rows)), "final_loss": round(float(total.detach()), 5), **losses}


@torch.no_grad()
def precise_bn(
    model: FasterRCNN,
    train: BoxSet,
    rows: np.ndarray,
    recipe: DetectionRecipe,
    generator: torch.Generator,
    device: torch.device,
) -> None:
    """detectron2's PreciseBN: every BatchNorm's running mean and variance recomputed as the
    plain average over `precise_bn_steps` training batches (train mode, no update of weights)
    instead of the momentum average of the last iterations."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or recipe.precise_bn_steps <= 0:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    set_mode(model, True)
    batch = min(recipe.batch_size, len(rows))
    for _ in range(recipe.precise_bn_steps):
        chosen = rows[torch.randperm(len(rows), generator=generator)[:batch].numpy()]
        images, targets = to_inputs(train, chosen, None, device)
        model(images, targets)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


@torch.no_grad()
def predict(model: FasterRCNN, s: BoxSet, device: torch.device, batch_size: int = 16) -> list[dict]:
    """Detections per image of `s` in its pixels: {boxes float [K, 4], labels int64 [K] in
    0..C-1, scores [K]} (numpy)."""
    set_mode(model, False).to(device)
    out = []
    for start in range(0, len(s), batch_size):
        images, _ = to_inputs(s, list(range(start, min(start + batch_size, len(s)))), None, device)
        for result in model(images):
            out.append(
                {
                    "boxes": result["boxes"].cpu().numpy(),
                    "labels": result["labels"].cpu().numpy() - 1,
                    "scores": result["scores"].cpu().numpy(),
                }
            )
    return out


def coco_ap(truth: BoxSet, detections: list[dict]) -> dict[str, float]:
    """COCO box AP of `detections` (per image of `truth`: boxes [K, 4] x1, y1, x2, y2 px,
    labels [K] in 0..C-1, scores [K]) with pycocotools: {"ap50", "ap75", "ap"} in %, AP the
    mean over IoU .50:.05:.95, each the mean over the classes that have a ground-truth object
    (101-point interpolated precision, at most 100 detections per image, every area).

    VOC's "difficult" objects are ignored as VOC's evaluation (and detectron2's, which MoCo
    and OBoW ran) ignores them: not counted among the positives, and a detection matched to
    one is neither a true nor a false positive (pycocotools' own `ignore` flag on the ground
    truth, set from `difficult`)."""
    if len(detections) != len(truth):
        raise ValueError(f"{len(detections)} detection lists for {len(truth)} images")
    size = truth.images.shape[1:3] if len(truth) else (0, 0)
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(truth.class_names)]
    images = [{"id": i + 1, "height": int(size[0]), "width": int(size[1])} for i in range(len(truth))]
    annotations: list[dict] = []
    results: list[dict] = []
    for i, (boxes, labels, difficult) in enumerate(zip(truth.boxes, truth.labels, truth.difficult)):
        for box, label, hard in zip(boxes.tolist(), labels.tolist(), difficult.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "difficult": bool(hard),
                }
            )
    for i, found in enumerate(detections):
        for box, label, score in zip(
            np.asarray(found["boxes"]).tolist(),
            np.asarray(found["labels"]).tolist(),
            np.asarray(found["scores"]).tolist(),
        ):
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "score": float(score),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:  # no detection at all: an empty result set (loadRes refuses an empty list)
            dt = COCO()
            dt.dataset = {"images": images, "annotations": [], "categories": categories}
            dt.createIndex()
        evaluator = _IgnoreDifficult(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50, ap75 = (float(v) for v in evaluator.stats[:3])
    return {key: round(max(value, 0.0) * 100, 2) for key, value in (("ap50", ap50), ("ap75", ap75), ("ap", ap))}


class _IgnoreDifficult(COCOeval):
    """pycocotools' COCOeval with the ground truth's `difficult` objects marked `ignore`
    after its own preparation (which otherwise sets `ignore` from `iscrowd` alone)."""

    def _prepare(self):
        super()._prepare()
        for objects in self._gts.values():
            for g in objects:
                g["ignore"] = int(bool(g["ignore"]) or bool(g.get("difficult", False)))


def fine_tune_detector(
    backbone: Backbone,
    normalizer: Normalizer,
    train: BoxSet,
    test: BoxSet,
    spec: DetectorSpec,
    recipe: DetectionRecipe,
    seed: int,
    device: torch.device,
) -> dict:
    """Build the detector around `backbone` (trained in place), fine-tune it on `train`, score
    `test`: {"ap50", "ap75", "ap" (%), "train_images", "test_images", "steps", losses}."""
    torch.manual_seed(seed)
    model = build_detector(backbone, normalizer, spec)
    trained = train_detector(model, train, recipe, seed, device)
    scores = coco_ap(test, predict(model, test, device))
    return {**scores, "train_images": trained.pop("images"), "test_images": len(test), **trained}
