"""The shared view schema: BYOL's asymmetric two-view recipe, declared once as params
fields that a method's Params inherit, so every method that uses it spells its keys the
same way in params.yaml (BYOL, Barlow Twins, VICReg).

A view: random resized crop (+ flip) -> colour jitter -> grayscale -> Gaussian blur ->
solarize. The two views differ only in their blur and solarize probabilities (view 1
always blurred, view 2 sometimes blurred and solarised). Defaults are BYOL's (Grill et
al. 2020, appendix B), adapted to 16-32 px images where each field's help says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bowflow import augment
from bowflow.checks import param


@dataclass
class TwoViews:
    """Params fields of the two-view recipe (a mixin: `class XParams(TwoViews, TrainParams)`)."""

    view_size: float = param(
        1.0,
        "view side as a fraction of the image side (paper: 224 of ~256 "
        "ImageNet px; on 16-32 px images the views keep the full size), "
        "at least 4 px",
        above=0,
        high=1,
    )
    crop_scale_min: float = param(
        0.2,
        "smallest crop area fraction (paper 0.08; 0.2 on 32 px images, "
        "as lightly's and solo-learn's CIFAR settings: an 8% crop of a "
        "32 px image is 9 px and shows too little)",
        above=0,
        high=1,
    )
    jitter: list[float] = param(
        [0.4, 0.4, 0.2, 0.1],
        "colour jitter strengths brightness, contrast, saturation, hue (turns, <= 0.5) (BYOL)",
        low=0,
    )
    jitter_p: float = param(0.8, "colour jitter probability (BYOL)", low=0, high=1)
    gray_p: float = param(0.2, "grayscale probability (BYOL)", low=0, high=1)
    blur_p: list[float] = param(
        [1.0, 0.1], "Gaussian blur probability of view 1 and view 2 (BYOL's asymmetric recipe)", low=0, high=1
    )
    blur_sigma: list[float] = param(
        [0.1, 2.0],
        "blur sigma range in px at 224 px, scaled to the view "
        "size (BYOL: 0.1-2.0); at 16-32 px sigma tops out at 0.14-0.29 "
        "px, a negligible blur, the same rule as every other method "
        "(augment.blur_sigma_px)",
        above=0,
    )
    solarize_p: list[float] = param(
        [0.0, 0.2], "solarize probability of view 1 and view 2 (BYOL's asymmetric recipe)", low=0, high=1
    )

    def validate(self) -> None:
        """The params' own checks (`super()`, e.g. TrainParams'), then what relates the view
        fields (their bounds are checked with every other field's)."""
        super().validate()  # type: ignore[misc]  # a mixin: the TrainParams it is mixed into has it
        if len(self.jitter) != 4 or self.jitter[3] > 0.5:
            raise ValueError(
                f"jitter must be 4 strengths >= 0 (brightness, contrast, saturation, hue <= 0.5), got {self.jitter}"
            )
        for name in ("blur_p", "solarize_p"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"{name} must give one probability per view (2), got {getattr(self, name)}")
        if len(self.blur_sigma) != 2 or not self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (low, high) with 0 < low <= high, got {self.blur_sigma}")


def view_size(recipe: TwoViews, image_size: int) -> int:
    """The views' side in pixels."""
    return augment.scaled_size(image_size, recipe.view_size)


def two_view(images: torch.Tensor, recipe: TwoViews, which: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> view `which` (0 or 1), float [B, 3, size, size] in [0, 1]."""
    x = augment.random_resized_crop(augment.to_float(images), size, (recipe.crop_scale_min, 1.0), generator=generator)
    brightness, contrast, saturation, hue = recipe.jitter
    x = augment.color_jitter(x, brightness, contrast, saturation, hue, recipe.jitter_p, generator=generator)
    x = augment.random_grayscale(x, recipe.gray_p, generator=generator)
    x = augment.gaussian_blur(
        x, recipe.blur_p[which], augment.blur_sigma_px(recipe.blur_sigma, size), generator=generator
    )
    return augment.solarize(x, recipe.solarize_p[which], generator=generator)
