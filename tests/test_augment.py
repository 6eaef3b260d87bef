"""Tests for bowflow.augment: shapes, determinism, ranges, exactness, CutMix bookkeeping."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bowflow.augment import (
    LUMA,
    ViewSpec,
    _hue_matrices,
    _jitter_affine,
    _sample_crop_boxes,
    color_jitter,
    cutmix,
    make_view,
    normalize,
    pad_crop_flip,
    random_grayscale,
    random_resized_crop,
    rotate_four,
    to_float,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def images() -> torch.Tensor:
    """uint8 [16, 3, 32, 32] random images."""
    return torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=gen(123))


@pytest.fixture
def floats(images) -> torch.Tensor:
    return to_float(images)


# Every random op as f(x, generator) -> tensor, for the generic tests.
RANDOM_OPS = {
    "random_resized_crop": lambda x, g: random_resized_crop(to_float(x), 24, generator=g),
    "pad_crop_flip": lambda x, g: pad_crop_flip(x, generator=g),
    "color_jitter": lambda x, g: color_jitter(to_float(x), generator=g),
    "random_grayscale": lambda x, g: random_grayscale(to_float(x), p=0.5, generator=g),
    "make_view": lambda x, g: make_view(x, ViewSpec(size=24), g),
    "cutmix": lambda x, g: cutmix(to_float(x), torch.eye(16), generator=g)[0],
}


# --------------------------------------------------------------------------- basics


def test_to_float_and_normalize(images):
    x = to_float(images)
    assert x.dtype == torch.float32 and x.shape == images.shape
    assert torch.equal(x * 255, images.float())
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    y = normalize(x, mean, std)
    for c in range(3):
        assert torch.allclose(y[:, c], (x[:, c] - mean[c]) / std[c])
    with pytest.raises(TypeError):
        to_float(x)
    with pytest.raises(ValueError):
        normalize(x, (0.5,), (0.5,))


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_determinism(name, images):
    op = RANDOM_OPS[name]
    a, b, c = op(images, gen(1)), op(images, gen(1)), op(images, gen(2))
    assert torch.equal(a, b), "same seed must give identical output"
    assert not torch.equal(a, c), "different seeds must give different output"


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_shapes_dtypes_and_range(name, images):
    out = RANDOM_OPS[name](images, gen(0))
    if name == "pad_crop_flip":
        assert out.dtype == torch.uint8 and out.shape == images.shape
        return
    expected = (16, 3, 24, 24) if name in ("random_resized_crop", "make_view") else (16, 3, 32, 32)
    assert out.dtype == torch.float32 and tuple(out.shape) == expected
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_make_view_spec_is_frozen():
    spec = ViewSpec(size=32)
    assert spec.crop_scale == (0.2, 1.0) and spec.jitter_p == 0.8 and spec.gray_p == 0.2
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.size = 16  # type: ignore[misc]


# --------------------------------------------------------------------------- geometry


def test_random_resized_crop_identity_and_flip(floats):
    ident = random_resized_crop(floats, 32, (1.0, 1.0), (1.0, 1.0), flip_p=0.0, generator=gen())
    assert torch.allclose(ident, floats, atol=1e-5)
    flipped = random_resized_crop(floats, 32, (1.0, 1.0), (1.0, 1.0), flip_p=1.0, generator=gen())
    assert torch.allclose(flipped, floats.flip(-1), atol=1e-5)


def test_random_resized_crop_takes_a_box_inside_the_image_at_its_scale_and_ratio():
    """Read each crop's box back from its output: on an image whose channel 0 is the pixel
    column and channel 1 the row, bilinear sampling is exact (value = position - 0.5), so
    the middle samples give the box's centre and the step between them its side / size.
    Every box must lie inside the image with an area fraction in `scale` and an aspect
    ratio w / h in `ratio` (asymmetric here, so swapped sides show), axis-aligned,
    anywhere in the image, about half of them mirrored (a negative column step)."""
    b, side, size, m = 256, 32, 16, 8
    ramp = torch.arange(side, dtype=torch.float32)
    x = torch.stack([ramp.expand(side, side), ramp[:, None].expand(side, side), torch.zeros(side, side)]).expand(
        b, 3, side, side
    )
    # scale <= 0.4 with ratio >= 0.5 keeps both sides below 32 px: no box is clamped.
    out = random_resized_crop(x, size, scale=(0.2, 0.4), ratio=(0.5, 1.0), flip_p=0.5, generator=gen(9))
    assert torch.allclose(out[:, 0], out[:, 0, :1].expand(b, size, size), atol=1e-4), "columns vary by row"
    assert torch.allclose(out[:, 1], out[:, 1, :, :1].expand(b, size, size), atol=1e-4), "rows vary by column"
    step_x = out[:, 0, m, m] - out[:, 0, m, m - 1]
    step_y = out[:, 1, m, m] - out[:, 1, m - 1, m]
    w, h = step_x.abs() * size, step_y * size
    cx = (out[:, 0, m, m] + out[:, 0, m, m - 1]) / 2 + 0.5
    cy = (out[:, 1, m, m] + out[:, 1, m - 1, m]) / 2 + 0.5
    eps = 1e-3
    assert (step_y > 0).all(), "no vertical flip"
    assert (cx - w / 2 >= -eps).all() and (cx + w / 2 <= side + eps).all()
    assert (cy - h / 2 >= -eps).all() and (cy + h / 2 <= side + eps).all()
    # the centre is uniform over every position that keeps the box inside: some of 256
    # boxes come within a pixel of each edge (a centre pulled inwards never does)
    assert (cx - w / 2).min() < 1 and (cx + w / 2).max() > side - 1
    assert (cy - h / 2).min() < 1 and (cy + h / 2).max() > side - 1
    area = w * h / side**2
    assert area.min() >= 0.2 - eps and area.max() <= 0.4 + eps
    assert (w / h).min() >= 0.5 - eps and (w / h).max() <= 1.0 + eps
    assert 0.35 < (step_x < 0).float().mean() < 0.65  # flip_p 0.5 of 256 images


def test_crop_boxes_inside_image():
    h, w = 24, 40
    cx, cy, bw, bh = _sample_crop_boxes(4096, h, w, (0.05, 1.0), (0.3, 3.0), gen(), torch.device("cpu"))
    eps = 1e-4
    assert (cx - bw / 2 >= -eps).all() and (cx + bw / 2 <= w + eps).all()
    assert (cy - bh / 2 >= -eps).all() and (cy + bh / 2 <= h + eps).all()
    assert (bw > 0).all() and (bh > 0).all()
    frac = bw * bh / (h * w)
    assert frac.max() <= 1.0 + eps and frac.min() >= 0.05 - eps


def test_random_resized_crop_of_constant_image_is_constant():
    x = torch.full((8, 3, 32, 32), 0.37)
    out = random_resized_crop(x, 20, generator=gen())
    assert torch.allclose(out, torch.full_like(out, 0.37), atol=1e-6)


def test_pad_crop_flip_identity_and_exactness(images):
    assert torch.equal(pad_crop_flip(images, padding=0, flip_p=0.0, generator=gen()), images)
    flipped = pad_crop_flip(images, padding=0, flip_p=1.0, generator=gen())
    assert torch.equal(flipped, images.flip(-1))
    # With padding, every output is an integer shift (possibly flipped) of its input with
    # zeros shifted in: compare against a straightforward per-image reference.
    x = images[:, :, :12, :12] // 2 + 1  # no zeros inside, so padding is visible
    p = 3
    out = pad_crop_flip(x, padding=p, flip_p=0.5, generator=gen(5))
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    for i in range(x.shape[0]):
        candidates = [padded[i, :, dy : dy + 12, dx : dx + 12] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
        candidates += [c.flip(-1) for c in candidates]
        assert any(torch.equal(out[i], c) for c in candidates)


def test_rotate_four_exact_and_labels(floats):
    b = floats.shape[0]
    x4, labels = rotate_four(floats)
    assert x4.shape == (4 * b, 3, 32, 32) and labels.dtype == torch.int64
    assert torch.equal(labels, torch.arange(4).repeat_interleave(b))
    assert torch.equal(x4[:b], floats)
    for k in range(4):
        block = x4[k * b : (k + 1) * b]
        assert torch.equal(block, torch.rot90(floats, k, dims=(2, 3)))
        assert torch.equal(torch.rot90(block, 4 - k, dims=(2, 3)), floats)
    with pytest.raises(ValueError):
        rotate_four(floats[:, :, :, :16])


# --------------------------------------------------------------------------- colour


def test_color_jitter_p0_is_identity_and_range(floats):
    assert torch.equal(color_jitter(floats, p=0.0, generator=gen()), floats)
    out = color_jitter(floats, 0.9, 0.9, 0.9, 0.5, p=1.0, generator=gen())
    assert out.min() >= 0 and out.max() <= 1
    assert all(not torch.equal(o, f) for o, f in zip(out, floats)), "p=1 changes every image"


def test_color_jitter_brightness_is_one_clamped_factor_per_image(floats):
    """Brightness alone: each image is multiplied by its own factor b in [1 - s, 1 + s]
    and clamped to [0, 1], nothing else; with p = 0.5 the others stay bit-exact."""
    s = 0.9
    out = color_jitter(floats, s, 0.0, 0.0, 0.0, p=1.0, generator=gen(2))
    unclamped = (floats > 0.1) & (out < 0.999)
    b = torch.stack([(o / f)[k].median() for o, f, k in zip(out, floats, unclamped)])
    assert torch.allclose(out, (b[:, None, None, None] * floats).clamp(0, 1), atol=1e-5)
    assert b.min() >= 1 - s - 1e-4 and b.max() <= 1 + s + 1e-4
    assert b.min() < 1 < b.max() and b.max() - b.min() > 0.5, f"not drawn around 1 per image: {b}"
    assert (out == 1.0).any(), "factors above 1 saturate bright pixels at exactly 1"
    half = color_jitter(floats, s, 0.0, 0.0, 0.0, p=0.5, generator=gen(2))
    kept = torch.tensor([torch.equal(o, f) for o, f in zip(half, floats)])
    assert 0 < kept.sum() < len(floats)
    assert torch.allclose(half[~kept], (b[~kept, None, None, None] * floats[~kept]).clamp(0, 1), atol=1e-5)


def test_color_jitter_hue_alone_keeps_luma():
    """Hue alone rotates chroma: every pixel keeps its luma, grey pixels stay grey, colour
    pixels change (values kept inside [0, 1] throughout, so nothing is clamped)."""
    x = 0.4 + 0.2 * torch.rand(8, 3, 6, 6, generator=gen(4))
    x[:, :, 0, 0] = 0.5  # one grey pixel each
    out = color_jitter(x, 0.0, 0.0, 0.0, 0.5, p=1.0, generator=gen(5))
    luma = torch.tensor(LUMA)
    assert torch.allclose(torch.einsum("bchw,c->bhw", out, luma), torch.einsum("bchw,c->bhw", x, luma), atol=1e-5)
    assert torch.allclose(out[:, :, 0, 0], x[:, :, 0, 0], atol=1e-5)
    assert (out - x).abs().amax(dim=(1, 2, 3)).min() > 1e-3, "an image kept its colours"


def test_jitter_affine_matches_torchvision_steps():
    """Brightness, contrast, saturation folded into one map equal torchvision's three steps."""
    from torchvision.transforms.v2 import functional as TF

    x = 0.3 + 0.4 * torch.rand(4, 3, 8, 8, generator=gen(7))  # stays in [0, 1] throughout
    b = torch.tensor([0.8, 1.1, 1.0, 1.2])
    c = torch.tensor([1.2, 0.7, 1.0, 0.9])
    s = torch.tensor([0.6, 1.3, 1.0, 1.1])
    matrix, bias = _jitter_affine(x, b, c, s, torch.zeros(4))
    fused = torch.einsum("bij,bjhw->bihw", matrix, x) + bias[:, :, None, None]
    for i in range(4):
        ref = TF.adjust_brightness(x[i], b[i].item())
        ref = TF.adjust_contrast(ref, c[i].item())
        ref = TF.adjust_saturation(ref, s[i].item())
        # torchvision's luma uses 0.2989 for red instead of 0.299: differences ~1e-5.
        assert torch.allclose(fused[i], ref, atol=1e-4)


