"""Which training images a few-shot evaluation sees, and which it holds out to tune on.

The paper's few-shot accuracies (Section 4.1) fit regularised least squares on the frozen features
of k images per class; the regularisation strength is chosen on training images held out from it.
Both choices are functions of (labels, seed) only, so a reported number can be re-run exactly.
Each class is shuffled by its own generator, seeded with (seed, class): a class's picks do not
depend on the other classes, and for one seed the 5-shot images are among the 10-shot ones.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from vitkit.data.arrays import ArrayDataset
from vitkit.data.folder import LazyImageFolder
from vitkit.data.images import DataError

# A labelled dataset that can give a subset of itself: decoded arrays, or a folder read lazily.
Labelled = TypeVar("Labelled", ArrayDataset, LazyImageFolder)


def k_shot_indices(
    labels: np.ndarray, k: int, *, seed: int, num_classes: int | None = None
) -> np.ndarray:
    """Sorted indices of `k` images of every class, the same for the same seed.

    num_classes: classes the labels index (default: the largest label + 1), so that a class with
    no image at all is reported rather than silently left out.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    chosen = [order[:k] for order in _shuffled_classes(labels, k, seed, num_classes, "k-shot")]
    return np.sort(np.concatenate(chosen))


def balanced_subset(dataset: Labelled, limit: int) -> Labelled:
    """About `limit` images of `dataset`, the same number of every class (at least one each),
    always the same ones: a quicker evaluation that keeps the class balance of the full one. A
    limit that covers the whole dataset gives the whole dataset."""
    if limit >= len(dataset):
        return dataset
    per_class = max(1, limit // len(dataset.classes))
    purpose = f"a class-balanced subset of {limit} images"
    orders = _shuffled_classes(dataset.labels, per_class, 0, len(dataset.classes), purpose)
    return dataset.subset(np.sort(np.concatenate([order[:per_class] for order in orders])))


def nested_fraction(
    labels: np.ndarray, fraction: float, *, seed: int = 0, num_classes: int | None = None
) -> np.ndarray:
    """Sorted indices of `fraction` of every class's images (rounded, at least one each): the
    first ones of the class in a seeded order, so that every smaller fraction's images are among
    a larger one's. Nested, class-balanced subsets are what a data-size curve compares."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    orders = _shuffled_classes(labels, 1, seed, num_classes, "a training subset")
    chosen = [order[: max(1, round(fraction * len(order)))] for order in orders]
    return np.sort(np.concatenate(chosen))


def holdout_split(
    labels: np.ndarray, per_class: int, *, seed: int, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout): sorted, disjoint indices covering every image, with `per_class` images of
    each class held out; each class keeps at least one training image."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    orders = _shuffled_classes(labels, per_class + 1, seed, num_classes, "held-out split")
    holdout = np.sort(np.concatenate([order[:per_class] for order in orders]))
    train = np.sort(np.concatenate([order[per_class:] for order in orders]))
    return train, holdout


def validation_split(
    labels: np.ndarray, fraction: float, *, seed: int, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): sorted, disjoint indices covering every image, with `fraction` of
    each class's images (rounded, at least one) held out for validation and at least one kept
    for training: a class-stratified split that (labels, fraction, seed) give again exactly."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    orders = _shuffled_classes(labels, 2, seed, num_classes, "a validation split")
    held = [min(len(order) - 1, max(1, round(fraction * len(order)))) for order in orders]
    validation = np.sort(np.concatenate([order[:n] for order, n in zip(orders, held)]))
    train = np.sort(np.concatenate([order[n:] for order, n in zip(orders, held)]))
    return train, validation


def _shuffled_classes(
    labels: np.ndarray, needed: int, seed: int, num_classes: int | None, purpose: str
) -> list[np.ndarray]:
    """The indices of each class in a seeded random order; every class needs `needed` images."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.size == 0:
        raise ValueError(
            f"labels must be a non-empty 1-d integer array, got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0:
        raise ValueError(f"labels must be non-negative, got {labels.min()}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=num_classes)
    if len(counts) > num_classes:
        raise ValueError(f"labels go up to {labels.max()} but num_classes is {num_classes}")
    short = np.flatnonzero(counts < needed)
    if short.size:
        details = ", ".join(f"class {c} has {counts[c]}" for c in short[:10])
        details += ", ..." if short.size > 10 else ""
        raise DataError(f"{purpose} needs {needed} images per class: {details}")
    by_class = np.argsort(labels, kind="stable")  # indices grouped by class, each group ascending
    starts = np.concatenate([[0], np.cumsum(counts)])
    return [
        np.random.default_rng([seed, c]).permutation(by_class[starts[c] : starts[c + 1]])
        for c in range(num_classes)
    ]
