"""Linear transfer to another labelled source: a run's frozen backbone, its pooled features of
a second dataset's images, and a linear classifier trained and scored on that dataset.

    single-label source: the evaluate stage's linear probe (`bowflow.evaluation.linear_probe`:
        standardised features, multinomial logistic regression) trained on the source's train
        split, top-1 (%) on its test split;
    multi-label source (VOC-style): the VOC07 classification protocol of Goyal et al. 2019
        ("Scaling and Benchmarking Self-Supervised Visual Representation Learning",
        https://arxiv.org/abs/1905.01235; code github.com/facebookresearch/
        fair_self_supervision_benchmark, tools/svm/), which OBoW runs for its VOC07 column
        (github.com/valeoai/obow, README "Pascal VOC07 Classification evaluation"):
          1. features [N, D] as float64, each row divided by its L2 norm + 1e-5
             (svm_helper.normalize_features);
          2. per class, one LinearSVC (sklearn: L2 penalty, squared hinge, dual, tol 1e-4,
             max_iter 2000, intercept_scaling 1, class_weight {1: 2, -1: 1}) per cost C in
             the given list plus 0.5^4 .. 0.5^19 (svm_helper.parse_cost_list appends them);
          3. training targets: +1 where the image has a non-difficult object of the class,
             -1 everywhere else, images whose objects of the class are all difficult included
             as negatives (train_svm_kfold.py keeps them);
          4. each class's cost: the one with the highest mean average precision over a 3-fold
             cross-validation on the training split (sklearn's cross_val_score, cv=3: stratified
             folds in file order, scoring 'average_precision'); the first such cost on a tie
             (np.argmax over the list's order);
          5. the class's SVM of that cost, trained on the whole training split, scores the test
             images (decision_function); images whose objects of the class are all difficult
             are left out of that class's AP (test_svm.py);
          6. AP: the area under the interpolated precision-recall curve, every point, not the
             VOC07 devkit's 11-point average (svm_helper.calculate_ap; `average_precision`
             here); mAP: the mean over classes, in %.
Deliberate differences (docs/fidelity/transfer.md): the SVMs' coordinate-descent order is
seeded (`random_state` = the stage's seed; the benchmark leaves it to numpy's global state),
scores tied in the ranking keep the image order (the benchmark's argsort is not stable), and
the features are the backbone's pooled feature (OBoW's README scores `pool5_bn`, a BatchNorm
over pool5 that is not part of the network).

Targets follow `bowflow.data.boxes.multi_label_targets`: int8 [N, C], 1 = present,
0 = only difficult objects, -1 = absent (the VOC devkit's own convention; the benchmark's
files swap 0 and -1, its code does the same thing with them).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bowflow.backbone import Backbone
from bowflow.data.box_tables import multi_label_targets, read_boxes
from bowflow.data.prepared import load_prepared
from bowflow.evaluation import full_precision, linear_probe
from bowflow.io import read_json
from bowflow.models import Normalizer, pooled_features
from bowflow.sections import MULTI_LABEL, TransferParams

# Costs that the benchmark's parse_cost_list appends to every list it is given: 0.5^4 .. 0.5^19.
APPENDED_COSTS = tuple(0.5**k for k in range(4, 20))


@dataclass(frozen=True)
class SvmRecipe:
    """The VOC07 per-class linear SVM protocol's settings (Goyal et al. 2019's values)."""

    costs: tuple[float, ...] = (0.05, 0.1, 0.3, 0.5, 1.0, 3.0, 5.0)  # OBoW's list (APPENDED_COSTS added)
    folds: int = 3  # cross-validation folds choosing a class's cost
    positive_weight: float = 2.0  # class_weight {1: positive_weight, -1: 1}
    max_iter: int = 2000  # LinearSVC iterations
    tol: float = 1e-4  # LinearSVC stopping tolerance

    def all_costs(self) -> list[float]:
        """The costs tried, in the order a tie is broken: the given list, then APPENDED_COSTS."""
        return [float(c) for c in self.costs] + list(APPENDED_COSTS)


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """[N, D] -> float64 [N, D], each row divided by (its L2 norm + 1e-5) (the benchmark's
    normalize_features: the 1e-5 keeps an all-zero row at zero)."""
    x = np.asarray(features, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=1) + 1e-5)[:, None]


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision (fraction in [0, 1]) of ranking `scores` [N] for the boolean
    `positive` [N]: the area under the precision-recall curve with precision made monotone,
    p_interp(r) = max of the precision at every recall >= r, summed over every rank where
    recall rises: AP = sum_k (r_k - r_{k-1}) p_interp(r_k) (svm_helper.calculate_ap; the VOC
    devkit from 2010 on). Images are ranked by decreasing score, ties in their given order.
    ValueError without a positive."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    if scores.shape != positive.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and positive {positive.shape} must be two [N] vectors")
    total = int(positive.sum())
    if total == 0:
        raise ValueError("average precision needs at least one positive")
    hits = positive[np.argsort(-scores, kind="stable")].astype(np.float64)  # [N] in rank order
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / total
    interpolated = np.maximum.accumulate(precision[::-1])[::-1]  # max precision at this rank or later
    rises = np.diff(recall, prepend=0.0)  # > 0 exactly at the positives
    return float(np.sum(rises * interpolated))


@dataclass
class ClassResult:
    """One class's SVM: its chosen cost, cross-validation AP of each cost (fractions), test AP."""

    name: str
    cost: float
    test_ap: float
    cv_ap: list[float] = field(default_factory=list)
    not_converged: int = 0


