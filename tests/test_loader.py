"""ArrayLoader: batches, epochs, and the split across distributed ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitkit.data.arrays import ArrayDataset
from vitkit.data.loader import ArrayLoader


def _dataset(count: int = 103) -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(
        images=rng.integers(0, 256, (count, 4, 6, 3), dtype=np.uint8),
        labels=np.arange(count) % 5,
        classes=tuple("abcde"),
    )


def test_batches_hold_the_right_images() -> None:
    dataset = _dataset()
    loader = ArrayLoader(dataset, batch_size=10, shuffle=True, drop_last=True, seed=3)
    seen = []
    for images, labels in loader:
        assert images.shape == (10, 3, 4, 6) and images.dtype == torch.uint8
        for image, label in zip(images, labels):
            index = int(
                np.flatnonzero(
                    (dataset.images == image.permute(1, 2, 0).numpy()).all(axis=(1, 2, 3))
                )[0]
            )
            assert dataset.labels[index] == label
            seen.append(index)
    assert len(loader) == 10 and len(seen) == len(set(seen)) == 100


def test_epochs_reshuffle_reproducibly() -> None:
    loader = ArrayLoader(_dataset(), batch_size=8, shuffle=True, drop_last=True, seed=1)
    first = loader.indices()
    loader.set_epoch(1)
    second = loader.indices()
    assert not np.array_equal(first, second)
    again = ArrayLoader(_dataset(), batch_size=8, shuffle=True, drop_last=True, seed=1)
    again.set_epoch(1)
    assert np.array_equal(again.indices(), second)


@pytest.mark.parametrize("world_size", [2, 3])
def test_training_ranks_are_disjoint_and_even(world_size: int) -> None:
    parts = [
        ArrayLoader(_dataset(), batch_size=8, shuffle=True, drop_last=True, seed=0, rank=rank,
                    world_size=world_size).indices()
        for rank in range(world_size)
    ]  # fmt: skip
    merged = np.concatenate(parts)
    assert len(set(map(len, parts))) == 1
    assert len(merged) == len(set(merged.tolist())) == 103 // (8 * world_size) * 8 * world_size
    # the ranks together serve exactly the single-process permutation, batch by batch
    single = ArrayLoader(
        _dataset(), batch_size=8 * world_size, shuffle=True, drop_last=True, seed=0
    )
    global_batches = single.indices().reshape(-1, 8 * world_size)
    for step, batch in enumerate(global_batches):
        together = np.concatenate([part[step * 8 : (step + 1) * 8] for part in parts])
        assert np.array_equal(together, batch)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_evaluation_counts_every_image_once(world_size: int) -> None:
    loaders = [
        ArrayLoader(_dataset(), batch_size=16, shuffle=False, drop_last=False, rank=rank,
                    world_size=world_size)
        for rank in range(world_size)
    ]  # fmt: skip
    labels = torch.cat([labels for loader in loaders for _, labels in loader])
    assert torch.equal(labels, torch.from_numpy(_dataset().labels))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="do not fill one global batch"):
        ArrayLoader(_dataset(10), batch_size=8, shuffle=True, drop_last=True, world_size=2)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        ArrayLoader(_dataset(), batch_size=8, shuffle=True, drop_last=True, rank=2, world_size=2)


def test_memory_mapped_batches_keep_the_requested_order(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = np.memmap(tmp_path / "images.u8", dtype=np.uint8, mode="w+", shape=(50, 4, 4, 3))
    images[:] = rng.integers(0, 256, images.shape, dtype=np.uint8)
    dataset = ArrayDataset(images=images, labels=np.arange(50) % 5, classes=tuple("abcde"))
    indices = np.array([42, 3, 17, 3, 0])
    batch, labels = dataset.batch(indices)
    np.testing.assert_array_equal(batch.permute(0, 2, 3, 1).numpy(), np.asarray(images)[indices])
    np.testing.assert_array_equal(labels.numpy(), indices % 5)
