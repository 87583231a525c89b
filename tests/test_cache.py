"""The decode-once cache: built once, memory-mapped, atomic, and rebuilt when damaged."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from vitkit.data.arrays import ArrayDataset
from vitkit.data.cache import cache_path, cached_dataset
from vitkit.data.images import DataError

KEY = {"source": {"path": "/data/toy"}, "split": "train", "image_size": [4, 6]}
CLASSES = ("a", "b", "c")


def toy_images(n: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 4, 6, 3), dtype=np.uint8), np.arange(n) % len(CLASSES)


@dataclass
class ToyStream:
    """An `ImageStream` over arrays; `die_after` simulates a process killed mid-build."""

    images: np.ndarray
    labels: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)
    die_after: int | None = None
    classes: tuple[str, ...] = CLASSES
    sizes: list[tuple[int, int]] | None = None
    image_shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        for index, (image, label) in enumerate(zip(self.images, self.labels)):
            if index == self.die_after:
                os._exit(3)  # no cleanup runs, as with SIGKILL
            yield image, int(label)


class Builder:
    """Counts how often the cache asks for the images."""

    def __init__(self, **stream_options) -> None:
        self.calls = 0
        self.images, self.labels = toy_images()
        self.options = stream_options

    def __call__(self) -> ToyStream:
        self.calls += 1
        return ToyStream(self.images, self.labels, **self.options)


def test_built_once_then_memory_mapped(tmp_path: Path) -> None:
    build = Builder(skipped={"x.jpg": "cannot read the image"})
    first = cached_dataset(KEY, build, tmp_path)
    start = time.perf_counter()
    second = cached_dataset(KEY, build, tmp_path)
    assert time.perf_counter() - start < 1.0
    assert build.calls == 1
    for dataset in (first, second):
        assert isinstance(dataset.images, np.memmap) and dataset.images.mode == "r"
        np.testing.assert_array_equal(dataset.images, build.images)
        np.testing.assert_array_equal(dataset.labels, build.labels)
        assert dataset.labels.dtype == np.int64
        assert dataset.classes == CLASSES
    directory = cache_path(KEY, tmp_path)
    assert sorted(path.name for path in directory.iterdir()) == [
        "images.u8",
        "labels.npy",
        "meta.json",
    ]
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["shape"] == [7, 4, 6, 3]
    assert meta["skipped"] == {"x.jpg": "cannot read the image"}
    assert meta["key"]["source"] == KEY["source"]


def test_another_key_is_another_cache(tmp_path: Path) -> None:
    build = Builder()
    cached_dataset(KEY, build, tmp_path)
    cached_dataset({**KEY, "split": "test"}, build, tmp_path)
    assert build.calls == 2
    assert cache_path(KEY, tmp_path) != cache_path({**KEY, "split": "test"}, tmp_path)


def flip_a_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: flip_a_byte(d / "images.u8", 100), id="flipped-pixel"),
        pytest.param(lambda d: flip_a_byte(d / "labels.npy", -1), id="flipped-label"),
        pytest.param(lambda d: os.truncate(d / "images.u8", 50), id="short-images"),
        pytest.param(lambda d: (d / "meta.json").write_text("{not json"), id="garbled-meta"),
        pytest.param(lambda d: (d / "meta.json").unlink(), id="missing-meta"),
        pytest.param(lambda d: (d / "labels.npy").unlink(), id="missing-labels"),
    ],
)
def test_damaged_cache_warns_and_rebuilds(tmp_path: Path, damage) -> None:
    build = Builder()
    cached_dataset(KEY, build, tmp_path)
    damage(cache_path(KEY, tmp_path))
    with pytest.warns(UserWarning, match="cache corrupt.*rebuilding"):
        dataset = cached_dataset(KEY, build, tmp_path)
    assert build.calls == 2
    np.testing.assert_array_equal(dataset.images, build.images)
    np.testing.assert_array_equal(dataset.labels, build.labels)


# Sizes of the 7 toy images on their 4x6 canvases (images kept at their own aspect ratios).
SIZES = [(4, 6), (2, 6), (4, 3), (1, 1), (3, 6), (4, 5), (4, 6)]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(None, id="intact"),
        pytest.param(lambda d: flip_a_byte(d / "sizes.npy", -1), id="flipped-size"),
        pytest.param(lambda d: (d / "sizes.npy").unlink(), id="missing-sizes"),
    ],
)
def test_image_sizes_are_kept_and_checked(tmp_path: Path, damage) -> None:
    """A stream with each image's size on its canvas caches them in sizes.npy (checksummed as
    the rest), and the dataset hands them back; a damaged sizes.npy is rebuilt, never used."""
    build = Builder(sizes=SIZES)
    cached_dataset(KEY, build, tmp_path)
    if damage is not None:
        damage(cache_path(KEY, tmp_path))
        with pytest.warns(UserWarning, match="cache corrupt.*rebuilding"):
            cached_dataset(KEY, build, tmp_path)
    dataset = cached_dataset(KEY, build, tmp_path)
    assert build.calls == (1 if damage is None else 2)
    np.testing.assert_array_equal(dataset.sizes, SIZES)
    np.testing.assert_array_equal(dataset.sizes_of(np.array([3, 1])).numpy(), [(1, 1), (2, 6)])
    np.testing.assert_array_equal(dataset.subset(np.array([2])).sizes, [(4, 3)])


@pytest.mark.parametrize("sizes", [[(5, 6)] * 7, [(0, 2)] * 7, [(4, 6)] * 6])
def test_sizes_outside_their_canvas_are_refused(sizes: list[tuple[int, int]]) -> None:
    images, labels = toy_images()
    with pytest.raises(ValueError, match="sizes must be"):
        ArrayDataset(images=images, labels=labels, classes=CLASSES, sizes=np.array(sizes))


def test_unverified_open_still_checks_the_size(tmp_path: Path) -> None:
    build = Builder()
    cached_dataset(KEY, build, tmp_path)
    os.truncate(cache_path(KEY, tmp_path) / "images.u8", 10)
    with pytest.warns(UserWarning, match="cache corrupt"):
        dataset = cached_dataset(KEY, build, tmp_path, verify=False)
    np.testing.assert_array_equal(dataset.images, build.images)


def build_and_die(cache_dir: Path) -> None:
    cached_dataset(KEY, Builder(die_after=4), cache_dir)


@pytest.mark.parametrize(
    "next_key", [KEY, {**KEY, "split": "test"}], ids=["same-key", "another-key"]
)
def test_killed_build_leaves_no_cache_and_its_leftovers_are_cleaned(
    tmp_path: Path, next_key: dict
) -> None:
    """What a killed build leaves (gigabytes, for a large cache) is removed by the next build in
    the cache dir, of its key or any other."""
    child = multiprocessing.get_context("fork").Process(target=build_and_die, args=(tmp_path,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 3
    leftovers = list(tmp_path.glob(".*-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "images.u8").is_file()
    assert not cache_path(KEY, tmp_path).exists()

    build = Builder()
    dataset = cached_dataset(next_key, build, tmp_path)
    assert build.calls == 1
    np.testing.assert_array_equal(dataset.images, build.images)
    assert not any(path.exists() for path in leftovers)


def test_the_partial_folder_of_a_live_build_is_kept(tmp_path: Path) -> None:
    """A partial folder whose key's lock is held is another process's build in progress; hidden
    folders the cache did not make are never touched."""
    building = cache_path({**KEY, "split": "test"}, tmp_path)
    partial = tmp_path / f".{building.name}-a1b2c3d4"
    foreign = [tmp_path / ".config-x", tmp_path / f".{building.name}"]
    for folder in (partial, *foreign):
        folder.mkdir()
    with building.with_name(building.name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as the process building it holds it
        cached_dataset(KEY, Builder(), tmp_path)
        assert partial.is_dir()
    cached_dataset({**KEY, "split": "val"}, Builder(), tmp_path)
    assert not partial.exists()
    assert all(folder.is_dir() for folder in foreign)


def test_failed_build_cleans_up(tmp_path: Path) -> None:
    def failing() -> ToyStream:
        images, labels = toy_images()
        return ToyStream(images.astype(np.float32), labels)

    with pytest.raises(ValueError, match="float32"):
        cached_dataset(KEY, failing, tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == [cache_path(KEY, tmp_path).name + ".lock"]


def test_nothing_to_cache_is_a_data_error(tmp_path: Path) -> None:
    images, labels = toy_images(0)
    with pytest.raises(DataError, match="nothing to cache"):
        cached_dataset(KEY, lambda: ToyStream(images, labels), tmp_path)
