"""Batched augmentation, checked against torchvision's per-image transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from vitkit.data.augment import CROP_ATTEMPTS, AugmentConfig, TrainAugment, random_crop_boxes
from vitkit.data.model_input import eval_batch
from vitkit.data.transforms import crop_and_resize
from vitkit.models.preprocessing import Preprocessing


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
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    uniforms = torch.rand(20_000, 2 * CROP_ATTEMPTS + 2, generator=torch.Generator().manual_seed(0))
    boxes = random_crop_boxes(uniforms, 32, 48, scale=scale, ratio=ratio)
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
    out, _ = augment(images, torch.zeros(64, dtype=torch.long), key=(0,))
    same = (out - images.float()).abs().amax(dim=(1, 2, 3)) <= 1e-3
    mirrored = (out - images.float().flip(-1)).abs().amax(dim=(1, 2, 3)) <= 1e-3
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_targets_are_probabilities() -> None:
    images, labels = _images(16), torch.arange(16) % 10
    plain = TrainAugment(AugmentConfig(resolution=(16, 16), num_classes=10))
    inputs, targets = plain(images, labels, key=(0,))
    assert inputs.shape == (16, 3, 16, 16) and inputs.dtype == torch.float32
    assert torch.equal(targets, torch.nn.functional.one_hot(labels, 10).float())

    smoothed = TrainAugment(AugmentConfig(resolution=(16, 16), num_classes=10, label_smoothing=0.1))
    _, targets = smoothed(images, labels, key=(0,))
    assert torch.allclose(targets.sum(1), torch.ones(16))
    assert targets.max().item() == pytest.approx(0.9 + 0.01)

    mixed = TrainAugment(
        AugmentConfig(resolution=(16, 16), num_classes=10, mixup_alpha=0.8, cutmix_alpha=1.0)
    )
    _, targets = mixed(images, labels, key=(0,))
    assert torch.allclose(targets.sum(1), torch.ones(16))
    assert ((targets > 0).sum(1) == 2).all()  # every row mixes two classes


def test_randaugment_runs_per_image() -> None:
    augment = TrainAugment(
        AugmentConfig(resolution=(24, 24), num_classes=10, randaugment=(2, 9), crop_scale=None,
                      hflip=False)
    )  # fmt: skip
    images = _images(16, (24, 24))
    out, _ = augment(images, torch.zeros(16, dtype=torch.long), key=(0,))
    changed = (out - eval_batch(images, Preprocessing.google(24))).abs().amax((1, 2, 3))
    assert out.shape == (16, 3, 24, 24) and math.isfinite(out.sum().item())
    assert (changed > 1e-3).sum() >= 12  # only Identity twice leaves an image as it was


def _every_augmentation(**fields: float) -> TrainAugment:
    return TrainAugment(
        AugmentConfig(resolution=(16, 16), num_classes=10, randaugment=(2, 9), **fields)
    )


def test_any_slicing_of_a_global_batch_draws_the_same() -> None:
    """Two processes holding halves of a global batch augment each image as one process holding
    it all: crops, flips, RandAugment and mixing depend on the key and the image's global index."""
    augment = _every_augmentation(mixup_alpha=0.8, cutmix_alpha=1.0)
    images, labels = _images(8), torch.arange(8)
    for step in range(6):  # both kinds of mixing come up
        whole = augment(images, labels, key=(7, step))
        halves = [augment(images[i : i + 4], labels[i : i + 4], key=(7, step), first=i, total=8)
                  for i in (0, 4)]  # fmt: skip
        for got, expected in zip((torch.cat(parts) for parts in zip(*halves)), whole):
            assert torch.equal(got, expected)
    other = augment(images, labels, key=(7, 99))
    assert not torch.equal(other[0], whole[0])  # another key, other draws


def _unmixed_and_mixed(alpha: dict[str, float], key: tuple[int, ...]):
    images, labels = _images(8), torch.arange(8)
    plain = TrainAugment(AugmentConfig(resolution=(16, 16), num_classes=10))
    mixed = TrainAugment(AugmentConfig(resolution=(16, 16), num_classes=10, **alpha))
    inputs, _ = plain(images, labels, key=key)
    got_inputs, got_targets = mixed(images, labels, key=key)
    return inputs.numpy().astype(np.float64), got_inputs.numpy(), got_targets.numpy()


def test_mixup_weights_each_image_and_its_partner_alike() -> None:
    """Checked with numpy: image i becomes w x_i + (1 - w) x_(i xor 1), its target w on its own
    class and 1 - w on the partner's, and w is Beta(alpha, alpha) distributed (scipy's KS test)."""
    weights = []
    for step in range(300):
        inputs, got, targets = _unmixed_and_mixed({"mixup_alpha": 0.4}, key=(3, step))
        weight = targets[0, 0]
        partner = np.arange(8) ^ 1
        np.testing.assert_allclose(got, weight * inputs + (1 - weight) * inputs[partner],
                                   atol=1e-4)  # fmt: skip
        expected = weight * np.eye(10)[:8] + (1 - weight) * np.eye(10)[partner]
        np.testing.assert_allclose(targets, expected, atol=1e-6)
        weights.append(weight)
    assert scipy.stats.kstest(weights, scipy.stats.beta(0.4, 0.4).cdf).pvalue > 0.01


def test_cutmix_pastes_one_box_and_weights_targets_by_its_area() -> None:
    """Checked with numpy: the pixels that differ from the unmixed image form one filled
    rectangle, taken from the partner, and the target gives the partner's class its share."""
    boxes = 0
    for step in range(40):
        inputs, got, targets = _unmixed_and_mixed({"cutmix_alpha": 1.0}, key=(5, step))
        partner = np.arange(8) ^ 1
        own = np.isclose(got, inputs, atol=1e-5).all(axis=1)  # (B, H, W)
        assert (own | np.isclose(got, inputs[partner], atol=1e-5).all(axis=1)).all()
        rows, cols = np.nonzero(~own[0])  # image 0, whose partner is image 1 (class 1)
        area = 0
        if len(rows):
            boxes += 1
            area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert len(rows) == area  # one filled rectangle
        np.testing.assert_allclose(targets[0, :2], [1 - area / 256, area / 256], atol=1e-6)
        np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-6)
    assert boxes > 20
