"""The paper's few-shot linear evaluation (Section 4.1, "few-shot accuracies").

On frozen representations of k training images per class, a regularised least-squares regression
maps each representation to a {-1, 1}^K target (+1 for its class, -1 elsewhere), solved in closed
form; the predicted class is the largest output. The L2 strength is picked from a grid by accuracy
on training images held out from every k-shot subset, and each accuracy is reported as mean and
spread over seeds (different k-shot subsets).

Features are extracted once: `FewShotPlan` lists every training image any (shots, seed) needs, and
`evaluate_fewshot` then works on those features only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vitkit.data.arrays import ArrayDataset
from vitkit.data.fewshot import holdout_split, k_shot_indices
from vitkit.evaluation.features import extract_features
from vitkit.models.preprocessing import Preprocessing
from vitkit.models.vit import VisionTransformer

# Powers of two from 2^-10 to 2^19: wide enough for unnormalised and tanh features alike.
L2_CANDIDATES = tuple(2.0**power for power in range(-10, 20))
# The bias is a constant feature this large, so that its weight is all but unregularised.
BIAS_FEATURE = 100.0


def ridge_regression(features: torch.Tensor, targets: torch.Tensor, l2: float) -> torch.Tensor:
    """argmin_W |X W - Y|^2 + l2 |W|^2 in closed form, (D, K); float64. Solves the D x D normal
    equations when there are more rows than features, else the N x N dual (the few-shot case)."""
    rows, dim = features.shape
    if rows >= dim:
        gram = features.T @ features + l2 * torch.eye(dim, dtype=features.dtype)
        return torch.linalg.solve(gram, features.T @ targets)
    gram = features @ features.T + l2 * torch.eye(rows, dtype=features.dtype)
    return features.T @ torch.linalg.solve(gram, targets)


@dataclass(frozen=True)
class LeastSquaresClassifier:
    """Standardisation of the features (from the fitting images), then a linear map with bias."""

    mean: torch.Tensor
    std: torch.Tensor
    weights: torch.Tensor  # (D + 1, K), the last row multiplies BIAS_FEATURE

    @classmethod
    def fit(
        cls, features: torch.Tensor, labels: np.ndarray, num_classes: int, l2: float
    ) -> LeastSquaresClassifier:
        features = features.double()
        mean = features.mean(dim=0)
        std = features.std(dim=0, correction=0) + 1e-5
        targets = (
            2.0
            * torch.nn.functional.one_hot(
                torch.as_tensor(labels, dtype=torch.long), num_classes
            ).double()
            - 1.0
        )
        design = cls._design((features - mean) / std)
        return cls(mean, std, ridge_regression(design, targets, l2))

    @staticmethod
    def _design(standardised: torch.Tensor) -> torch.Tensor:
        bias = torch.full((len(standardised), 1), BIAS_FEATURE, dtype=standardised.dtype)
        return torch.cat([standardised, bias], dim=1)

    def predict(self, features: torch.Tensor) -> np.ndarray:
        design = self._design((features.double() - self.mean) / self.std)
        return (design @ self.weights).argmax(dim=1).numpy()

    def accuracy(self, features: torch.Tensor, labels: np.ndarray) -> float:
        return float((self.predict(features) == np.asarray(labels)).mean())


@dataclass(frozen=True)
class FewShotPlan:
    """Which training images each (shots, seed) fits on and which it tunes the L2 strength on."""

    holdout: np.ndarray
    subsets: dict[tuple[int, int], np.ndarray]  # (shots, seed) -> training-set indices

    @classmethod
    def build(
        cls,
        labels: np.ndarray,
        num_classes: int,
        *,
        shots: Sequence[int] = (1, 5, 10, 25),
        seeds: int = 3,
        holdout_per_class: int = 20,
    ) -> FewShotPlan:
        """Hold `holdout_per_class` images of each class out, then draw every k-shot subset from
        the rest; k-shot subsets of one seed are nested (the 5 images are among the 10)."""
        pool, holdout = holdout_split(labels, holdout_per_class, seed=0, num_classes=num_classes)
        subsets = {}
        for seed in range(seeds):
            for k in shots:
                chosen = k_shot_indices(labels[pool], k, seed=seed, num_classes=num_classes)
                subsets[(k, seed)] = pool[chosen]
        return cls(holdout, subsets)

    def needed(self) -> np.ndarray:
        """Sorted training-set indices whose features the evaluation uses."""
        return np.unique(np.concatenate([self.holdout, *self.subsets.values()]))


@dataclass(frozen=True)
class FewShotResult:
    shots: int
    accuracies: list[float]  # test accuracy per seed
    l2: list[float]  # the chosen regularisation per seed

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))

    def to_json(self) -> dict:
        return {"mean": self.mean, "std": self.std, "accuracies": self.accuracies, "l2": self.l2}


def evaluate_fewshot(
    plan: FewShotPlan,
    train_features: torch.Tensor,
    train_labels: np.ndarray,
    test_features: torch.Tensor,
    test_labels: np.ndarray,
    num_classes: int,
    *,
    l2_candidates: Sequence[float] = L2_CANDIDATES,
) -> list[FewShotResult]:
    """Test accuracy for every shot count of the plan, one fit per seed.

    `train_features` holds the features of `plan.needed()` in that order (row i is training image
    needed()[i]); `train_labels` are the labels of the whole training set.
    """
    needed = plan.needed()
    if len(train_features) != len(needed):
        raise ValueError(f"expected features of {len(needed)} images, got {len(train_features)}")

    def rows(indices: np.ndarray) -> torch.Tensor:
        return train_features[torch.as_tensor(np.searchsorted(needed, indices))]

    holdout_features, holdout_labels = rows(plan.holdout), train_labels[plan.holdout]
    by_shots: dict[int, FewShotResult] = {}
    for (k, _seed), indices in sorted(plan.subsets.items()):
        features, labels = rows(indices), train_labels[indices]
        scores = [
            LeastSquaresClassifier.fit(features, labels, num_classes, l2).accuracy(
                holdout_features, holdout_labels
            )
            for l2 in l2_candidates
        ]
        best = l2_candidates[int(np.argmax(scores))]  # ties: the smallest
        classifier = LeastSquaresClassifier.fit(features, labels, num_classes, best)
        result = by_shots.setdefault(k, FewShotResult(k, [], []))
        result.accuracies.append(classifier.accuracy(test_features, test_labels))
        result.l2.append(best)
    return [by_shots[k] for k in sorted(by_shots)]


def fewshot_accuracy(
    model: VisionTransformer,
    train: ArrayDataset,
    test: ArrayDataset,
    *,
    shots: Sequence[int],
    seeds: int,
    holdout_per_class: int = 20,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 256,
) -> tuple[list[FewShotResult], torch.Tensor, np.ndarray]:
    """The whole evaluation of a frozen `model` on `train` (the k-shot subsets and held-out
    images) and `test`: (a result per shot count, the test features, the test labels), the last
    two for further probes. Features are extracted once, for the training images the plan needs
    and for every test image."""
    num_classes = len(train.classes)
    plan = FewShotPlan.build(
        train.labels, num_classes, shots=shots, seeds=seeds, holdout_per_class=holdout_per_class
    )
    options = dict(preprocessing=preprocessing, batch_size=batch_size)
    train_features, _ = extract_features(
        model, train.subset(plan.needed()), progress="train features", **options
    )
    test_features, test_labels = extract_features(model, test, progress="test features", **options)
    results = evaluate_fewshot(
        plan, train_features, train.labels, test_features, test_labels, num_classes
    )
    return results, test_features, test_labels
