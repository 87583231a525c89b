"""The statistics an experiment reports: each arm's mean and spread over seeds, and the paired
difference of two arms with its confidence interval.

Arms run with the same seeds share their initialisation and data order, so the difference is
taken seed by seed (a paired comparison) and its interval comes from Student's t with n - 1
degrees of freedom, as `scipy.stats.ttest_rel` computes it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (NaN for one value) of `n` values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return cls(statistics.fmean(values), std, len(values))

    def percent(self) -> str:
        """ "73.12% ± 0.45" (points), or the mean alone for one value."""
        if self.n < 2:
            return f"{self.mean:.2%}"
        return f"{self.mean:.2%} ± {self.std * 100:.2f}"


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the per-seed differences first - second, and its confidence interval (NaN ends
    with fewer than two seeds)."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @classmethod
    def of(
        cls, first: list[float], second: list[float], confidence: float = 0.95
    ) -> PairedDifference:
        if len(first) != len(second) or not first:
            raise ValueError(f"need pairs: got {len(first)} and {len(second)} values")
        differences = [a - b for a, b in zip(first, second)]
        mean, n = statistics.fmean(differences), len(differences)
        if n < 2:
            return cls(mean, math.nan, math.nan, n, confidence)
        half = stats.t.ppf((1 + confidence) / 2, n - 1) * statistics.stdev(differences) / n**0.5
        return cls(mean, mean - half, mean + half, n, confidence)

    def percent(self) -> str:
        """ "+1.23 points (95% CI -0.40 to +2.86, 3 seeds)"."""
        text = f"{self.mean * 100:+.2f} points"
        if self.n < 2:
            return f"{text} (one seed, no interval)"
        return (
            f"{text} ({self.confidence:.0%} CI {self.low * 100:+.2f} to {self.high * 100:+.2f}, "
            f"{self.n} seeds)"
        )
