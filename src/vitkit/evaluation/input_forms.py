"""The two forms images take into a model, each a type with the one forward that consumes it.

- `SquareImages`: every image resized whole to the model's resolution (`vitkit.data.model_input`,
  the paper's test-time pipeline), a (B, C, H, W) batch; FlexiViT runs it at another patch size.
- `PackedImages`: every image at its own aspect ratio, resized to at most `max_tokens` patches and
  packed into shared sequences (NaViT, `vitkit.models.packing`), a list of (C, h, w) images.

A command chooses its form once (`vitkit eval` and `classify` with `--max-tokens N` the packed
one, `vitkit train max_tokens=N` too), and the form decides everything that differs after that:
how a split is read, how images become inputs, how the model runs on them and how the result is
described. Training's augmentation gives the same two kinds of batch (`TrainAugment`), which the
training step hands to its form's `forward`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vitkit.data.arrays import ArrayDataset
from vitkit.data.folder import LazyImageFolder
from vitkit.data.loader import ArrayLoader
from vitkit.data.model_input import at_resolution, eval_batch, model_pixels
from vitkit.data.sources import open_for_model, open_image_by_image
from vitkit.data.token_budget import budget_input
from vitkit.errors import DataError
from vitkit.models.packing import forward_packed, sequence_length
from vitkit.models.preprocessing import Preprocessing
from vitkit.models.vit import VisionTransformer

# What an evaluation reads: a split decoded at the resolution, or read image by image.
Images = ArrayDataset | LazyImageFolder


@dataclass(frozen=True)
class SquareImages:
    """Every image resized whole to the model's resolution; a batch is one tensor."""

    dynamic_img_size = False  # the model keeps its one resolution

    def forward(
        self, model: VisionTransformer, inputs: torch.Tensor, *, patch_size: int | None = None
    ) -> torch.Tensor:
        """Logits of a normalised (B, C, H, W) batch, at `patch_size` where given (FlexiViT)."""
        return model(inputs) if patch_size is None else model(inputs, patch_size=patch_size)

    def open(
        self, source: str | Path, split: str, preprocessing: Preprocessing, *, skip_bad: bool
    ) -> ArrayDataset:
        """The split decoded once at the resolution (`open_for_model`)."""
        return open_for_model(source, split, preprocessing, skip_bad=skip_bad)

    def inputs(
        self, model: VisionTransformer, images: Sequence[Image.Image], preprocessing: Preprocessing
    ) -> torch.Tensor:
        """RGB images of any sizes -> the normalised batch at the resolution, on the model's
        device."""
        pixels = np.stack([model_pixels(image, preprocessing) for image in images])
        device = next(model.parameters()).device
        return eval_batch(torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device), preprocessing)

    def outputs(
        self,
        model: VisionTransformer,
        images: Images,
        *,
        preprocessing: Preprocessing,
        batch_size: int,
        autocast_dtype: torch.dtype | None = None,
        flip_average: bool = False,
        progress: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        function: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(logits on the CPU in float32, labels) of every batch of `images` in order;
        `flip_average`: each image's logits averaged with its mirror image's (test-time
        augmentation). With `world_size` > 1, of the `rank`-th contiguous slice only, without
        padding: the slices of all ranks hold every image once. `function`: what to run on
        the inputs instead of the model (a representation, for the linear evaluations)."""
        function = function or model
        if isinstance(images, LazyImageFolder):
            raise TypeError("square images are read decoded at the resolution (open_for_model)")
        loader = ArrayLoader(at_resolution(images, preprocessing), batch_size=batch_size,
                             shuffle=False, drop_last=False, rank=rank,
                             world_size=world_size)  # fmt: skip
        device = next(model.parameters()).device
        with _bar(len(loader.indices()), progress) as bar, torch.no_grad():
            for pixels, labels in loader:
                inputs = eval_batch(pixels.to(device), preprocessing)
                with _autocast(device, autocast_dtype):
                    logits = function(inputs)
                    if flip_average:
                        logits = (logits + function(inputs.flip(-1))) / 2
                bar.update(len(labels))
                yield logits.float().cpu(), labels

    def describe(self, preprocessing: Preprocessing) -> str:
        height, width = preprocessing.resolution
        return f"at {height}x{width} px"


@dataclass(frozen=True)
class PackedImages:
    """Every image at its own aspect ratio, at most `max_tokens` patches, packed; a batch is a
    list of images of their own sizes. `keep`: the share of each image's patch tokens kept
    (NaViT's token dropping, in training)."""

    max_tokens: int
    keep: float = 1.0
    dynamic_img_size = True  # every image has its own size

    def forward(
        self, model: VisionTransformer, inputs: list[torch.Tensor], *, patch_size: None = None
    ) -> torch.Tensor:
        """Logits of normalised (C, h, w) images, packed into sequences of `sequence_length`."""
        if not model.config.dynamic_img_size:
            raise ValueError(
                "packed images each have their own size: the model needs dynamic_img_size=True "
                "(load_model(..., dynamic_img_size=True))"
            )
        sequence = sequence_length(model, self.max_tokens)
        return forward_packed(model, inputs, max_tokens=sequence, keep=self.keep)

    def open(
        self, source: str | Path, split: str, preprocessing: Preprocessing, *, skip_bad: bool
    ) -> Images:
        """The split with every image at its stored size (`open_image_by_image`), read image by
        image as it is evaluated: skipping unreadable ones is the decoded (square) path's."""
        if skip_bad:
            raise DataError(
                "--skip-bad leaves out unreadable images while a split is decoded; packed "
                "evaluation (--max-tokens) reads each image as it goes: drop one of them"
            )
        return open_image_by_image(source, split)

    def inputs(
        self,
        model: VisionTransformer,
        images: Sequence[Image.Image | np.ndarray | torch.Tensor],
        preprocessing: Preprocessing,
    ) -> list[torch.Tensor]:
        """Images (PIL, (H, W, 3) arrays or (3, H, W) uint8 tensors) -> each normalised at its
        size for the token budget, on the model's device."""
        device = next(model.parameters()).device
        stride = model.config.total_stride
        return [
            budget_input(np.asarray(image) if isinstance(image, Image.Image) else image,
                         preprocessing, patch_size=stride, max_tokens=self.max_tokens).to(device)
            for image in images
        ]  # fmt: skip

    def outputs(
        self,
        model: VisionTransformer,
        images: Images,
        *,
        preprocessing: Preprocessing,
        batch_size: int,
        autocast_dtype: torch.dtype | None = None,
        flip_average: bool = False,
        progress: str | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(logits on the CPU in float32, labels) for every `batch_size` images of `images` in
        order, each image at its own size."""
        if flip_average:
            raise ValueError("flip_average mirrors square batches; packed evaluation has none")
        device = next(model.parameters()).device
        with _bar(len(images), progress) as bar, torch.no_grad():
            for start in range(0, len(images), batch_size):
                items = [images[index] for index in range(start, min(start + batch_size,
                                                                     len(images)))]  # fmt: skip
                inputs = self.inputs(model, [image for image, _ in items], preprocessing)
                with _autocast(device, autocast_dtype):
                    logits = self.forward(model, inputs)
                bar.update(len(items))
                yield logits.float().cpu(), torch.tensor([label for _, label in items])

    def describe(self, preprocessing: Preprocessing) -> str:
        return f"at their aspect ratios, at most {self.max_tokens} patches each"


InputForm = SquareImages | PackedImages
SQUARE = SquareImages()  # the paper's, and every command's default


def input_form(max_tokens: int | None) -> InputForm:
    """The form a command's `--max-tokens` asks for: packed with a budget, else square."""
    return PackedImages(max_tokens) if max_tokens else SQUARE


def _autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast | nullcontext:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _bar(total: int, progress: str | None) -> tqdm:
    return tqdm(total=total, desc=progress, unit="img", file=sys.stderr,
                disable=progress is None)  # fmt: skip
