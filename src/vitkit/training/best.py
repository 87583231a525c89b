"""keep_best: the weights of a run's best validation top-1 so far, kept in OUT/best.

A run on a small folder can over-train: a few steps may beat the full schedule. With keep_best
the run evaluates its validation images every eval_every steps (never the test split: a choice
made on it would overstate the test accuracy) and writes the weights whenever they beat the
best so far, as a model folder `vitkit.load_model(OUT / "best")` reads, with best.json saying
the step and the top-1. A resumed run reads best.json back, so it keeps comparing with the same
best; as every write in a run folder, each file is replaced atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vitkit.errors import TrainingError
from vitkit.io import atomic_write_json, read_capped
from vitkit.models.vit import VisionTransformer
from vitkit.weights.native import save_pretrained

BEST_FOLDER = "best"
BEST_RECORD = "best.json"
MOST_RECORD_BYTES = 4096


@dataclass
class BestWeights:
    """The best validation top-1 so far and its step (-1 before the first evaluation)."""

    folder: Path
    top1: float = -1.0
    step: int = -1

    @classmethod
    def read(cls, run_folder: Path) -> BestWeights:
        """The best so far of the run in `run_folder`: its best.json, else none yet."""
        folder = run_folder / BEST_FOLDER
        path = folder / BEST_RECORD
        if not path.exists():
            return cls(folder)
        try:
            record = json.loads(read_capped(path, MOST_RECORD_BYTES, error=TrainingError))
            top1, step = record["validation_top1"], record["step"]
        except (ValueError, KeyError, TypeError, RecursionError) as error:
            message = f"{path}: unreadable ({error}); delete {folder} to start over"
            raise TrainingError(message) from None
        if not (type(top1) is float and math.isfinite(top1) and 0 <= top1 <= 1):
            raise TrainingError(f"{path}: validation_top1 must be a fraction, got {top1!r:.40}")
        if not (type(step) is int and step >= 0):
            raise TrainingError(f"{path}: step must be a whole number, got {step!r:.40}")
        return cls(folder, top1, step)

    def offer(
        self, model: VisionTransformer, *, top1: float, step: int, classes: Sequence[str]
    ) -> bool:
        """Keep `model` (evaluated at `step` to `top1`) when it beats the best so far; whether
        it did. Ties keep the earlier weights."""
        if top1 <= self.top1:
            return False
        save_pretrained(model, self.folder, class_names=classes)
        atomic_write_json(self.folder / BEST_RECORD, {"step": step, "validation_top1": top1})
        self.top1, self.step = top1, step
        return True
