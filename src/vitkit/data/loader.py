"""`ArrayLoader`: uint8 batches of an `ArrayDataset`, without worker processes.

A batch is one fancy-index into the (memory-mapped) image array: no decoding, no per-image Python,
no worker processes to start or feed. Shuffling is a seeded permutation per epoch, and ranks of a
distributed run take disjoint slices of it, so the same (seed, epoch) gives the same batches on any
machine, which exact resumption relies on.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from vitkit.data.arrays import ArrayDataset


class ArrayLoader:
    """Yields (images uint8 (B, C, H, W), labels int64 (B,)).

    Training (`shuffle=True, drop_last=True`): each epoch a permutation seeded by (seed, epoch)
    is cut into global batches of `batch_size * world_size`; rank r takes the r-th slice of
    `batch_size` images of each, so every rank gets the same number of batches, and the tail that
    fills no global batch is left for another epoch.

    Evaluation (`shuffle=False, drop_last=False`): rank r takes the r-th contiguous slice of the
    dataset, slices differing by at most one image, so that gathering the results of all ranks
    counts every image exactly once.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        *,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        if drop_last and len(dataset) < batch_size * world_size:
            raise ValueError(
                f"{len(dataset)} images do not fill one global batch of {batch_size} x "
                f"{world_size} ranks; lower the batch size"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pin_memory = pin_memory
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation (as DistributedSampler.set_epoch does)."""
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        """This rank's image indices for the current epoch, in the order they are served."""
        count = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(count)
        else:
            order = np.arange(count)
        if self.drop_last:
            global_batch = self.batch_size * self.world_size
            order = order[: count // global_batch * global_batch]
            return order.reshape(-1, self.world_size, self.batch_size)[:, self.rank].reshape(-1)
        bounds = np.linspace(0, count, self.world_size + 1).round().astype(int)
        return order[bounds[self.rank] : bounds[self.rank + 1]]

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        served = len(self.indices())
        return served // self.batch_size if self.drop_last else -(-served // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, first_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from number `first_batch` on: where a resumed run continues."""
        for chunk in self._chunks(first_batch):
            yield self._batch(chunk)

    def sized_batches_from(
        self, first_batch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """`iter_from`'s batches with each image's (h, w) on its canvas, (B, 2), for a dataset
        of images kept at their aspect ratios (`ArrayDataset.sizes`); None for the others."""
        for chunk in self._chunks(first_batch):
            yield *self._batch(chunk), self.dataset.sizes_of(chunk)

    def _batch(self, chunk: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.dataset.batch(chunk)
        if self.pin_memory:
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def _chunks(self, first_batch: int) -> Iterator[np.ndarray]:
        """The image indices of each batch from number `first_batch` on."""
        indices = self.indices()
        for start in range(first_batch * self.batch_size, len(indices), self.batch_size):
            chunk = indices[start : start + self.batch_size]
            if self.drop_last and len(chunk) < self.batch_size:
                return
            yield chunk
