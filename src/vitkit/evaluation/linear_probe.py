"""A full linear probe: multinomial logistic regression on frozen features of the whole training
set, the stronger (and slower) variant of the few-shot least-squares evaluation.

Features are standardised with the training statistics; the weights are fitted full-batch with
L-BFGS. The L2 strength is chosen by accuracy on training images held out from the fit, then the
probe is refitted on every training image with that strength.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vitkit.data.fewshot import holdout_split

L2_CANDIDATES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@dataclass(frozen=True)
class LinearProbe:
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor  # (K,)

    @classmethod
    def fit(
        cls,
        features: torch.Tensor,
        labels: np.ndarray,
        num_classes: int,
        l2: float,
        *,
        max_iterations: int = 200,
    ) -> LinearProbe:
        """Minimise mean cross-entropy + l2 * |W|^2 (the bias is not regularised)."""
        features = features.float()
        mean = features.mean(dim=0)
        std = features.std(dim=0, correction=0) + 1e-5
        inputs = (features - mean) / std
        targets = torch.as_tensor(labels, dtype=torch.long)
        weight = torch.zeros(num_classes, inputs.shape[1], requires_grad=True)
        bias = torch.zeros(num_classes, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias], max_iter=max_iterations, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(inputs @ weight.T + bias, targets) + l2 * weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return cls(mean, std, weight.detach(), bias.detach())

    def predict(self, features: torch.Tensor) -> np.ndarray:
        inputs = (features.float() - self.mean) / self.std
        return (inputs @ self.weight.T + self.bias).argmax(dim=1).numpy()

    def accuracy(self, features: torch.Tensor, labels: np.ndarray) -> float:
        return float((self.predict(features) == np.asarray(labels)).mean())


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: np.ndarray,
    test_features: torch.Tensor,
    test_labels: np.ndarray,
    num_classes: int,
    *,
    holdout_per_class: int = 50,
    l2_candidates: Sequence[float] = L2_CANDIDATES,
) -> dict[str, float]:
    """{"top1": test accuracy, "l2": the chosen strength, "holdout_top1": its held-out score}."""
    fit_rows, holdout_rows = holdout_split(
        train_labels, holdout_per_class, seed=0, num_classes=num_classes
    )
    scores = [
        LinearProbe.fit(train_features[fit_rows], train_labels[fit_rows], num_classes, l2).accuracy(
            train_features[holdout_rows], train_labels[holdout_rows]
        )
        for l2 in l2_candidates
    ]
    best = int(np.argmax(scores))
    probe = LinearProbe.fit(train_features, train_labels, num_classes, l2_candidates[best])
    return {
        "top1": probe.accuracy(test_features, test_labels),
        "l2": l2_candidates[best],
        "holdout_top1": scores[best],
    }
