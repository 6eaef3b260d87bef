"""Pooled image decoding: image files -> uint8 [N, S, S, 3] RGB, and for each file its
source (width, height) or, when it could not be read, the reason in words.

    - grayscale, palette, CMYK, 16-bit, float ... are converted to RGB; images with
      transparency are composited onto a white background first (`_to_rgb`);
    - a large JPEG is decoded at a reduced scale (libjpeg "draft" mode), never below
      twice the target size, before the resize of `bowflow.data.resize`: much faster
      for photos;
    - a file that cannot be decoded (empty, unreadable, not an image, truncated...) leaves
      a zero row and an error string, never an exception.

`decode_files` sends chunks of _DECODE_CHUNK files to a process pool (forked on Linux),
or decodes in-process below _MIN_FILES_FOR_POOL files; results come back in order.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from bowflow.data.resize import fit_square

_DECODE_CHUNK = 256  # files per pool task (and per progress-bar update)
_MIN_FILES_FOR_POOL = 1000  # below this, decoding in-process is faster than starting workers


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels are composited onto white.

    16-bit grayscale (I;16*, and 16-bit PNGs that older Pillow opens as mode I) keeps the
    high byte; 32-bit float images are taken to lie in [0, 1].
    """
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode == "I":
        im = Image.fromarray((np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8))
    elif im.mode == "F":
        im = Image.fromarray(np.round(np.clip(np.asarray(im, dtype=np.float64), 0, 1) * 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _decode_image(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read one image file -> (uint8 [size, size, 3], its source (width, height))."""
    with Image.open(path) as im:
        source_size = im.size
        if im.format == "JPEG":
            im.draft(None, (2 * size, 2 * size))  # DCT-domain downscale, never below 2x target
        im.load()
        return np.asarray(fit_square(_to_rgb(im), size), dtype=np.uint8), source_size


def _unreadable_reason(path: str, error: Exception) -> str:
    """Why a file could not be decoded, in words (no absolute paths)."""
    try:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    if isinstance(error, PermissionError):
        return "permission denied (not readable by this user)"
    if isinstance(error, FileNotFoundError):
        return "file not found (a broken link?)"
    if isinstance(error, UnidentifiedImageError):
        return "not an image PIL can read (wrong extension or damaged header)"
    return f"{type(error).__name__}: {error}"


def _decode_chunk(task: tuple[list[str], int]) -> tuple[np.ndarray, list, list]:
    """Decode a list of files -> (uint8 [n, S, S, 3] with zeros for failures, sizes, errors)."""
    paths, size = task
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    sizes: list[tuple[int, int] | None] = []
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            out[i], source_size = _decode_image(path, size)
            sizes.append(source_size)
            errors.append(None)
        except Exception as e:  # any failure means "unreadable": report it, move on
            sizes.append(None)
            errors.append(_unreadable_reason(path, e))
    return out, sizes, errors


def _num_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def decode_files(files: list[str], size: int) -> tuple[np.ndarray, list, list, int]:
    """Decode all files with a process pool -> (uint8 [N, S, S, 3], sizes, errors, workers).

    Failed rows stay zero and have an error string. Work goes out in chunks of
    _DECODE_CHUNK files; results come back in order. On Linux the pool forks (cheap
    start, nothing to re-import); elsewhere it uses the platform default.
    """
    tasks = [(files[i : i + _DECODE_CHUNK], size) for i in range(0, len(files), _DECODE_CHUNK)]
    workers = min(_num_workers(), len(tasks))
    if len(files) < _MIN_FILES_FOR_POOL:
        workers = 1
    pixels = np.empty((len(files), size, size, 3), dtype=np.uint8)
    sizes: list = []
    errors: list = []

    def collect(results) -> None:
        with tqdm(total=len(files), desc="decode", unit="img", mininterval=0.5) as bar:
            for out, chunk_sizes, chunk_errors in results:
                pixels[len(sizes) : len(sizes) + len(out)] = out
                sizes.extend(chunk_sizes)
                errors.extend(chunk_errors)
                bar.update(len(out))

    if workers <= 1:
        collect(map(_decode_chunk, tasks))
    else:
        ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context()
        with ctx.Pool(workers) as pool:
            collect(pool.imap(_decode_chunk, tasks))
    return pixels, sizes, errors, workers