def test_hue_rotation_keeps_luma_and_inverts():
    m = _hue_matrices(torch.tensor([0.0, 0.1, -0.1, 0.5, -0.5]))
    luma = torch.tensor(LUMA)
    assert torch.allclose(m[0], torch.eye(3), atol=1e-5)  # zero shift
    assert torch.allclose(luma @ m, luma.expand(5, 3), atol=1e-5)  # luma preserved
    assert torch.allclose(m @ torch.ones(3), torch.ones(5, 3), atol=1e-5)  # grey fixed
    assert torch.allclose(m[1] @ m[2], torch.eye(3), atol=1e-5)  # +h then -h
    assert torch.allclose(m[3], m[4], atol=1e-5)  # half turn both ways


def test_random_grayscale(floats):
    out = random_grayscale(floats, p=0.5, generator=gen(3))
    gray = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert 0 < gray.sum() < floats.shape[0]
    expected = torch.einsum("bchw,c->bhw", floats, torch.tensor(LUMA))
    assert torch.allclose(out[gray, 0], expected[gray], atol=1e-6)
    assert torch.equal(out[~gray], floats[~gray])
    assert torch.equal(random_grayscale(floats, p=0.0, generator=gen()), floats)


# --------------------------------------------------------------------------- cutmix


def test_cutmix_zeros_and_ones_bookkeeping():
    """Zeros half (class 0) and ones half (class 1): partner pixel fraction == partner weight."""
    b, h, w = 64, 16, 20
    x = torch.cat([torch.zeros(b // 2, 3, h, w), torch.ones(b // 2, 3, h, w)])
    targets = torch.zeros(b, 2)
    targets[: b // 2, 0] = 1.0
    targets[b // 2 :, 1] = 1.0
    mixed, t = cutmix(x, targets, p=1.0, generator=gen(11))
    frac_ones = mixed.mean(dim=(1, 2, 3))
    assert torch.allclose(t[: b // 2, 1], frac_ones[: b // 2], atol=1e-6)
    assert torch.allclose(t[b // 2 :, 0], 1.0 - frac_ones[b // 2 :], atol=1e-6)
    assert torch.allclose(t.sum(1), torch.ones(b), atol=1e-6)
    assert (frac_ones[: b // 2] > 0).any(), "some boxes must have been pasted"
    assert torch.equal(x, torch.cat([torch.zeros(b // 2, 3, h, w), torch.ones(b // 2, 3, h, w)]))


def test_cutmix_lambda_is_exact_kept_fraction():
    """Every image has its own value and class; each target weight = fraction of its pixels."""
    b, h, w = 32, 12, 12
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, h, w).contiguous()
    targets = torch.eye(b)
    mixed, t = cutmix(x, targets, p=0.7, generator=gen(4))
    counts = torch.stack([(mixed[:, 0] == k).float().mean(dim=(1, 2)) for k in range(b)], dim=1)
    assert torch.allclose(t, counts, atol=1e-6)
    assert torch.allclose(t.sum(1), torch.ones(b), atol=1e-6)
    assert (t.diagonal() < 1).any() and (t.diagonal() == 1).any()


def test_cutmix_p0_is_identity(floats):
    targets = torch.softmax(torch.randn(16, 5, generator=gen()), dim=1)
    mixed, t = cutmix(floats, targets, p=0.0, generator=gen())
    assert torch.equal(mixed, floats) and torch.equal(t, targets)
    assert torch.allclose(t.sum(1), torch.ones(16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_everything_runs_on_cuda_with_cuda_generator(images):
    x = images.cuda()
    g = lambda: torch.Generator(device="cuda").manual_seed(0)  # noqa: E731
    a = make_view(x, ViewSpec(size=24), g())
    assert a.is_cuda and torch.equal(a, make_view(x, ViewSpec(size=24), g()))
    assert pad_crop_flip(x, generator=g()).is_cuda
    mixed, t = cutmix(a, torch.eye(16, device="cuda"), generator=g())
    assert mixed.is_cuda and torch.allclose(t.sum(1), torch.ones(16, device="cuda"))
    x4, labels = rotate_four(a)
    assert x4.is_cuda and labels.is_cuda


# --------------------------------------------------------------------------- benchmark


@pytest.mark.slow
def test_benchmark_smoke():
    from benchmark_cli import benchmark_result

    result = benchmark_result("bench_augment", "--smoke")
    # --smoke promises one thread in one process (no DataLoader workers)
    assert (result["threads"], result["workers"], result["device"]) == (1, 0, "cpu")
    base, batched = result["baseline_images_per_s"], result["batched_images_per_s"]
    # the ratio is batched / baseline (rates rounded to 0.1, the ratio to 0.01)
    low, high = (batched - 0.05) / (base + 0.05) - 0.005, (batched + 0.05) / (base - 0.05) + 0.005
    assert low <= result["ratio"] <= high, result
    # the rate and the ms per batch come from the same timed batches (every one full, the
    # warm-up batch excluded from both): rate x seconds per batch = images per batch
    per_batch = batched * result["make_view_ms_per_batch"] / 1e3
    slack = 0.0005 / result["make_view_ms_per_batch"] + 0.05 / batched
    assert per_batch == pytest.approx(result["batch_size"], rel=slack + 1e-6), result


def test_blur_and_solarize_views():
    from bowflow.augment import ViewSpec, blur_sigma_px, gaussian_blur, make_view, make_views, scaled_size, solarize

    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    assert torch.equal(gaussian_blur(x, 0.0, generator=g), x)
    blurred = gaussian_blur(x, 1.0, (1.5, 2.0), generator=g)
    assert torch.allclose(blurred.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=2e-2)
    assert blurred.diff(dim=3).abs().mean() < 0.6 * x.diff(dim=3).abs().mean()  # high frequencies damped
    assert torch.equal(solarize(x, 0.0, generator=g), x)
    s = solarize(x, 1.0, generator=g)
    assert torch.equal(s, torch.where(x >= 0.5, 1 - x, x))
    # Views without blur/solarize draw exactly the random numbers they drew before.
    images = (x * 255).to(torch.uint8)
    plain = make_view(images, ViewSpec(32), torch.Generator().manual_seed(3))
    explicit = make_view(images, ViewSpec(32, blur_p=0.0, solarize_p=0.0), torch.Generator().manual_seed(3))
    assert torch.equal(plain, explicit)
    views = make_views(
        images,
        [ViewSpec(32, blur_p=1.0), ViewSpec(scaled_size(32, 3 / 7), solarize_p=0.2)],
        torch.Generator().manual_seed(3),
    )
    assert [v.shape[-1] for v in views] == [32, 14]
    # Each view is make_view's pipeline with the blur last, at the sigma scaled to its size,
    # the views drawn one after the other from the one generator (not the same draws twice).
    g = torch.Generator().manual_seed(3)
    first = gaussian_blur(make_view(images, ViewSpec(32), g), 1.0, blur_sigma_px((0.1, 2.0), 32), generator=g)
    second = make_view(images, ViewSpec(scaled_size(32, 3 / 7), solarize_p=0.2), g)
    assert torch.equal(views[0], first) and torch.equal(views[1], second)
    assert scaled_size(8, 3 / 7) == 4
