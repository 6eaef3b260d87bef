"""Batched, on-device image augmentations with explicit random generators.

The training loop keeps the whole prepared dataset in memory as one uint8 tensor
`[N, C, H, W]` on the training device. Every function here takes a whole batch and works
on the device of its input with a handful of tensor ops: there is no per-image Python work.

Conventions
-----------
* A "float image batch" is `[B, C, H, W]` float32 with values in [0, 1].
* Every random function takes a keyword-only `generator: torch.Generator` that must live on
  the same device as the images. All random numbers are drawn from it, in a fixed order,
  so the same generator seed gives bit-identical output on the same device.
* Per-sample randomness: each image gets its own crop, flip, jitter factors, etc.
* Colour operations (`color_jitter`, `random_grayscale`) assume RGB, i.e. C == 3.

Pipeline pieces
---------------
`make_view` (random_resized_crop -> color_jitter -> random_grayscale) produces the
augmented views used by the students; `pad_crop_flip` is the lighter CIFAR augmentation;
`rotate_four` builds the RotNet input; `cutmix` mixes images and soft targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, the same ones torchvision uses for grayscale and contrast.
LUMA = (0.299, 0.587, 0.114)

# RGB -> YIQ. Row 0 is luma; rows 1 and 2 (I, Q) each sum to zero, so grey pixels
# (r = g = b) have I = Q = 0 and a rotation in the I-Q plane leaves them unchanged.
_RGB_TO_YIQ = (
    (0.299, 0.587, 0.114),
    (0.595716, -0.274453, -0.321263),
    (0.211456, -0.522591, 0.311135),
)
_YIQ_TO_RGB = tuple(map(tuple, torch.linalg.inv(torch.tensor(_RGB_TO_YIQ, dtype=torch.float64)).tolist()))


def _check_images(x: torch.Tensor, name: str = "x", rgb: bool = False) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be [B, C, H, W], got shape {tuple(x.shape)}")
    if rgb and x.shape[1] != 3:
        raise ValueError(f"{name} must have 3 (RGB) channels, got {x.shape[1]}")


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """[n] float32 samples from Uniform(low, high)."""
    u = torch.rand(n, generator=generator, device=device)
    return low + (high - low) * u


# ---------------------------------------------------------------------------------------
# Conversion and normalisation
# ---------------------------------------------------------------------------------------


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] in {0..255} -> float32 [B, C, H, W] in [0, 1]."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    return images_uint8.to(torch.float32).div_(255.0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel `(x - mean[c]) / std[c]` for float [B, C, H, W]; mean/std have length C."""
    _check_images(x)
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(f"mean/std need {x.shape[1]} entries, got {len(mean)}/{len(std)}")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------------------------------
# Geometric augmentations
# ---------------------------------------------------------------------------------------


