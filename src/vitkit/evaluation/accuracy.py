"""Classification accuracy: top-1 for the training loop, and the full report (top-1, top-5, per
class, confusion matrix) that training's end and `vitkit eval` write. Images reach the model in
one of the two input forms (`vitkit.evaluation.input_forms`): square by default, the paper's
test-time pipeline (the whole image resized to the model's resolution), or packed at each image's
own aspect ratio (NaViT). How pixels become inputs is the weights' `Preprocessing` record
(`model.preprocessing`, or an override), passed whole."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vitkit.data.arrays import ArrayDataset
from vitkit.evaluation.input_forms import SQUARE, Images, InputForm
from vitkit.models.preprocessing import Preprocessing

# Above this many classes the (K, K) confusion matrix is not kept (ImageNet-21k: 21843^2 counts).
MAX_CONFUSION_CLASSES = 1000


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
    dataset: Images,
    *,
    preprocessing: Preprocessing,
    form: InputForm = SQUARE,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    progress: str | None = "eval",
    flip_average: bool = False,
) -> ClassificationReport:
    """Top-1, top-5 (top-k for k = min(5, classes)), per-class accuracy and confusion matrix of
    `dataset` in the input `form`, counted batch by batch so that no logits are kept. The model
    is run in eval mode and left in the mode it came in. `flip_average`: the logits of each
    image averaged with those of its mirror image (square images only), as training's
    `eval_flip` counts them."""
    num_classes = len(dataset.classes)
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
    outputs = form.outputs(model, dataset, preprocessing=preprocessing, batch_size=batch_size,
                           autocast_dtype=autocast_dtype, flip_average=flip_average,
                           progress=progress)  # fmt: skip
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


def top1_counts(
    model: nn.Module,
    dataset: ArrayDataset,
    *,
    preprocessing: Preprocessing,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    flip_average: bool = False,
) -> tuple[int, int]:
    """(images whose highest logit is the label, images) of square images in the `rank`-th of
    `world_size` contiguous slices of `dataset`: summed over all ranks, every image counts
    exactly once. The model runs in eval mode and is left in the mode it came in.
    `flip_average`: the logits of each image averaged with those of its mirror image."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for logits, labels in SQUARE.outputs(
        model, dataset, preprocessing=preprocessing, batch_size=batch_size,
        autocast_dtype=autocast_dtype, flip_average=flip_average, rank=rank,
        world_size=world_size,
    ):  # fmt: skip
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
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Fraction of `dataset` whose highest logit is the label: `top1_counts` in one process, as
    the training loop counts it."""
    correct, total = top1_counts(model, dataset, preprocessing=preprocessing,
                                 batch_size=batch_size, autocast_dtype=autocast_dtype)  # fmt: skip
    return correct / total
