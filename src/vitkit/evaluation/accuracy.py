"""Classification accuracy with the paper's test-time pipeline (the whole image resized to the
model's resolution, `vitkit.data.model_input`): top-1 for the training loop, and the full report
(top-1, top-5, per class, confusion matrix) that training's end and `vitkit eval` write. How
images become inputs is the weights' `Preprocessing` record (`model.preprocessing`, or an
override), passed whole. With `max_tokens` the report
keeps each image's aspect ratio instead (NaViT packing, `vitkit.evaluation.packed`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vitkit.data.arrays import ArrayDataset
from vitkit.data.folder import LazyImageFolder
from vitkit.data.loader import ArrayLoader
from vitkit.data.model_input import at_resolution, eval_batch
from vitkit.evaluation.packed import iter_packed_outputs
from vitkit.models.preprocessing import Preprocessing

# Above this many classes the (K, K) confusion matrix is not kept (ImageNet-21k: 21843^2 counts).
MAX_CONFUSION_CLASSES = 1000


@torch.no_grad()
def iter_outputs(
    function: Callable[[torch.Tensor], torch.Tensor],
    dataset: ArrayDataset,
    *,
    preprocessing: Preprocessing,
    device: torch.device,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    progress: str | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(function(inputs) on the CPU in float32, labels) for every batch of `dataset`, in order;
    images resized and normalised as `preprocessing` says (`vitkit.data.model_input`; a dataset
    opened by `open_for_model` is at its resolution already). `progress`: a progress bar with that
    title. With `world_size` > 1, only the batches of the `rank`-th contiguous slice of the dataset,
    without padding: the slices of all ranks hold every image exactly once."""
    loader = ArrayLoader(
        at_resolution(dataset, preprocessing),
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        rank=rank,
        world_size=world_size,
    )
    bar = tqdm(
        total=len(loader.indices()),
        desc=progress,
        unit="img",
        file=sys.stderr,
        disable=progress is None,
    )
    with bar:
        for images, labels in loader:
            inputs = eval_batch(images.to(device), preprocessing)
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                outputs = function(inputs)
            bar.update(len(labels))
            yield outputs.float().cpu(), labels


@dataclass(frozen=True)
class ClassificationReport:
    """Accuracies of a classifier on a labelled dataset."""

    top1: float
    top5: float
    per_class: dict[str, float]  # class name -> top-1 among that class's images
    counts: dict[str, int]  # class name -> images of that class
    confusion: np.ndarray | None  # (K, K) counts, row = true class, column = prediction
    images: int

    def to_json(self) -> dict:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "images": self.images,
            "per_class": self.per_class,
            "counts": self.counts,
            "confusion": self.confusion.tolist() if self.confusion is not None else None,
        }


def classification_report(
    model: nn.Module,
    dataset: ArrayDataset | LazyImageFolder,
    *,
    preprocessing: Preprocessing,
    batch_size: int = 256,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: str | None = "eval",
    max_tokens: int | None = None,
    flip_average: bool = False,
) -> ClassificationReport:
    """Top-1, top-5 (top-k for k = min(5, classes)), per-class accuracy and confusion matrix,
    counted batch by batch so that no logits are kept. The model is run in eval mode and left in
    the mode it came in.

    max_tokens: each image at its own aspect ratio, resized to at most this many patches and
    packed (`vitkit.evaluation.packed`; the model needs dynamic_img_size=True, and a
    LazyImageFolder keeps images of different sizes); None: the paper's square resize.
    flip_average: the logits of each image averaged with those of its mirror image (square
    resize only), as training's `eval_flip` counts them."""
    num_classes = len(dataset.classes)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    top_k = min(5, num_classes)
    correct_1 = correct_k = 0
    hits = np.zeros(num_classes, dtype=np.int64)
    counts = np.bincount(dataset.labels, minlength=num_classes)
    confusion = (
        np.zeros((num_classes, num_classes), dtype=np.int64)
        if num_classes <= MAX_CONFUSION_CLASSES
        else None
    )
    if max_tokens is None:
        if not isinstance(dataset, ArrayDataset):
            raise TypeError("the square resize reads an ArrayDataset; pass max_tokens")
        outputs = iter_outputs(
            flip_averaged(model) if flip_average else model,
            dataset,
            preprocessing=preprocessing,
            device=device,
            batch_size=batch_size,
            autocast_dtype=autocast_dtype,
            progress=progress,
        )
    else:
        if flip_average:
            raise ValueError("flip_average mirrors square inputs; packed evaluation has none")
        outputs = iter_packed_outputs(
            model,
            dataset,
            preprocessing=preprocessing,
            max_tokens=max_tokens,
            batch_size=batch_size,
            autocast_dtype=autocast_dtype,
            progress=progress,
        )
    for logits, labels in outputs:
        ranked = logits.topk(top_k, dim=-1).indices
        first = ranked[:, 0]
        right = first == labels
        correct_1 += right.sum().item()
        correct_k += (ranked == labels[:, None]).any(dim=-1).sum().item()
        np.add.at(hits, labels[right].numpy(), 1)
        if confusion is not None:
            np.add.at(confusion, (labels.numpy(), first.numpy()), 1)
    model.train(was_training)
    total = len(dataset)
    names = dataset.classes
    return ClassificationReport(
        top1=correct_1 / total,
        top5=correct_k / total,
        per_class={names[c]: float(hits[c] / counts[c]) for c in range(num_classes) if counts[c]},
        counts={names[c]: int(counts[c]) for c in range(num_classes)},
        confusion=confusion,
        images=total,
    )


def flip_averaged(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's logits of each input averaged with those of its mirror image (test-time
    augmentation)."""
    return lambda inputs: (model(inputs) + model(inputs.flip(-1))) / 2


@torch.no_grad()
def top1_counts(
    model: nn.Module,
    dataset: ArrayDataset,
    *,
    preprocessing: Preprocessing,
    device: torch.device,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    flip_average: bool = False,
) -> tuple[int, int]:
    """(images whose highest logit is the label, images) in the `rank`-th of `world_size`
    contiguous slices of `dataset`: summed over all ranks, every image counts exactly once. The
    model runs in eval mode and is left in the mode it came in. `flip_average`: the logits of
    each image averaged with those of its mirror image (test-time augmentation)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for logits, labels in iter_outputs(
        flip_averaged(model) if flip_average else model,
        dataset,
        preprocessing=preprocessing,
        device=device,
        batch_size=batch_size,
        autocast_dtype=autocast_dtype,
        rank=rank,
        world_size=world_size,
    ):
        correct += int((logits.argmax(dim=-1) == labels).sum())
        total += len(labels)
    model.train(was_training)
    return correct, total


def top1_accuracy(
    model: nn.Module,
    dataset: ArrayDataset,
    *,
    preprocessing: Preprocessing,
    batch_size: int = 256,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Fraction of `dataset` whose highest logit is the label: `top1_counts` in one process, as
    the training loop counts it."""
    correct, total = top1_counts(
        model,
        dataset,
        preprocessing=preprocessing,
        device=device or next(model.parameters()).device,
        batch_size=batch_size,
        autocast_dtype=autocast_dtype,
    )
    return correct / total