def _sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, ...]:
    """Sample one crop box per image, in continuous pixel units.

    Area fraction ~ Uniform(scale) of H*W, log(aspect ratio w/h) ~ Uniform(log ratio).
    A box larger than the image along one side is clamped to that side (torchvision
    instead retries up to 10 times and then falls back to a centre crop; clamping keeps
    the batch loop-free and only changes the aspect ratio of those rare boxes). The centre
    is uniform over all positions that keep the box fully inside the image.

    Returns (cx, cy, w, h), each float32 [batch]: box centre and size in pixels, with
    0 <= cx - w/2, cx + w/2 <= width, and likewise for cy, h, height.
    """
    area = _uniform(batch, scale[0], scale[1], generator, device) * (height * width)
    log_r = _uniform(batch, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=width)
    h = torch.sqrt(area / aspect).clamp(max=height)
    u = torch.rand(batch, 2, generator=generator, device=device)
    cx = w / 2 + u[:, 0] * (width - w)
    cy = h / 2 + u[:, 1] * (height - h)
    return cx, cy, w, h


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    *,
    generator: torch.Generator,
) -> torch.Tensor:
    """Per-sample random crop, resized to `size` x `size`, with an optional horizontal flip.

    x: float [B, C, H, W]  ->  float [B, C, size, size].

    Defaults: scale (0.2, 1.0) is the area fraction range used by SimCLR/BoWNet-style
    views on small images (torchvision's 0.08 lower bound destroys too much of a 32x32
    image); ratio (3/4, 4/3) is the standard aspect-ratio range; flip_p 0.5.

    Each crop (and the flip, a sign change of the x scale) is one 2x3 affine matrix; the
    whole batch is resampled by a single `affine_grid` + bilinear `grid_sample`.
    With `align_corners=False`, normalised coordinates -1 and +1 are the outer pixel
    edges, so the box [cx - w/2, cx + w/2] in pixels maps to x_n = (w/W) * u + (2cx/W - 1)
    for output coordinates u in [-1, 1]. The full-image box with no flip is the identity
    matrix, so scale=(1, 1), ratio=(1, 1), flip_p=0, size=H=W reproduces `x`.
    Downscaling is bilinear without anti-aliasing (like a crop-then-resize on GPU).
    """
    _check_images(x)
    if not x.is_floating_point():
        raise TypeError("random_resized_crop needs float images; call to_float first")
    batch, channels, height, width = x.shape
    dev = x.device
    cx, cy, w, h = _sample_crop_boxes(batch, height, width, scale, ratio, generator, dev)
    flip = torch.rand(batch, generator=generator, device=dev) < flip_p
    sign = 1.0 - 2.0 * flip.to(x.dtype)  # -1 where flipped

    theta = torch.zeros(batch, 2, 3, dtype=x.dtype, device=dev)
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = 2.0 * cx / width - 1.0
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = 2.0 * cy / height - 1.0
    grid = F.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    # Sample points lie inside the box, but bilinear taps of the outermost ones may reach
    # half a pixel past the image edge: "border" repeats the edge instead of fading to 0.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def pad_crop_flip(
    x: torch.Tensor, padding: int = 4, flip_p: float = 0.5, *, generator: torch.Generator
) -> torch.Tensor:
    """CIFAR-style "pad `padding` with zeros, random crop back to H x W, random h-flip".

    x: [B, C, H, W] (any dtype, uint8 included)  ->  same shape and dtype.

    Exact: integer shifts, zero padding, no interpolation. Each sample's crop offset
    (dy, dx) is uniform in {0, ..., 2 * padding}; the crop and flip become one index map
    into the padded image, applied to the whole batch with a single `gather`.
    Defaults: padding 4 px and flip_p 0.5 are the standard CIFAR-10 recipe for 32x32.
    """
    _check_images(x)
    batch, channels, height, width = x.shape
    dev = x.device
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator, device=dev)
    flip = torch.rand(batch, generator=generator, device=dev) < flip_p

    padded = F.pad(x, (padding, padding, padding, padding)) if padding > 0 else x
    padded_w = width + 2 * padding
    cols = torch.arange(width, device=dev).expand(batch, width)
    cols = torch.where(flip[:, None], width - 1 - cols, cols) + offsets[:, 1:2]  # [B, W]
    rows = torch.arange(height, device=dev)[None, :] + offsets[:, 0:1]  # [B, H]
    index = (rows[:, :, None] * padded_w + cols[:, None, :]).view(batch, 1, height * width)
    out = padded.flatten(2).gather(2, index.expand(batch, channels, height * width))
    return out.view(batch, channels, height, width)


