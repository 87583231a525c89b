"""Every command feeds a model the same pixels (vitkit.data.model_input), and they are the pixels
the clients of the exports compute: timm's eval transform with crop_pct=1.0, crop_mode='squash'
and torchvision's Resize on a PIL image, run here as the independent references."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import timm.data
import torch
from PIL import Image
from torchvision.transforms import v2

from vitkit.data import ArrayDataset, eval_transform, open_for_model
from vitkit.data.model_input import at_resolution
from vitkit.models.preprocessing import Preprocessing

SIZES_WH = [(48, 40), (23, 61), (32, 32), (96, 24), (7, 9)]


def _image(size_wh: tuple[int, int], seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size_wh[::-1], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size_wh", SIZES_WH)
def test_the_input_is_timms_squash_transform(interpolation: str, size_wh: tuple[int, int]) -> None:
    imagenet = Preprocessing.imagenet((24, 32))
    preprocessing = dataclasses.replace(imagenet, interpolation=interpolation)
    timm_transform = timm.data.create_transform(
        input_size=(3, 24, 32), crop_pct=1.0, crop_mode="squash", interpolation=interpolation,
        mean=preprocessing.mean, std=preprocessing.std,
    )  # fmt: skip
    image = _image(size_wh, seed=sum(size_wh))
    got = eval_transform(preprocessing)(image)
    expected = timm_transform(image)
    assert got.shape == expected.shape == (3, 24, 32)
    assert (got - expected).abs().max() <= 1e-5


def test_a_folder_of_mixed_sizes_and_modes_is_read_at_the_resolution(tmp_path: Path) -> None:
    """Each image of a split of mixed sizes and colour modes comes out as torchvision's Resize of
    the RGB image (PIL), in the folder's sorted order."""
    preprocessing = Preprocessing.google(16)
    expected = {}
    for index, (size_wh, mode) in enumerate(zip(SIZES_WH, ["RGB", "L", "RGBA", "CMYK", "RGB"])):
        name = ("a", "b c", "Kätzchen")[index % 3]
        folder = tmp_path / "data" / "test" / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index}.{'jpg' if mode == 'CMYK' else 'png'}"
        _image(size_wh, seed=index).convert(mode).save(path)
        rgb = Image.open(path).convert("RGB")
        expected[path] = np.asarray(v2.Resize((16, 16), antialias=True)(rgb))
    dataset = open_for_model(tmp_path / "data", "test", preprocessing, cache_dir=tmp_path / "c")
    assert dataset.classes == ("Kätzchen", "a", "b c")  # sorted, as torchvision sorts
    assert dataset.images.shape == (len(SIZES_WH), 16, 16, 3)
    in_order = sorted(expected, key=lambda path: (dataset.classes.index(path.parent.name), path))
    for got, path in zip(dataset.images, in_order):
        np.testing.assert_array_equal(got, expected[path])


def test_decoded_arrays_of_another_size_are_resized_the_same_way() -> None:
    """CIFAR's 32x32 arrays reach a 24 px model as torchvision's Resize of each image."""
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    dataset = ArrayDataset(images=images, labels=np.arange(5) % 2, classes=("x", "y"))
    resized = at_resolution(dataset, Preprocessing.google(24))
    for got, image in zip(resized.images, images):
        expected = v2.Resize((24, 24), antialias=True)(Image.fromarray(image))
        np.testing.assert_array_equal(got, np.asarray(expected))
    assert at_resolution(resized, Preprocessing.google(24)) is resized
    assert torch.equal(torch.from_numpy(resized.labels), torch.from_numpy(dataset.labels))
