"""`ArrayDataset`: a decoded image dataset as one uint8 array, in memory or memory-mapped.

Every map-style source ends here (CIFAR's batches directly, image folders and tar archives through
the decode-once cache), so training reads batches by fancy-indexing one array and never decodes an
image twice. Augmentation then runs on whole uint8 batches (`vitkit.data.transforms`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass(frozen=True, eq=False)
class ArrayDataset(Dataset):
    """images (N, H, W, 3) uint8, labels (N,) int64, and the class names labels index into.

    sizes (N, 2), when set: image i is only its top-left sizes[i] = (h, w) pixels, the rest of
    its (H, W) canvas edge padding; images of different sizes and aspect ratios share one array
    so (an image folder decoded with keep_aspect). None: every image fills its (H, W).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    sizes: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise ValueError(
                f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}"
            )
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(
            self.classes
        ):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}) (the class list)")
        if self.sizes is not None:
            height, width = self.images.shape[1:3]
            if self.sizes.shape != (len(self.images), 2) or not (
                len(self.sizes) == 0
                or (1 <= self.sizes.min() and (self.sizes <= (height, width)).all())
            ):
                raise ValueError(
                    f"sizes must be (N, 2) image sizes within the {height}x{width} canvas, got "
                    f"shape {tuple(self.sizes.shape)}"
                )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """One image as a (3, H, W) uint8 tensor, and its label."""
        image = torch.from_numpy(np.array(self.images[index]))  # a copy: the cache is read-only
        return image.permute(2, 0, 1), int(self.labels[index])

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) uint8 and labels (B,) int64 for `indices`, in one gather."""
        if isinstance(self.images, np.memmap):  # sorted reads are sequential on disk
            order = np.sort(indices)
            rows = self.images[order][np.argsort(np.argsort(indices))]
        else:
            rows = self.images[indices]
        images = torch.from_numpy(rows).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
        return images, torch.from_numpy(self.labels[indices].astype(np.int64))

    def sizes_of(self, indices: np.ndarray) -> torch.Tensor | None:
        """The (h, w) of the images at `indices` on their canvases, (B, 2) int64; None when every
        image fills its canvas."""
        if self.sizes is None:
            return None
        return torch.from_numpy(np.asarray(self.sizes[indices], dtype=np.int64))

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The images at `indices` (copied into memory), same classes."""
        return ArrayDataset(
            images=np.ascontiguousarray(self.images[indices]),
            labels=self.labels[indices].astype(np.int64),
            classes=self.classes,
            sizes=None if self.sizes is None else self.sizes[indices],
        )

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.images.shape[1], self.images.shape[2])
