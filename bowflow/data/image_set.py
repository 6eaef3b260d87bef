"""`ImageSet`: one split of a data source held in memory, as every source returns it and
`bowflow.data.write.write_prepared` writes it. Images are uint8 RGB, channels last:
[N, H, W, 3]; labels int64 [N] index the full, sorted class list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ImageSet:
    """One split of a dataset, held in memory.

    images:      uint8 [N, H, W, 3], RGB, channels last
    labels:      int64 [N], indices into class_names
    class_names: the dataset's full, sorted class list (the same for train and test)
    paths:       N source file names relative to the data root ("" for in-memory sources)
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    paths: list[str]

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {self.images.dtype} {self.images.shape}")
        if self.images.shape[0] != n or len(self.paths) != n:
            raise ValueError(f"{self.images.shape[0]} images, {n} labels, {len(self.paths)} paths")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)})")

    def __len__(self) -> int:
        return len(self.labels)
