"""Few-shot subsets: k per class, reproducible from the seed, and disjoint held-out splits."""

from __future__ import annotations

import numpy as np
import pytest

from vitkit.data.fewshot import holdout_split, k_shot_indices, nested_fraction
from vitkit.data.images import DataError

# 5 classes of unequal size, shuffled so that classes are not contiguous.
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(5), [30, 12, 25, 10, 40]))


@pytest.mark.parametrize("k", [1, 5, 10])
def test_k_images_of_every_class_sorted(k: int) -> None:
    indices = k_shot_indices(LABELS, k, seed=0)
    assert np.bincount(LABELS[indices]).tolist() == [k] * 5
    assert (np.diff(indices) > 0).all()  # sorted, no repeats
    assert indices.dtype == np.int64


def test_same_seed_same_images_other_seed_other_images() -> None:
    np.testing.assert_array_equal(
        k_shot_indices(LABELS, 5, seed=3), k_shot_indices(LABELS, 5, seed=3)
    )
    assert not np.array_equal(k_shot_indices(LABELS, 5, seed=3), k_shot_indices(LABELS, 5, seed=4))


def test_smaller_shots_are_contained_in_larger_ones() -> None:
    assert set(k_shot_indices(LABELS, 2, seed=1)) <= set(k_shot_indices(LABELS, 10, seed=1))


def test_a_class_does_not_depend_on_the_others() -> None:
    first_class = LABELS == 0
    alone = np.flatnonzero(first_class)[k_shot_indices(LABELS[first_class], 4, seed=7)]
    together = k_shot_indices(LABELS, 4, seed=7)
    np.testing.assert_array_equal(alone, together[LABELS[together] == 0])


def test_too_few_images_name_the_class_and_its_count() -> None:
    with pytest.raises(DataError, match="class 1 has 12, class 3 has 10"):
        k_shot_indices(LABELS, 20, seed=0)


def test_a_class_without_images_is_reported() -> None:
    with pytest.raises(DataError, match="class 5 has 0"):
        k_shot_indices(LABELS, 1, seed=0, num_classes=6)


@pytest.mark.parametrize("labels", [np.array([]), np.array([0.0, 1.0]), np.array([[0, 1]])])
def test_labels_must_be_a_1d_integer_array(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="1-d integer"):
        k_shot_indices(labels, 1, seed=0)


def test_holdout_is_disjoint_complete_and_per_class() -> None:
    train, holdout = holdout_split(LABELS, 3, seed=0)
    assert np.intersect1d(train, holdout).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, holdout])), np.arange(len(LABELS)))
    assert np.bincount(LABELS[holdout]).tolist() == [3] * 5
    assert (np.diff(train) > 0).all() and (np.diff(holdout) > 0).all()
    again = holdout_split(LABELS, 3, seed=0)
    np.testing.assert_array_equal(again[1], holdout)
    assert not np.array_equal(holdout_split(LABELS, 3, seed=1)[1], holdout)


def test_holdout_leaves_every_class_a_training_image() -> None:
    with pytest.raises(DataError, match="class 3 has 10"):
        holdout_split(LABELS, 10, seed=0)


def test_nested_fractions_are_class_balanced_and_nested() -> None:
    """Each class keeps round(fraction x its count) images, and every smaller fraction's images
    are among every larger one's; the whole set at 1."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 1000)
    counts = np.bincount(labels, minlength=4)
    subsets = {f: nested_fraction(labels, f) for f in (0.1, 0.25, 0.5, 1.0)}
    for fraction, indices in subsets.items():
        assert np.all(np.diff(indices) > 0)
        kept = np.bincount(labels[indices], minlength=4)
        assert kept.tolist() == [max(1, round(fraction * count)) for count in counts]
    for smaller, larger in [(0.1, 0.25), (0.25, 0.5), (0.5, 1.0)]:
        assert set(subsets[smaller]) <= set(subsets[larger])
    assert subsets[1.0].tolist() == list(range(1000))
    assert not np.array_equal(nested_fraction(labels, 0.1, seed=1), subsets[0.1])
    with pytest.raises(ValueError, match="fraction must be in"):
        nested_fraction(labels, 0)
