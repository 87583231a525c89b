"""How an image reaches a model at test time, in every command and every export's client.

The model's `Preprocessing` record decides it: the whole image resized to the record's resolution
with its interpolation (Pillow's resize, `fitting.resize_whole`), nothing cropped, then
normalised with its mean and std. It is the paper's test-time pipeline (vit_jax resizes to
image_size) and the resize timm's eval transform does with crop_pct=1.0, crop_mode='squash',
torchvision's Resize does on a PIL image and Hugging Face's image processors do: so the images
of a split are the same pixels in training's evaluation, `vitkit eval`, `fewshot`, `figures`,
`classify` and the exports' clients, and one model gives one accuracy.

A folder's split is decoded once at the resolution (the decode-once cache, keyed by it); a
decoded dataset of another size (CIFAR's 32x32 arrays) is resized image by image with the same
resize.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from vitkit.data.arrays import ArrayDataset
from vitkit.data.fitting import resize_whole
from vitkit.data.transforms import normalize
from vitkit.models.preprocessing import Preprocessing


def model_pixels(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """An RGB image as the (H, W, 3) uint8 pixels the model sees, at the record's resolution."""
    resized = resize_whole(image, preprocessing.resolution, preprocessing.interpolation)
    return np.asarray(resized)


def eval_batch(pixels: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 (B, 3, H, W) at the record's resolution (`model_pixels`, `at_resolution`) -> the
    model's float32 input, on the batch's device."""
    if tuple(pixels.shape[-2:]) != tuple(preprocessing.resolution):
        raise ValueError(
            f"images of {tuple(pixels.shape[-2:])} px: resize them to the model's "
            f"{preprocessing.resolution} first (at_resolution, model_pixels)"
        )
    return normalize(pixels, preprocessing.mean, preprocessing.std)


def eval_transform(preprocessing: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised float tensor (3, H, W) at the record's resolution: one image
    through the path every command takes (`model_pixels`, then `eval_batch`)."""

    def transform(image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(model_pixels(image.convert("RGB"), preprocessing).copy())
        return eval_batch(pixels.permute(2, 0, 1)[None], preprocessing)[0]

    return transform


def at_resolution(dataset: ArrayDataset, preprocessing: Preprocessing) -> ArrayDataset:
    """`dataset` with every image resized whole to the record's resolution (each image's own
    region where it sits on a canvas); the dataset itself when it has that size already."""
    if dataset.image_size == tuple(preprocessing.resolution) and dataset.sizes is None:
        return dataset
    images = pixels_at_resolution(dataset.images, preprocessing, sizes=dataset.sizes)
    return ArrayDataset(images=images, labels=dataset.labels.astype(np.int64),
                        classes=dataset.classes)  # fmt: skip


def pixels_at_resolution(
    images: np.ndarray, preprocessing: Preprocessing, *, sizes: np.ndarray | None = None
) -> np.ndarray:
    """(N, H, W, 3) uint8 images resized whole (`model_pixels`) to the record's resolution, each
    its top-left `sizes[i]` region where `sizes` is given; the array itself when it needs no
    resize."""
    if images.shape[1:3] == tuple(preprocessing.resolution) and sizes is None:
        return images
    resized = np.empty((len(images), *preprocessing.resolution, 3), dtype=np.uint8)
    for index, pixels in enumerate(images):
        if sizes is not None:
            height, width = sizes[index]
            pixels = pixels[:height, :width]
        resized[index] = model_pixels(Image.fromarray(np.ascontiguousarray(pixels)), preprocessing)
    return resized