def rotate_four(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RotNet input: every image rotated by 0, 90, 180 and 270 degrees.

    x: [B, C, H, W] with H == W  ->  (x4 [4B, C, H, W], labels [4B] int64).
    Rotation-major order: rows [k*B, (k+1)*B) hold rotation k (k * 90 degrees, via
    `torch.rot90(x, k, dims=(2, 3))`, exact) and carry label k.
    """
    _check_images(x)
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"rotate_four needs square images, got {tuple(x.shape[2:])}")
    x4 = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=0)
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return x4, labels


# ---------------------------------------------------------------------------------------
# Colour augmentations (RGB only)
# ---------------------------------------------------------------------------------------


def _hue_matrices(hue_turns: torch.Tensor) -> torch.Tensor:
    """[B] hue shifts in turns -> [B, 3, 3] RGB matrices rotating the YIQ chroma plane."""
    dtype, dev = hue_turns.dtype, hue_turns.device
    to_yiq = torch.tensor(_RGB_TO_YIQ, dtype=dtype, device=dev)
    from_yiq = torch.tensor(_YIQ_TO_RGB, dtype=dtype, device=dev)
    angle = 2.0 * math.pi * hue_turns
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(hue_turns.shape[0], 3, 3, dtype=dtype, device=dev)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    return from_yiq @ rot @ to_yiq


def _jitter_affine(
    x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor, hue: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold brightness -> contrast -> saturation -> hue into one per-sample affine map.

    x: float [B, 3, H, W]; factors: [B] each (hue in turns). Returns (A [B, 3, 3], t [B, 3])
    such that the four (unclamped) steps equal `A @ pixel + t` for every pixel:

        brightness  p -> b p
        contrast    p -> c p + (1 - c) m      m = mean luma after brightness = b * mean luma(x)
        saturation  p -> s p + (1 - s) (luma . p) 1          =: S p
        hue         p -> Hm p                 (rotation of the YIQ I-Q plane)

    so A = b c Hm S and t = (1 - c) b mean_luma(x) Hm S 1.
    """
    batch = x.shape[0]
    dtype, dev = x.dtype, x.device
    luma = torch.tensor(LUMA, dtype=dtype, device=dev)
    eye = torch.eye(3, dtype=dtype, device=dev)
    sat = saturation[:, None, None] * eye + (1.0 - saturation)[:, None, None] * luma  # [B,3,3]
    hs = _hue_matrices(hue) @ sat
    mean_luma = x.mean(dim=(2, 3)) @ luma  # [B]
    matrix = hs * (brightness * contrast)[:, None, None]
    bias = hs.sum(dim=2) * ((1.0 - contrast) * brightness * mean_luma)[:, None]
    return matrix, bias.view(batch, 3)


def color_jitter(
    x: torch.Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
    *,
    generator: torch.Generator,
) -> torch.Tensor:
    """Per-sample colour jitter, applied to each image with probability `p`. RGB only (C == 3).

    x: float [B, 3, H, W] in [0, 1]  ->  float [B, 3, H, W] in [0, 1].

    Factors per image: brightness, contrast, saturation ~ Uniform[1 - s, 1 + s] (s being
    the argument), hue shift ~ Uniform[-hue, hue] in turns (hue <= 0.5). Defaults
    (0.4, 0.4, 0.4, 0.1, p=0.8) are the SimCLR-strength jitter used for BoWNet views.

    Differences from torchvision's ColorJitter, chosen for speed and batching:
    * fixed order brightness -> contrast -> saturation -> hue (torchvision shuffles it);
    * hue is a rotation of the chroma plane in YIQ space, not a shift of HSV hue; it keeps
      luma and chroma magnitude, and the two agree roughly but not exactly;
    * all four steps are linear per pixel (contrast uses the per-image mean luma), so they
      are folded into one per-sample 3x3 matrix plus offset, applied with one batched
      matmul, and clamped to [0, 1] once at the end (torchvision clamps after every step;
      the two differ only where an intermediate result leaves [0, 1]).
    Images not selected are returned bit-exactly unchanged.
    """
    _check_images(x, rgb=True)
    batch, channels, height, width = x.shape
    dev = x.device
    u = torch.rand(batch, 5, generator=generator, device=dev, dtype=x.dtype)
    b = 1.0 + brightness * (2.0 * u[:, 0] - 1.0)
    c = 1.0 + contrast * (2.0 * u[:, 1] - 1.0)
    s = 1.0 + saturation * (2.0 * u[:, 2] - 1.0)
    h = hue * (2.0 * u[:, 3] - 1.0)
    apply = u[:, 4] < p

    matrix, bias = _jitter_affine(x, b, c, s, h)
    # Unselected images get the exact identity map (1 * p + 0 * q + 0 = p in floating point).
    eye = torch.eye(3, dtype=x.dtype, device=dev).expand(batch, 3, 3)
    matrix = torch.where(apply[:, None, None], matrix, eye)
    bias = torch.where(apply[:, None], bias, torch.zeros_like(bias))
    out = torch.baddbmm(bias[:, :, None], matrix, x.reshape(batch, 3, height * width))
    return out.clamp_(0.0, 1.0).view(batch, channels, height, width)


def random_grayscale(x: torch.Tensor, p: float = 0.2, *, generator: torch.Generator) -> torch.Tensor:
    """With probability `p` per image, replace RGB by its luma on all 3 channels.

    x: float [B, 3, H, W]  ->  float [B, 3, H, W]. Luma = 0.299 R + 0.587 G + 0.114 B
    (BT.601). Default p = 0.2 as in SimCLR.
    """
    _check_images(x, rgb=True)
    convert = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    luma = torch.tensor(LUMA, dtype=x.dtype, device=x.device)
    gray = torch.einsum("bchw,c->bhw", x, luma)[:, None].expand_as(x)
    return torch.where(convert[:, None, None, None], gray, x)


# ---------------------------------------------------------------------------------------
# CutMix
# ---------------------------------------------------------------------------------------


def cutmix(
    x: torch.Tensor, targets: torch.Tensor, p: float = 1.0, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (alpha = 1) with soft targets, batched.

    x: [B, C, H, W]; targets: float [B, K], one distribution per image.
    Returns (x_mixed [B, C, H, W], targets_mixed [B, K]); the inputs are not modified.

    Image i is paired with partner j = perm[i] (a random permutation of the batch). With
    probability p, a box cut from image j is pasted into image i at the same position.
    Box area fraction r ~ Uniform(0, 1) (Beta(1, 1), i.e. CutMix with alpha = 1): side
    lengths floor(W sqrt r) x floor(H sqrt r), centre uniform over integer pixel positions,
    box clipped to the image. lambda_i is the exact fraction of image i's pixels that were
    kept, from the clipped integer box, and

        targets_mixed[i] = lambda_i * targets[i] + (1 - lambda_i) * targets[j].

    When j == i (a fixed point of the permutation) nothing visibly changes and the target
    mix is a no-op, so the rule stays consistent.
    """
    _check_images(x)
    if targets.dim() != 2 or targets.shape[0] != x.shape[0]:
        raise ValueError(f"targets must be [B, K] with B = {x.shape[0]}, got {tuple(targets.shape)}")
    batch, _, height, width = x.shape
    dev = x.device
    perm = torch.randperm(batch, generator=generator, device=dev)
    u = torch.rand(batch, 2, generator=generator, device=dev)
    r, apply = u[:, 0], u[:, 1] < p
    cy = torch.randint(0, height, (batch,), generator=generator, device=dev)
    cx = torch.randint(0, width, (batch,), generator=generator, device=dev)

    cut_h = torch.floor(height * torch.sqrt(r)).long()
    cut_w = torch.floor(width * torch.sqrt(r)).long()
    y0 = (cy - cut_h // 2).clamp(0, height)
    y1 = (cy - cut_h // 2 + cut_h).clamp(0, height)
    x0 = (cx - cut_w // 2).clamp(0, width)
    x1 = (cx - cut_w // 2 + cut_w).clamp(0, width)
    # Samples not selected get an empty box.
    y0, y1, x0, x1 = (torch.where(apply, v, 0) for v in (y0, y1, x0, x1))

    ys = torch.arange(height, device=dev)[None, :, None]  # [1, H, 1]
    xs = torch.arange(width, device=dev)[None, None, :]  # [1, 1, W]
    inside = (
        (ys >= y0[:, None, None]) & (ys < y1[:, None, None]) & (xs >= x0[:, None, None]) & (xs < x1[:, None, None])
    )  # [B, H, W]
    x_mixed = torch.where(inside[:, None], x[perm], x)

    pasted = ((y1 - y0) * (x1 - x0)).to(targets.dtype) / (height * width)  # [B]
    lam = (1.0 - pasted)[:, None]
    targets_mixed = lam * targets + (1.0 - lam) * targets[perm]
    return x_mixed, targets_mixed


# ---------------------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewSpec:
    """Recipe for one augmented view (see `make_view`).

    size: output side in pixels.
    crop_scale: area fraction range of the random crop; (0.2, 1.0) suits 32-96 px images.
    crop_ratio: aspect ratio (w / h) range of the crop.
    flip_p: horizontal flip probability.
    jitter: brightness/contrast/saturation strength s (factors in [1 - s, 1 + s]).
    hue: hue shift range in turns ([-hue, hue]).
    jitter_p: probability of applying colour jitter to an image.
    gray_p: probability of converting an image to grayscale.
    blur_p: probability of a Gaussian blur, sigma ~ Uniform(blur_sigma) pixels at 224 px
        (scaled to the view's size by `blur_sigma_px`). 0 draws no random numbers.
    solarize_p: probability of solarizing (pixels >= 0.5 become 1 - x). 0 draws none.
    """

    size: int
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


def make_view(images_uint8: torch.Tensor, spec: ViewSpec, generator: torch.Generator) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [B, 3, size, size] in [0, 1] (not normalised).

    to_float -> random_resized_crop (+ flip) -> color_jitter -> random_grayscale
    [-> gaussian_blur] [-> solarize], all batched on the device of `images_uint8`,
    randomness from `generator`. Blur and solarize draw random numbers only when their
    probability is > 0, so views without them are the same as before they existed.
    """
    x = to_float(images_uint8)
    x = random_resized_crop(x, spec.size, spec.crop_scale, spec.crop_ratio, spec.flip_p, generator=generator)
    x = color_jitter(x, spec.jitter, spec.jitter, spec.jitter, spec.hue, spec.jitter_p, generator=generator)
    x = random_grayscale(x, spec.gray_p, generator=generator)
    if spec.blur_p > 0:
        x = gaussian_blur(x, spec.blur_p, blur_sigma_px(spec.blur_sigma, spec.size), generator=generator)
    if spec.solarize_p > 0:
        x = solarize(x, spec.solarize_p, generator=generator)
    return x


def make_views(images_uint8: torch.Tensor, specs: Sequence[ViewSpec], generator: torch.Generator) -> list[torch.Tensor]:
    """One view per spec of the same images (multi-crop: e.g. 2 global + n local specs).
    uint8 [B, 3, H, W] -> [float [B, 3, spec.size, spec.size] for spec in specs]."""
    return [make_view(images_uint8, spec, generator) for spec in specs]


def simclr_view(
    images_uint8: torch.Tensor,
    size: int,
    crop_scale_min: float,
    color_strength: float,
    jitter_p: float,
    gray_p: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """SimCLR's CIFAR view (its paper's appendix): uint8 [B, 3, H, W] -> float [B, 3, size,
    size] in [0, 1]: random resized crop (area crop_scale_min..1) + flip, colour jitter of
    strength s (brightness/contrast/saturation 0.8 s, hue 0.2 s) with probability jitter_p,
    grayscale with probability gray_p; no blur. SimCLR and IFACLR draw their views here."""
    s = color_strength
    x = random_resized_crop(to_float(images_uint8), size, (crop_scale_min, 1.0), generator=generator)
    x = color_jitter(x, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, jitter_p, generator=generator)
    return random_grayscale(x, gray_p, generator=generator)


def scaled_size(image_size: int, fraction: float, minimum: int = 4) -> int:
    """A view's side in pixels as a fraction of the image's (DINO's 96/224 local crops),
    never below `minimum` so that a tiny image still gives a usable crop."""
    return max(minimum, min(image_size, int(round(image_size * fraction))))


# ---------------------------------------------------------------------------------------
# Blur and solarization (BYOL / DINO / Barlow Twins views)
# ---------------------------------------------------------------------------------------

REFERENCE_SIZE = 224  # px: the view side for which the authors give their blur sigmas


def blur_sigma_px(sigma_at_reference: Sequence[float], size: int) -> tuple[float, float]:
    """A blur sigma range given in px of a 224 px view (SimCLR, BYOL, MoCo v2, DINO, Barlow
    Twins: (0.1, 2.0)) -> px of a `size` px view, times size / 224: the blur is the same
    fraction of the view at every size, so every method's rows get the same view strength.
    At 32 px this is 0.014-0.29 px, which the 5-tap kernel leaves almost unchanged (the
    small-image recipes of SimCLR and solo-learn drop blur); it matters from ~96 px up."""
    low, high = sigma_at_reference
    scale = size / REFERENCE_SIZE
    return low * scale, high * scale


def gaussian_blur(
    x: torch.Tensor, p: float, sigma: tuple[float, float] = (0.1, 2.0), *, generator: torch.Generator
) -> torch.Tensor:
    """Blur each image with probability p by a Gaussian of its own sigma.

    x: float [B, C, H, W] -> same shape. sigma ~ Uniform(sigma) pixels (SimCLR/BYOL:
    (0.1, 2.0)); the kernel spans about 10% of the side (their recipe), at least 3 taps,
    so on a 32 px view it is 3 px wide and large sigmas flatten to a box blur, as with
    torchvision's GaussianBlur(kernel_size=3) in small-image recipes. Separable,
    reflect-padded, one grouped conv per direction over the whole batch; images not
    selected are returned unchanged.
    """
    _check_images(x)
    batch, channels, height, width = x.shape
    dev = x.device
    chosen = torch.rand(batch, generator=generator, device=dev) < p
    s = _uniform(batch, sigma[0], sigma[1], generator, dev)
    radius = max(1, round(0.05 * min(height, width)))  # kernel 2r+1 ~ 10% of the side
    offsets = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
    kernels = torch.exp(-(offsets[None, :] ** 2) / (2 * s[:, None].clamp_min(1e-3) ** 2))
    kernels = kernels / kernels.sum(1, keepdim=True)  # [B, 2r+1]
    weight = kernels.repeat_interleave(channels, 0)  # [B*C, 2r+1]
    flat = x.reshape(1, batch * channels, height, width)
    flat = F.conv2d(
        F.pad(flat, (radius, radius, 0, 0), mode="reflect"), weight[:, None, None, :], groups=batch * channels
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, radius, radius), mode="reflect"), weight[:, None, :, None], groups=batch * channels
    )
    blurred = flat.view(batch, channels, height, width)
    return torch.where(chosen[:, None, None, None], blurred, x)


def solarize(x: torch.Tensor, p: float, threshold: float = 0.5, *, generator: torch.Generator) -> torch.Tensor:
    """With probability p per image, pixels >= threshold become 1 - x (BYOL, DINO).
    x: float [B, C, H, W] in [0, 1] -> same shape."""
    _check_images(x)
    chosen = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    flipped = torch.where(x >= threshold, 1.0 - x, x)
    return torch.where(chosen[:, None, None, None], flipped, x)
