"""`Validation`: which images of its training split a run holds out to validate on.

`fraction` of each class, drawn by `seed` (`vitkit.data.fewshot.validation_split`, a function of
the split's labels only), recorded in train_config.json under "validation": so the run, a resumed
run and `vitkit eval --split validation` of the run's folder all read the same images, the
latter two from the record alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.data.arrays import ArrayDataset
from vitkit.data.fewshot import validation_split
from vitkit.errors import DataError
from vitkit.evaluation.input_forms import Images
from vitkit.training.run_dir import RunDir

# What metrics.jsonl, eval.json and `vitkit eval --split` call the held-out images.
VALIDATION = "validation"


@dataclass(frozen=True)
class Validation:
    """`fraction` of each class of the split `split` held out, drawn by `seed`."""

    split: str
    fraction: float
    seed: int

    def indices(self, labels: np.ndarray, *, train: bool = False) -> np.ndarray:
        """The held-out images' indices in the split (`train`: the others')."""
        kept, held = validation_split(labels, self.fraction, seed=self.seed)
        return kept if train else held

    def held_out(self, split: Images) -> Images:
        """The held-out images of `split`, all the images of the split `self.split`, in whichever
        form they were read (`open_for_model`, or image by image)."""
        return split.subset(self.indices(split.labels))

    def record(self, images: ArrayDataset) -> dict[str, Any]:
        """What train_config.json keeps of it, with the held-out `images` counted per class."""
        counts = np.bincount(images.labels, minlength=len(images.classes))
        return {
            "split": self.split,
            "fraction": self.fraction,
            "seed": self.seed,
            "images": len(images),
            "per_class": dict(zip(images.classes, counts.tolist())),
        }

    @classmethod
    def of_run(cls, run_folder: Path) -> Validation:
        """The held-out images of the vitkit run in `run_folder`, from its train_config.json."""
        saved = RunDir(run_folder).saved_config() if run_folder.is_dir() else None
        if saved is None:
            raise DataError(
                f"{run_folder}: no train_config.json; split {VALIDATION!r} is the images a "
                "vitkit training run held out, read from its folder"
            )
        return cls.from_record(saved.get("validation"), where=run_folder / "train_config.json")

    @classmethod
    def from_record(cls, record: object, *, where: str | Path) -> Validation:
        """The held-out images a run's train_config.json names; a DataError naming `where` and
        the key when the record is missing or bad (a run folder may come from a stranger)."""
        if not isinstance(record, dict):
            raise DataError(f'{where}: no "validation" record: the run held no images out')
        split, fraction, seed = (record.get(key) for key in ("split", "fraction", "seed"))
        if not isinstance(split, str) or not split:
            raise DataError(f"{where}: validation.split must be a split's name, got {split!r:.40}")
        if not (type(fraction) is float and math.isfinite(fraction) and 0 < fraction < 1):
            raise DataError(f"{where}: validation.fraction must be in (0, 1), got {fraction!r:.40}")
        if not (type(seed) is int and seed >= 0):
            raise DataError(f"{where}: validation.seed must be a whole number, got {seed!r:.40}")
        return cls(split, fraction, seed)
