"""Tests for bowflow.data.splits: train/test rows, base/novel classes, class subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bowflow.data.splits import base_novel_split, stratified_split, subset_classes


def test_stratified_split_keeps_a_training_row():
    labels = np.array([0] * 10 + [1] * 2 + [2])
    train, test = stratified_split(labels, 0.3, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(13))
    assert np.bincount(labels[test], minlength=3).tolist() == [3, 1, 0]


def test_base_novel_split_rules():
    names = ["a", "b", "c", "d"]
    assert base_novel_split(names, ["d", "b"]) == (["a", "c"], ["b", "d"])
    with pytest.raises(ValueError, match=r"\['q'\].*available classes: \['a', 'b', 'c', 'd'\]"):
        base_novel_split(names, ["a", "q"])
    with pytest.raises(ValueError, match="at least 2 novel"):
        base_novel_split(names, ["a"])
    with pytest.raises(ValueError, match="no base class"):
        base_novel_split(names, names)
    with pytest.raises(ValueError, match="strings"):
        base_novel_split(["0", "1", "2"], [1, 2])


def test_subset_classes_numpy_and_torch():
    names = ["a", "b", "c"]
    labels = np.array([0, 1, 2, 1, 0])
    images = np.arange(5)[:, None]
    sub_images, sub_labels = subset_classes(images, labels, names, ["b", "c"])
    assert sub_labels.tolist() == [1, 2, 1] and sub_images[:, 0].tolist() == [1, 2, 3]
    t_images, t_labels = subset_classes(torch.from_numpy(images), torch.from_numpy(labels), names, ["a"])
    assert t_labels.tolist() == [0, 0] and t_images[:, 0].tolist() == [0, 4]
    with pytest.raises(ValueError, match="unknown"):
        subset_classes(images, labels, names, ["z"])
