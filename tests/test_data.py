"""Finding and decoding images, and the preprocessing of Google's checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import (
    DataError,
    Preprocessing,
    eval_transform,
    find_images,
    list_images,
    load_rgb,
)


def save_image(path: Path, size: tuple[int, int] = (20, 12), mode: str = "RGB", value: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(path)
    return path


def test_list_images_is_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    expected = [
        save_image(tmp_path / "a.png"),
        save_image(tmp_path / "b" / "c.JPG"),
        save_image(tmp_path / "b" / "d" / "e.jpeg"),
    ]
    (tmp_path / "notes.txt").write_text("not an image")
    assert list_images(tmp_path) == expected


def test_empty_folder_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images found") as error:
        list_images(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_find_images_expands_folders_and_rejects_missing_paths(tmp_path: Path) -> None:
    single = save_image(tmp_path / "single.png")
    in_folder = save_image(tmp_path / "folder" / "x.png")
    assert find_images([single, tmp_path / "folder"]) == [single, in_folder]
    with pytest.raises(DataError, match="missing.png"):
        find_images([tmp_path / "missing.png"])


def test_load_rgb_converts_to_rgb(tmp_path: Path) -> None:
    image = load_rgb(save_image(tmp_path / "gray.png", mode="L", value=7))
    assert image.mode == "RGB"
    assert image.size == (20, 12)
    assert image.getpixel((0, 0)) == (7, 7, 7)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_unreadable_images_are_named(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "broken.jpg"
    if kind == "garbage":
        path.write_bytes(b"this is not a jpeg")
    else:
        pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(DataError, match="cannot read the image") as error:
        load_rgb(path)
    assert str(path) in str(error.value)


def test_google_preprocessing_maps_pixels_to_minus_one_one() -> None:
    transform = eval_transform(Preprocessing.google(32))
    black = transform(Image.new("RGB", (32, 32), (0, 0, 0)))
    white = transform(Image.new("RGB", (32, 32), (255, 255, 255)))
    assert black.dtype == torch.float32
    assert torch.equal(black, torch.full((3, 32, 32), -1.0))
    assert torch.equal(white, torch.full((3, 32, 32), 1.0))


def test_google_preprocessing_is_vit_jax_normalisation() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    result = eval_transform(Preprocessing.google((16, 24)))(Image.fromarray(pixels))
    expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() - 127.5) / 127.5
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("resolution", [64, (48, 80)])
def test_resize_gives_the_model_resolution(resolution: int | tuple[int, int]) -> None:
    preprocessing = Preprocessing.google(resolution)
    tensor = eval_transform(preprocessing)(Image.new("RGB", (100, 30)))
    assert tensor.shape == (3, *preprocessing.resolution)


def test_preprocessing_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Preprocessing.google(224).resolution = (384, 384)  # type: ignore[misc]


def test_imagenet_preprocessing_uses_timms_statistics() -> None:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    preprocessing = Preprocessing.imagenet(224)
    assert preprocessing.mean == pytest.approx(IMAGENET_DEFAULT_MEAN)
    assert preprocessing.std == pytest.approx(IMAGENET_DEFAULT_STD)
    pixels = np.full((8, 8, 3), 255, np.uint8)
    result = eval_transform(preprocessing)(Image.fromarray(pixels))
    expected = (1 - torch.tensor(IMAGENET_DEFAULT_MEAN)) / torch.tensor(IMAGENET_DEFAULT_STD)
    assert torch.allclose(result[:, 0, 0], expected, atol=1e-6)
