"""The image size policy: every image comes out uint8 RGB, size x size.

An image that is not size x size is centre-cropped to a square (side = its shorter edge)
and resized with PIL bilinear filtering (`fit_square`). Cropping keeps the aspect ratio
(no stretching) at the cost of the borders of non-square images. Array sources go through
`resize_images` (uint8 [N, h, w] or [N, h, w, 3] -> [N, size, size(, 3)]); decoded files
through `fit_square` one by one (`bowflow.data.decode`). `note_sizes` keeps the report's
count of resized images and its histogram of source sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

RESIZE_POLICY = "centre crop to square (shorter edge), then PIL bilinear resize"


def fit_square(im: Image.Image, size: int) -> Image.Image:
    """Centre-crop `im` to a square of its shorter edge and bilinear-resize it to size^2."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 [N, h, w] or [N, h, w, 3] to [N, size, size, (3)] with `fit_square`."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size) + images.shape[3:], dtype=np.uint8)
    for i in tqdm(range(len(images)), desc="resize", unit="img", mininterval=0.5, disable=len(images) < 5000):
        out[i] = np.asarray(fit_square(Image.fromarray(images[i]), size))
    return out


def note_sizes(report: dict[str, Any], sizes: Sequence[tuple[int, int]], image_size: int) -> None:
    """Count images whose source size is not image_size^2 and keep a size histogram."""
    counts: dict[str, int] = {}
    for w, h in sizes:
        key = f"{w}x{h}"
        counts[key] = counts.get(key, 0) + 1
    report["resized"] += sum(n for key, n in counts.items() if key != f"{image_size}x{image_size}")
    for key, n in counts.items():
        report["source_sizes"][key] = report["source_sizes"].get(key, 0) + n
    top = sorted(report["source_sizes"].items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    report["source_sizes"] = dict(top)
