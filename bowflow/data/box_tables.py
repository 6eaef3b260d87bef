"""Reading box tables back: `BoxSet`, `read_boxes` (a table written by
`bowflow.data.boxes.write_boxes`) and `multi_label_targets` (VOC07's classification targets).

The reading side of `bowflow.data.boxes`, as `bowflow.data.prepared` is of the prepare stage's
tables: a stage that scores prepared box tables (stages/transfer.py) imports this module, not
the VOC reader, the generator or the decoders, so an edit to those reruns only the stages that
prepare the tables (tests/test_code_deps.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bowflow.data.specs import DataError

BOX_FORMAT = "bowflow-boxes-1"


@dataclass(frozen=True)
class BoxSet:
    """Images with object boxes, every image S x S."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    boxes: list[np.ndarray]  # per image float32 [M_i, 4]: x1, y1, x2, y2 in pixels
    labels: list[np.ndarray]  # per image int64 [M_i]: index into class_names
    difficult: list[np.ndarray]  # per image bool [M_i]: VOC's "difficult" flag
    class_names: list[str]
    paths: list[str]  # where each image came from (a file, or "shapes/<index>")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_objects(self) -> int:
        return sum(len(b) for b in self.boxes)


def multi_label_targets(s: BoxSet) -> np.ndarray:
    """VOC07 classification targets, int8 [N, C]: 1 where the image has a non-difficult object
    of the class, 0 where its objects of the class are all difficult, -1 where it has none
    (the devkit's ground truth: 0 = "difficult", left out of training and of AP)."""
    targets = np.full((len(s), len(s.class_names)), -1, dtype=np.int8)
    for i, (labels, difficult) in enumerate(zip(s.labels, s.difficult)):
        for label, hard in zip(labels.tolist(), difficult.tolist()):
            if not hard:
                targets[i, label] = 1
            elif targets[i, label] < 0:
                targets[i, label] = 0
    return targets


def read_boxes(path: str | Path) -> BoxSet:
    """A table written by write_boxes -> BoxSet."""
    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("format") != BOX_FORMAT:
        raise DataError(f"{path}: not a box table ({BOX_FORMAT}); rerun the stage that prepares it")
    height, width = int(meta["height"]), int(meta["width"])
    columns = table.to_pydict()
    images = np.frombuffer(b"".join(columns["pixels"]), dtype=np.uint8).reshape(-1, height, width, 3).copy()
    return BoxSet(
        images,
        [np.array(b, dtype=np.float32).reshape(-1, 4) for b in columns["boxes"]],
        [np.array(b, dtype=np.int64) for b in columns["labels"]],
        [np.array(b, dtype=bool) for b in columns["difficult"]],
        json.loads(meta["class_names"]),
        columns["path"],
    )
