"""How a decoded image is brought to one size, so that a split's images share one array.

Three ways, one `Fit` each, chosen where a split is opened and recorded in its cache's key:
- `COVER`: resized so it covers the size, then centre-cropped (torchvision's Resize + CenterCrop);
- `WITHIN`: shrunk, keeping its aspect ratio, to fit within the size and set on a canvas of it
  (training at each image's own aspect ratio: nothing is cropped away before the augmentation);
- `whole(interpolation)`: the whole image resized to the size, aspect ratio not kept: how every
  command feeds a model at test time (`vitkit.data.model_input`), as the paper's code does and
  as timm's eval transform does with crop_pct=1.0, crop_mode='squash'.
All three resample with Pillow, which widens its filter when shrinking (antialiased).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from vitkit.models.preprocessing import Interpolation

FitMode = Literal["cover", "within", "whole"]
PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class Fit:
    """One way to bring an image to a size (H, W); see the module docstring."""

    mode: FitMode
    interpolation: Interpolation = "bilinear"  # the resize filter of "whole"

    def __call__(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        if self.mode == "cover":
            return fit_to_size(image, size)
        if self.mode == "within":
            return fit_within(image, size)
        return resize_whole(image, size, self.interpolation)

    @property
    def on_canvas(self) -> bool:
        """Whether images come out smaller than the size, to be set on a canvas of it."""
        return self.mode == "within"

    def cache_key(self) -> dict[str, object]:
        """What a decoded cache's key must add for this fit (nothing for COVER, the first one, so
        that caches built before the others keep their keys)."""
        if self.mode == "cover":
            return {}
        if self.mode == "within":
            return {"keep_aspect": True}
        return {"fit": "whole", "interpolation": self.interpolation}


COVER = Fit("cover")
WITHIN = Fit("within")


def whole(interpolation: Interpolation = "bilinear") -> Fit:
    """The whole image resized, as a model's `Preprocessing` with this interpolation asks."""
    return Fit("whole", interpolation)


def resize_whole(
    image: Image.Image, size: tuple[int, int], interpolation: Interpolation = "bilinear"
) -> Image.Image:
    """`image` resized to `size` (H, W) whole, aspect ratio not kept; untouched at that size.
    Pillow's resize, as torchvision's Resize and timm's and Hugging Face's image processors do it
    on a PIL image, so their clients see the pixels vitkit's evaluation sees."""
    height, width = size
    if image.size == (width, height):
        return image
    return image.resize((width, height), PIL_FILTERS[interpolation])


def fit_to_size(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize `image` (bilinear) so it covers `size` (H, W), keeping its aspect, then crop the
    center; images already of that size pass untouched."""
    height, width = size
    if image.size == (width, height):
        return image
    w, h = image.size
    if height * w >= width * h:  # height is the tighter side: it becomes `height` exactly
        resized = (max(width, int(w * height / h)), height)
    else:
        resized = (width, max(height, int(h * width / w)))
    image = image.resize(resized, Image.Resampling.BILINEAR)
    left = int(round((resized[0] - width) / 2))
    top = int(round((resized[1] - height) / 2))
    return image.crop((left, top, left + width, top + height))


def fit_within(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Shrink `image` (Pillow's bilinear, antialiased), keeping its aspect ratio, to the largest
    size within `size` (H, W); an image that fits already passes untouched (never enlarged: a
    token budget decides the size the model sees). Sizes are rounded as `ImageOps.contain` rounds
    them, but a side keeps at least one pixel: a 1x100000 strip would otherwise lose its short
    side and leave no image to set on the canvas."""
    height, width = size
    if image.width <= width and image.height <= height:
        return image
    if image.width * height > width * image.height:  # the width is the tighter side
        fitted = (width, max(1, round(image.height / image.width * width)))
    else:
        fitted = (max(1, round(image.width / image.height * height)), height)
    return image.resize(fitted, Image.Resampling.BILINEAR)


def on_canvas(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`pixels` (h, w, 3) at the top left of a (H, W, 3) canvas, its last row and column repeated
    over the rest (edge padding): bilinear sampling with a border clamp (`crop_and_resize`) of a
    box within the image then reads the same values from the canvas as from the image alone."""
    height, width = size
    h, w = pixels.shape[:2]
    return np.pad(pixels, ((0, height - h), (0, width - w), (0, 0)), mode="edge")
