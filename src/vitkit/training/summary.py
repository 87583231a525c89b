"""`TrainSummary`: what `train()` returns and writes to summary.json, for a finished run or one
stopped early by Ctrl-C."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class TrainSummary:
    """The run's length and result; `stopped_at_step` is set (and no accuracy) when Ctrl-C
    stopped it before its end, which the same command resumes."""

    steps: int
    images_seen: int
    resolution: int
    seconds: float  # training time, evaluation excluded
    top1: float | None = None  # of the final weights (the EMA's, with ema_decay)
    top1_without_ema: float | None = None
    validation_top1: float | None = None  # of the final weights, on the held-out images
    best_validation_top1: float | None = None  # keep_best: the weights in best/
    best_step: int | None = None
    eval_seconds: float | None = None
    stopped_at_step: int | None = None

    @property
    def complete(self) -> bool:
        return self.stopped_at_step is None

    def to_json(self) -> dict[str, Any]:
        """The fields that are set, as summary.json holds them."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> TrainSummary:
        """The summary summary.json holds; ValueError naming a field of the wrong type (counts
        are whole numbers, times and accuracies finite numbers), TypeError for a missing one."""
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in record or record[field.name] is None:
                continue
            value = record[field.name]
            whole = field.type in ("int", "int | None")
            if not (type(value) is int or (not whole and type(value) is float)) or (
                type(value) is float and not math.isfinite(value)
            ):
                kind = "a whole number" if whole else "a finite number"
                raise ValueError(f"{field.name} must be {kind}, got {value!r:.40}")
            values[field.name] = value
        return cls(**values)
