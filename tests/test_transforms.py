"""Batched augmentation, checked against torchvision's per-image transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from vitkit.data.transforms import (
    AugmentConfig,
    TrainAugment,
    crop_and_resize,
    eval_batch,
    random_crop_boxes,
)


def _images(batch: int = 8, size: tuple[int, int] = (32, 32), seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, generator=generator)


def test_full_box_at_same_size_is_identity() -> None:
    images = _images().float()
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0]]).repeat(len(images), 1)
    assert (crop_and_resize(images, boxes, (32, 32)) - images).abs().max() <= 1e-4


def _scipy_crop(image: torch.Tensor, box: tuple[float, ...], out: tuple[int, int]) -> np.ndarray:
    """Bilinear sampling of one (C, H, W) image over `box` with scipy: output pixel (i, j) reads
    the continuous image at the centre of its cell, y1 + (i + 1/2) * box_h / out_h - 1/2 (pixel
    centres at integers in scipy's convention), clamped at the border."""
    x1, y1, x2, y2 = box
    rows = y1 + (np.arange(out[0]) + 0.5) * (y2 - y1) / out[0] - 0.5
    cols = x1 + (np.arange(out[1]) + 0.5) * (x2 - x1) / out[1] - 0.5
    grid_y, grid_x = np.meshgrid(rows, cols, indexing="ij")
    return np.stack(
        [
            scipy.ndimage.map_coordinates(channel, [grid_y, grid_x], order=1, mode="nearest")
            for channel in image.double().numpy()
        ]
    )


@pytest.mark.parametrize(
    "box,out", [((3.0, 5.0, 23.0, 22.0), (32, 32)), ((0.5, 8.25, 16.0, 31.0), (40, 24)),
                ((2.0, 1.5, 30.0, 29.0), (16, 16))]
)  # fmt: skip
def test_crop_matches_scipy_bilinear_sampling(box, out) -> None:
    images = _images(3).float()
    got = crop_and_resize(images, torch.tensor([box]).repeat(len(images), 1), out)
    for image, result in zip(images, got):
        assert np.abs(result.double().numpy() - _scipy_crop(image, box, out)).max() <= 1e-3


def test_enlarging_crop_matches_torchvision_inside_the_crop() -> None:
    """torchvision crops first, then resizes, clamping at the crop's edge; vitkit samples the
    image beyond it. Away from the one-pixel border the two agree exactly."""
    images = _images(4).float()
    left, top, width, height = 3, 5, 20, 17
    boxes = torch.tensor([[left, top, left + width, top + height]], dtype=torch.float32)
    got = crop_and_resize(images, boxes.repeat(len(images), 1), (32, 32))
    expected = TF.resized_crop(images, top, left, height, width, [32, 32], antialias=False)
    assert (got - expected)[..., 1:-1, 1:-1].abs().max() <= 1e-3


def test_halving_averages_2x2_blocks() -> None:
    images = _images(4, (64, 64)).float()
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0]]).repeat(4, 1)
    got = crop_and_resize(images, boxes, (32, 32))
    assert (got - torch.nn.functional.avg_pool2d(images, 2)).abs().max() <= 1e-3


def test_flip_mirrors_the_crop() -> None:
    images = _images(4).float()
    boxes = torch.tensor([[3.0, 5.0, 23.0, 22.0]]).repeat(4, 1)
    flip = torch.tensor([True, False, True, False])
    plain = crop_and_resize(images, boxes, (24, 24))
    flipped = crop_and_resize(images, boxes, (24, 24), flip=flip)
    expected = torch.where(flip[:, None, None, None], plain.flip(-1), plain)
    assert (flipped - expected).abs().max() <= 1e-3


def test_crop_boxes_follow_inception_crop_statistics() -> None:
    torch.manual_seed(0)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = random_crop_boxes(20_000, 32, 48, scale=scale, ratio=ratio, device=torch.device("cpu"))
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 48 + 1e-4).all() and (boxes[:, 3] <= 32 + 1e-4).all()
    aspect = width / height
    assert (aspect >= ratio[0] - 1e-4).all() and (aspect <= ratio[1] + 1e-4).all()
    area = (width * height / (32 * 48)).numpy()
    # torchvision's own sampler, as the independent reference for the area distribution
    reference = v2.RandomResizedCrop(size=8, scale=scale, ratio=ratio)
    image = torch.zeros(3, 32, 48)
    ref_area = []
    for _ in range(4000):
        params = reference.make_params([image])
        ref_area.append(params["height"] * params["width"] / (32 * 48))
    assert area.mean() == pytest.approx(sum(ref_area) / len(ref_area), abs=0.02)


def test_flip_only_gives_image_or_its_mirror() -> None:
    images = _images(64)
    augment = TrainAugment(
        AugmentConfig(resolution=(32, 32), num_classes=10, crop_scale=None, mean=(0,) * 3,
                      std=(1 / 255,) * 3)
    )  # fmt: skip
    torch.manual_seed(0)
    out, _ = augment(images, torch.zeros(64, dtype=torch.long))
    same = (out - images.float()).abs().amax(dim=(1, 2, 3)) <= 1e-3
    mirrored = (out - images.float().flip(-1)).abs().amax(dim=(1, 2, 3)) <= 1e-3
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_eval_batch_matches_torchvision_pipeline() -> None:
    images = _images(4, (48, 40))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = eval_batch(images, (32, 32), mean, std)
    pipeline = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Resize((32, 32), antialias=True),
         v2.Normalize(mean, std)]
    )  # fmt: skip
    expected = torch.stack([pipeline(image) for image in images])
    assert (got - expected).abs().max() <= 1e-5


def test_targets_are_probabilities() -> None:
    images, labels = _images(16), torch.arange(16) % 10
    plain = TrainAugment(AugmentConfig(resolution=(16, 16), num_classes=10))
    inputs, targets = plain(images, labels)
    assert inputs.shape == (16, 3, 16, 16) and inputs.dtype == torch.float32
    assert torch.equal(targets, torch.nn.functional.one_hot(labels, 10).float())

    smoothed = TrainAugment(AugmentConfig(resolution=(16, 16), num_classes=10, label_smoothing=0.1))
    _, targets = smoothed(images, labels)
    assert torch.allclose(targets.sum(1), torch.ones(16))
    assert targets.max().item() == pytest.approx(0.9 + 0.01)

    mixed = TrainAugment(
        AugmentConfig(resolution=(16, 16), num_classes=10, mixup_alpha=0.8, cutmix_alpha=1.0)
    )
    torch.manual_seed(0)
    _, targets = mixed(images, labels)
    assert torch.allclose(targets.sum(1), torch.ones(16))
    assert ((targets > 0).sum(1) == 2).all()  # every row mixes two classes


def test_randaugment_runs_per_image() -> None:
    augment = TrainAugment(
        AugmentConfig(resolution=(24, 24), num_classes=10, randaugment=(2, 9), crop_scale=None,
                      hflip=False)
    )  # fmt: skip
    images = _images(16, (24, 24))
    torch.manual_seed(0)
    out, _ = augment(images, torch.zeros(16, dtype=torch.long))
    changed = (out - eval_batch(images, (24, 24), (0.5,) * 3, (0.5,) * 3)).abs().amax((1, 2, 3))
    assert out.shape == (16, 3, 24, 24) and math.isfinite(out.sum().item())
    assert (changed > 1e-3).sum() >= 12  # only Identity twice leaves an image as it was
