"""Pixel operations on whole batches, on the device the batch is on (the GPU where there is one).

Normalisation, resizing, and the crop-and-resize sampler that the training
augmentation (data/augment.py) uses: one `grid_sample` call for a whole batch of boxes, with the
horizontal flip folded into its sampling grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitkit.models.preprocessing import Interpolation


def normalize(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], *, inplace: bool = False
) -> torch.Tensor:
    """Pixels in [0, 255] -> float32 (x / 255 - mean) / std, per channel, as one multiply-add
    (x * scale + shift); `inplace` overwrites a float32 input instead of copying it."""
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).float().view(1, -1, 1, 1).to(images.device)
    shift = (-torch.tensor(mean, dtype=torch.float64) / std_t).float().view(1, -1, 1, 1)
    if images.dtype != torch.float32:
        pixels = images.float()
    else:
        pixels = images if inplace else images.clone()
    return pixels.mul_(scale).add_(shift.to(images.device))


def resize(
    images: torch.Tensor, resolution: tuple[int, int], interpolation: Interpolation = "bilinear"
) -> torch.Tensor:
    """Whole images to `resolution` (float in, float out), antialiased; a no-op when they
    already have it: the training augmentation's resize when it takes no crops."""
    if tuple(images.shape[-2:]) == tuple(resolution):
        return images
    return F.interpolate(images, size=resolution, mode=interpolation, antialias=True)


def crop_and_resize(
    images: torch.Tensor,
    boxes: torch.Tensor,
    resolution: tuple[int, int],
    *,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resample box b of image b to `resolution` (mirrored where `flip[b]`), all images at once.

    One affine sampling grid per image and one `grid_sample` call: bilinear sampling of the
    continuous image (pixel centres at half-integers, so the box (0, 0, W, H) at the image's own
    size returns the image unchanged; halving averages 2x2 blocks). The flip is a negative x scale
    of the same grid, so it costs nothing. grid_sample runs on every CPU thread, where
    torchvision's roi_align runs on one.
    """
    batch, channels, height, width = images.shape
    x1, y1, x2, y2 = boxes.to(images.dtype).unbind(1)
    scale_x = (x2 - x1) / width
    if flip is not None:
        scale_x = torch.where(flip, -scale_x, scale_x)
    theta = torch.zeros(batch, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = scale_x
    theta[:, 0, 2] = (x1 + x2) / width - 1  # box centre in [-1, 1] coordinates
    theta[:, 1, 1] = (y2 - y1) / height
    theta[:, 1, 2] = (y1 + y2) / height - 1
    grid = F.affine_grid(theta, [batch, channels, *resolution], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
