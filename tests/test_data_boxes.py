"""Box sources (bowflow/data/boxes.py): the generated shapes, VOC folders, the Parquet tables."""

from __future__ import annotations

import numpy as np
import pytest

from bowflow.data.boxes import (
    BoxSet,
    generate_shapes,
    load_box_source,
    load_voc,
    multi_label_targets,
    read_boxes,
    write_boxes,
    write_voc,
)
from bowflow.data.specs import DataError


def test_shapes_are_seeded_and_their_boxes_hold_disjoint_glyphs():
    a, b, c = generate_shapes(40, 32, seed=3), generate_shapes(40, 32, seed=3), generate_shapes(40, 32, seed=4)
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    assert a.images.shape == (40, 32, 32, 3) and a.images.dtype == np.uint8
    assert a.class_names == ["T", "L", "F", "P"]
    for boxes, labels in zip(a.boxes, a.labels):
        assert 1 <= len(boxes) <= 3 and len(labels) == len(boxes)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 32).all()
        sides = boxes[:, 2:] - boxes[:, :2]
        assert np.isin(sides, [10, 15]).all() and (sides[:, 0] == sides[:, 1]).all()
        for i in range(len(boxes)):
            for j in range(i):
                p, q = boxes[i], boxes[j]
                assert p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1]
    # a glyph is brighter than the image's background: the mean inside boxes beats the outside
    inside = np.zeros((40, 32, 32), dtype=bool)
    for i, boxes in enumerate(a.boxes):
        for x1, y1, x2, y2 in boxes.astype(int):
            inside[i, y1:y2, x1:x2] = True
    grey = a.images[..., 0].astype(float)
    assert grey[inside].mean() > grey[~inside].mean() + 20


def test_box_tables_round_trip_exactly(tmp_path):
    s = generate_shapes(12, 24, seed=0)
    write_boxes(tmp_path / "t.parquet", s)
    back = read_boxes(tmp_path / "t.parquet")
    assert np.array_equal(back.images, s.images) and back.class_names == s.class_names and back.paths == s.paths
    for name in ("boxes", "labels", "difficult"):
        for x, y in zip(getattr(back, name), getattr(s, name)):
            assert x.dtype == y.dtype and np.array_equal(x, y)


def test_a_voc_folder_reads_back_what_was_written_and_splits_concatenate(tmp_path):
    s = generate_shapes(10, 32, seed=1)
    write_voc(s, tmp_path / "VOC2007", "trainval")
    write_voc(s, tmp_path / "VOC2007", "test")
    write_voc(s, tmp_path / "VOC2012", "trainval")
    back = load_voc(tmp_path / "VOC2007", "trainval", 32)
    assert sorted(back.class_names) == sorted({s.class_names[int(k)] for ls in s.labels for k in ls})
    for x, y, lx, ly in zip(back.boxes, s.boxes, back.labels, s.labels):
        assert np.allclose(x, y)
        assert [back.class_names[k] for k in lx] == [s.class_names[k] for k in ly]
    assert np.abs(back.images.astype(int) - s.images.astype(int)).mean() < 12  # JPEG, noisy images
    # boxes scale with the image: 32 px written, 64 px read
    assert np.allclose(load_voc(tmp_path / "VOC2007", "trainval", 64).boxes[0], s.boxes[0] * 2)
    train, test = load_box_source("voc", f"{tmp_path / 'VOC2007'}+{tmp_path / 'VOC2012'}", 32, seed=0)
    assert len(train) == 20 and len(test) == 10 and test.class_names == train.class_names


def test_multi_label_targets_follow_the_voc07_convention():
    boxes = [np.zeros((3, 4), np.float32), np.zeros((1, 4), np.float32)]
    s = BoxSet(
        np.zeros((2, 4, 4, 3), np.uint8),
        boxes,
        [np.array([0, 2, 2]), np.array([1])],
        [np.array([False, True, False]), np.array([True])],
        ["a", "b", "c"],
        ["x", "y"],
    )
    # image 0: a (easy), c (one difficult, one easy -> 1); image 1: b difficult only -> 0
    assert multi_label_targets(s).tolist() == [[1, -1, 1], [-1, 0, -1]]


def test_bad_voc_folders_are_named(tmp_path):
    with pytest.raises(DataError, match="ImageSets/Main/trainval.txt: not found"):
        write_voc(generate_shapes(2, 16, 0), tmp_path / "v", "test")
        load_voc(tmp_path / "v", "trainval", 16)
    (tmp_path / "v" / "Annotations" / "test_000000.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match="test_000000.xml: not a readable VOC annotation"):
        load_voc(tmp_path / "v", "test", 16)
    write_voc(generate_shapes(2, 16, 0), tmp_path / "v", "test")
    with pytest.raises(DataError, match=r"test_00000\d.xml: classes \[.*\] are not among \['Q'\]"):
        load_voc(tmp_path / "v", "test", 16, class_names=["Q"])
    with pytest.raises(DataError, match="box source 'coco'"):
        load_box_source("coco", "", 16, 0)
