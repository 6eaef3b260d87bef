"""A tiny seeded image task on which learning beats random features (test_method_learning).

Each 16 x 16 image shows one of four 5 x 5 glyphs (the class: T, L, F, P; no two are mirror
images of each other, so a horizontal flip never turns one class into another), drawn at
2 px per cell (10 x 10 px, 2 px strokes) at a random position, light on dark (a grey level
drawn per image for the background, 0-0.4, and for the glyph, 0.6-1.0), under strong
Gaussian pixel noise (std 0.25, fixed per image).

The nuisances (position, the two grey levels, noise) dominate pixel space: an untrained
convnet's pooled features are swayed by them and its k-NN accuracy stays low (~43%, chance
25%), while a network trained to be invariant to crops and colour jitter (or to predict
rotations or labels) sees the glyph. Why grey: with a random colour tint per image
(tried: std 0.15 per channel), the tint survives the methods' colour jitter (hue +-0.1
turn) and BYOL, Barlow Twins, SwAV, DINO and OBoW learned it, ending below the untrained
network; position, grey levels and noise are within reach of their crops, brightness/
contrast jitter and resizing, so what is left to learn is the glyph.
"""

from __future__ import annotations

import torch

IMAGE_SIZE = 16
GLYPHS = {
    "T": ["#####", "..#..", "..#..", "..#..", "..#.."],
    "L": ["#....", "#....", "#....", "#....", "#####"],
    "F": ["#####", "#....", "####.", "#....", "#...."],
    "P": ["####.", "#...#", "####.", "#....", "#...."],
}
NUM_CLASSES = len(GLYPHS)
CELL = 2  # pixels per glyph cell
BACKGROUND = (0.0, 0.4)  # range of the background's grey level, [0, 1] intensity
FOREGROUND = (0.6, 1.0)  # range of the glyph's grey level: always lighter than the background
NOISE_STD = 0.25  # Gaussian pixel noise, std (0.15: the control's k-NN is ~50%)


def glyph_masks() -> torch.Tensor:
    """[K, 10, 10] float masks (1 on the glyph's strokes) in class order."""
    cells = torch.tensor(
        [[[c == "#" for c in row] for row in rows] for rows in GLYPHS.values()], dtype=torch.float32
    )  # [K, 5, 5]
    return cells.repeat_interleave(CELL, 1).repeat_interleave(CELL, 2)


def shapes(n: int, seed: int, noise: float = NOISE_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """n images uint8 [n, 3, 16, 16] and labels int64 [n] (balanced: i % 4), from `seed`."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    masks = glyph_masks()[labels]  # [n, 10, 10]
    side = masks.shape[-1]
    placed = torch.zeros(n, IMAGE_SIZE, IMAGE_SIZE)
    offsets = torch.randint(0, IMAGE_SIZE - side + 1, (n, 2), generator=g)
    for i, (top, left) in enumerate(offsets.tolist()):
        placed[i, top : top + side, left : left + side] = masks[i]

    def grey(low: float, high: float) -> torch.Tensor:  # [n, 1, 1, 1]
        return (low + (high - low) * torch.rand(n, generator=g))[:, None, None, None]

    background, foreground = grey(*BACKGROUND), grey(*FOREGROUND)
    x = (background + (foreground - background) * placed[:, None]).expand(n, 3, IMAGE_SIZE, IMAGE_SIZE)
    x = x + noise * torch.randn(x.shape, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels
