"""Splitting rows and classes: per-class train/test rows for sources without a fixed
split (`stratified_split`, labels int [N] -> row indices), the base/novel classes of the
few-shot protocol (`base_novel_split`), and the rows of some classes (`subset_classes`,
numpy arrays or torch tensors).
"""

from __future__ import annotations

import unicodedata
from typing import Any

import numpy as np

from bowflow.data.specs import DataError


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices per class: round(n_c * test_fraction) test rows for a class of n_c.

    Each class with at least 2 rows gets at least 1 test row and keeps at least 1
    training row. Deterministic for a given seed. labels: int [N].
    Returns (train_idx, test_idx), both sorted int64 arrays that partition range(N).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test_parts = [np.zeros(0, dtype=np.int64)]
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n = len(rows)
        n_test = int(np.floor(n * test_fraction + 0.5))
        n_test = min(max(n_test, 1 if n >= 2 else 0), n - 1)
        test_parts.append(rng.permutation(rows)[:n_test])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test_parts)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def base_novel_split(class_names: list[str], novel_classes: list[str]) -> tuple[list[str], list[str]]:
    """Split class_names into (base, novel), both in class_names order.

    novel_classes are class names (strings). At least 2 novel classes and 1 base class.
    """
    wrong_type = [c for c in novel_classes if not isinstance(c, str)]
    if wrong_type:
        raise DataError(
            f"novel classes must be given by name (strings), got {wrong_type}; e.g. {[str(c) for c in wrong_type]}"
        )
    novel_classes = [unicodedata.normalize("NFC", c) for c in novel_classes]
    unknown = [c for c in novel_classes if c not in class_names]
    if unknown:
        raise DataError(f"unknown novel class(es) {unknown}; available classes: {list(class_names)}")
    duplicates = sorted({c for c in novel_classes if list(novel_classes).count(c) > 1})
    if duplicates:
        raise DataError(f"novel classes listed more than once: {duplicates}")
    novel = [c for c in class_names if c in novel_classes]
    base = [c for c in class_names if c not in novel_classes]
    if len(novel) < 2:
        raise DataError(f"need at least 2 novel classes, got {novel}")
    if not base:
        raise DataError(f"novel classes {novel} leave no base class; at least 1 is needed")
    return base, novel


def subset_classes(images, labels, class_names: list[str], keep: list[str]):
    """Rows of (images [N, ...], labels [N]) whose class is in `keep`.

    Works on numpy arrays or torch tensors. Labels are unchanged: they still index the
    full class_names list. Returns (images [M, ...], labels [M]).
    """
    unknown = [c for c in keep if c not in class_names]
    if unknown:
        raise ValueError(f"unknown class(es) {unknown}; available classes: {list(class_names)}")
    keep_idx = [class_names.index(c) for c in keep]
    if isinstance(labels, np.ndarray):
        mask: Any = np.isin(labels, keep_idx)  # a numpy or a torch mask
    else:
        import torch

        mask = torch.isin(labels, torch.tensor(keep_idx, dtype=labels.dtype, device=labels.device))
    return images[mask], labels[mask]
