"""`TrainSummary`: what `train()` returns and writes to summary.json, for a finished run or one
stopped early by Ctrl-C."""

from __future__ import annotations

import dataclasses
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
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in names})
