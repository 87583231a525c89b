"""Augmentation of whole uint8 batches, on the device the batch is on (the GPU where there is one).

Decoding and per-image PIL transforms make the loader, not the model, set the pace of a small ViT
on a small machine. Here a batch of uint8 images (B, C, H, W), read from the array cache, is
cropped, flipped, resized and normalised with a handful of batched tensor operations:

- Inception crop ("random resized crop", Szegedy et al. 2015; the paper's and AugReg's training
  augmentation): per image a box of random area fraction in `crop_scale` and aspect ratio in
  `crop_ratio`, resampled bilinearly to the model's resolution by one `grid_sample` call for the
  whole batch (no antialiasing: crops shrink by at most the image/resolution ratio, and exactly
  halving averages 2x2 blocks).
- Horizontal flip with probability 1/2 per image, folded into the crop's sampling grid.
- Optional RandAugment (Cubuk et al. 2020; torchvision's implementation, applied per image so that
  every image draws its own operations), and Mixup / CutMix (torchvision's, one draw per batch).

Training targets are always class probabilities (B, K): one-hot, smoothed or mixed, so the loss
has one form whatever the options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """What the training augmentation does; everything but the output is optional."""

    resolution: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    # Inception crop; None resizes the whole image instead.
    crop_scale: tuple[float, float] | None = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    randaugment: tuple[int, int] | None = None  # (number of ops, magnitude), e.g. (2, 10)
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0


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


def resize(images: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
    """Whole images to `resolution` (float in, float out), antialiased bilinear; a no-op when
    they already have it. The paper's test-time pipeline: resize, no crop."""
    if tuple(images.shape[-2:]) == tuple(resolution):
        return images
    return F.interpolate(images, size=resolution, mode="bilinear", antialias=True)


def eval_batch(
    images: torch.Tensor,
    resolution: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> the model's normalised float input at `resolution`."""
    return normalize(resize(images.float(), resolution), mean, std)


def random_crop_boxes(
    batch: int,
    height: int,
    width: int,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device,
    attempts: int = 10,
) -> torch.Tensor:
    """Inception-crop boxes (B, 4) as (x1, y1, x2, y2) in pixel coordinates.

    Like torchvision's RandomResizedCrop: up to `attempts` draws of area fraction (uniform in
    `scale`) and aspect ratio (log-uniform in `ratio`), the first that fits is kept; an image with
    no fitting draw gets the largest centred box whose aspect ratio lies in `ratio`. Boxes are
    continuous (sub-pixel); `crop_and_resize` samples them exactly.
    """
    area = height * width
    fractions = torch.empty(batch, attempts, device=device).uniform_(*scale)
    log_ratios = torch.empty(batch, attempts, device=device).uniform_(*map(math.log, ratio))
    aspect = log_ratios.exp()
    box_w = (fractions * area * aspect).sqrt()
    box_h = (fractions * area / aspect).sqrt()
    fits = (box_w <= width) & (box_h <= height)
    first = fits.float().argmax(dim=1)  # index of the first fitting attempt (0 when none fits)
    rows = torch.arange(batch, device=device)
    box_w, box_h = box_w[rows, first], box_h[rows, first]

    # Fallback: the whole image, clamped to the allowed aspect ratios, centred.
    image_ratio = width / height
    fallback_w, fallback_h = float(width), float(height)
    if image_ratio < ratio[0]:
        fallback_h = width / ratio[0]
    elif image_ratio > ratio[1]:
        fallback_w = height * ratio[1]
    none_fit = ~fits.any(dim=1)
    box_w = torch.where(none_fit, fallback_w, box_w)
    box_h = torch.where(none_fit, fallback_h, box_h)

    x1 = torch.rand(batch, device=device) * (width - box_w)
    y1 = torch.rand(batch, device=device) * (height - box_h)
    x1 = torch.where(none_fit, (width - box_w) / 2, x1)
    y1 = torch.where(none_fit, (height - box_h) / 2, y1)
    return torch.stack([x1, y1, x1 + box_w, y1 + box_h], dim=1)


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


class TrainAugment:
    """uint8 images (B, C, H, W) and int labels (B,) -> normalised float images at the model's
    resolution and class probabilities (B, num_classes)."""

    def __init__(self, config: AugmentConfig):
        self.config = config
        self._randaugment = None
        if config.randaugment:
            from torchvision.transforms import v2

            num_ops, magnitude = config.randaugment
            self._randaugment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
        self._mix = self._build_mix(config)

    @staticmethod
    def _build_mix(config: AugmentConfig):
        from torchvision.transforms import v2

        mixes = []
        if config.mixup_alpha > 0:
            mixes.append(v2.MixUp(alpha=config.mixup_alpha, num_classes=config.num_classes))
        if config.cutmix_alpha > 0:
            mixes.append(v2.CutMix(alpha=config.cutmix_alpha, num_classes=config.num_classes))
        if not mixes:
            return None
        return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        batch, _, height, width = images.shape
        flip = torch.rand(batch, device=images.device) < 0.5 if config.hflip else None
        pixels = images.float()
        if config.crop_scale is not None:
            boxes = random_crop_boxes(
                batch,
                height,
                width,
                scale=config.crop_scale,
                ratio=config.crop_ratio,
                device=images.device,
            )
            pixels = crop_and_resize(pixels, boxes, config.resolution, flip=flip)
        else:
            pixels = resize(pixels, config.resolution)
            if flip is not None:
                pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
        if self._randaugment is not None:
            as_uint8 = pixels.round().clamp(0, 255).to(torch.uint8)
            pixels = torch.stack([self._randaugment(image) for image in as_uint8]).float()

        inputs = normalize(pixels, config.mean, config.std, inplace=True)  # pixels is ours
        targets = F.one_hot(labels.to(images.device), config.num_classes).float()
        if self._mix is not None:
            # torchvision mixes integer labels into probabilities; smoothing is applied after.
            inputs, targets = self._mix(inputs, labels.to(images.device))
        if config.label_smoothing:
            targets = targets * (1 - config.label_smoothing) + config.label_smoothing / (
                config.num_classes
            )
        return inputs, targets