def voc07_svm_map(
    train_x: np.ndarray,
    train_targets: np.ndarray,
    test_x: np.ndarray,
    test_targets: np.ndarray,
    class_names: list[str],
    recipe: SvmRecipe | None = None,
    seed: int = 0,
) -> dict:
    """The VOC07 per-class linear SVM protocol (module docstring, steps 1-6).

    train_x [N, D], test_x [M, D] features; train_targets [N, C], test_targets [M, C] int8
    (1 present, 0 difficult only, -1 absent). -> {"map": mAP %, "per_class": {name: AP %},
    "costs": {name: chosen C}, "not_converged": SVM fits that hit max_iter}."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import LinearSVC

    if train_targets.shape != (len(train_x), len(class_names)) or test_targets.shape != (len(test_x), len(class_names)):
        raise ValueError(
            f"targets {train_targets.shape} / {test_targets.shape} must be [N, C] for features "
            f"{train_x.shape} / {test_x.shape} and {len(class_names)} classes"
        )
    recipe = recipe or SvmRecipe()
    train, test = l2_normalise(train_x), l2_normalise(test_x)
    costs = recipe.all_costs()
    results = []
    for c, name in enumerate(class_names):
        y = np.where(train_targets[:, c] == 1, 1, -1)  # difficult-only images are negatives here
        if not (y == 1).any():
            raise ValueError(f"class {name!r} has no positive training image")

        def svm(cost: float) -> LinearSVC:
            return LinearSVC(
                C=cost,
                class_weight={1: recipe.positive_weight, -1: 1},
                intercept_scaling=1.0,
                penalty="l2",
                loss="squared_hinge",
                tol=recipe.tol,
                dual=True,
                max_iter=recipe.max_iter,
                random_state=seed,
            )

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            cv_ap = [
                float(cross_val_score(svm(cost), train, y, cv=recipe.folds, scoring="average_precision").mean())
                for cost in costs
            ]
            best = int(np.argmax(cv_ap))  # the first of equal means, as np.argmax in test_svm.py
            model = svm(costs[best]).fit(train, y)
        kept = test_targets[:, c] != 0  # difficult-only images are left out of this class's AP
        if not (test_targets[kept, c] == 1).any():
            raise ValueError(f"class {name!r} has no positive test image")
        ap = average_precision(model.decision_function(test[kept]), test_targets[kept, c] == 1)
        not_converged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        results.append(ClassResult(name, costs[best], ap, cv_ap, not_converged))
    return {
        "map": round(100 * float(np.mean([r.test_ap for r in results])), 3),
        "per_class": {r.name: round(100 * r.test_ap, 3) for r in results},
        "costs": {r.name: r.cost for r in results},
        "not_converged": sum(r.not_converged for r in results),
    }


def single_label_top1(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int, epochs: int, seed: int
) -> dict:
    """The evaluate stage's linear probe on another source's features: [N, D] / [M, D] float,
    labels int64 [N] / [M]. -> {"top1": test %, "train_top1": train %}."""
    with full_precision():
        result = linear_probe(train_x, train_y, test_x, test_y, num_classes=num_classes, epochs=epochs, seed=seed)
    return {"top1": round(result["accuracy"], 3), "train_top1": round(result["train_accuracy"], 3)}


def hwc_to_chw(images: np.ndarray) -> Tensor:
    """uint8 [N, H, W, 3] (a BoxSet's layout) -> uint8 [N, 3, H, W] (what the backbone reads)."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def transfer_to(
    source_dir: str | Path,
    backbone: Backbone,
    normalizer: Normalizer,
    params: TransferParams,
    seed: int,
    device: torch.device,
) -> dict:
    """Score a frozen backbone on one prepared transfer source (data/transfer/NAME/,
    `bowflow.data.transfer`). -> {"metric": "top1" | "map", "value": %, "task", "train_images",
    "test_images", "classes", "feature_dim", "seconds", and the protocol's details}."""
    started = time.perf_counter()
    manifest = read_json(Path(source_dir) / "manifest.json")
    task = manifest["source"]["task"]
    if task == MULTI_LABEL:
        train_set, test_set = (read_boxes(Path(source_dir) / manifest["files"][s]) for s in ("train", "test"))
        images = {"train": hwc_to_chw(train_set.images), "test": hwc_to_chw(test_set.images)}
    else:
        train, test = load_prepared(source_dir, "train"), load_prepared(source_dir, "test")
        images = {"train": train["images"], "test": test["images"]}
    with full_precision():
        features = {
            split: pooled_features(backbone, normalizer, x, params.layer, params.batch_size, device)
            for split, x in images.items()
        }  # [N, D] float32 each
    if task == MULTI_LABEL:
        recipe = SvmRecipe(
            costs=tuple(params.svm_costs),
            folds=params.svm_folds,
            positive_weight=params.svm_positive_weight,
            max_iter=params.svm_max_iter,
        )
        scored = voc07_svm_map(
            features["train"].numpy(),
            multi_label_targets(train_set),
            features["test"].numpy(),
            multi_label_targets(test_set),
            manifest["class_names"],
            recipe,
            seed,
        )
        metric, value = "map", scored.pop("map")
    else:
        scored = single_label_top1(
            features["train"],
            train["labels"],
            features["test"],
            test["labels"],
            len(manifest["class_names"]),
            params.linear_epochs,
            seed,
        )
        metric, value = "top1", scored.pop("top1")
    return {
        "metric": metric,
        "value": value,
        "task": task,
        "source": manifest["source"]["source"],
        "train_images": len(images["train"]),
        "test_images": len(images["test"]),
        "classes": len(manifest["class_names"]),
        "feature_dim": int(features["train"].shape[1]),
        **scored,
        "seconds": round(time.perf_counter() - started, 2),
    }
