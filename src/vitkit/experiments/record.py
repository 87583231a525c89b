"""experiment.json: what an experiment folder holds, so that the same command resumes it.

The record names the experiment and its settings (data, seeds, budget, subsets, ...), the
command, the machine and the start time, and keeps each finished training run's result under
its key ("seed0/low"). Every run trains in `runs/KEY` with `vitkit.training.train`, which resumes
an interrupted run from its checkpoint; a finished one is read from the record and not repeated.
A folder belongs to one experiment: another experiment, or other settings, is refused in one
line naming what differs. The settings' "overrides" ("field=value", as `vitkit train` takes them)
change every run's TrainConfig, e.g. a smaller batch_size for a small dataset.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitkit.data.arrays import ArrayDataset
from vitkit.devices import describe_machine
from vitkit.errors import TrainingError
from vitkit.evaluation.fewshot import fewshot_accuracy
from vitkit.io import atomic_write_json
from vitkit.models.vit import VisionTransformer
from vitkit.training.config import TrainConfig, parse_overrides
from vitkit.training.trainer import train
from vitkit.weights import load_model

RECORD_NAME = "experiment.json"
FEWSHOT_SEEDS = 5  # draws of the k images per class, averaged


class Interrupted(Exception):
    """Ctrl-C stopped a run of the experiment; the same command resumes it."""


@dataclass
class ExperimentRecord:
    """The experiment.json of one experiment folder (see the module docstring)."""

    folder: Path
    content: dict[str, Any]

    @classmethod
    def open(
        cls, folder: Path, experiment: str, settings: dict[str, Any], command: str
    ) -> ExperimentRecord:
        """The folder's record, created if new; TrainingError when the folder holds another
        experiment or the same one with other settings, ConfigError for a bad override."""
        parse_overrides(TrainConfig(steps=1), settings.get("overrides", []))
        path = folder / RECORD_NAME
        if path.is_file():
            try:
                content = json.loads(path.read_text())
                saved_experiment, saved_settings = content["experiment"], content["settings"]
            except (ValueError, KeyError, TypeError) as error:
                raise TrainingError(f"{path}: not an experiment record ({error})") from None
            if saved_experiment != experiment:
                raise TrainingError(
                    f"{folder} holds the {saved_experiment!r} experiment; use another --out"
                )
            for key in sorted(set(saved_settings) | set(settings)):
                if saved_settings.get(key) != settings.get(key):
                    raise TrainingError(
                        f"{path} was made with {key}={saved_settings.get(key)!r}, this command "
                        f"asks for {settings.get(key)!r}; use another --out to change it"
                    )
            return cls(folder, content)
        record = cls(folder, {
            "experiment": experiment,
            "settings": settings,
            "command": command,
            "machine": describe_machine(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "runs": {},
        })  # fmt: skip
        record.save()
        return record

    @property
    def runs(self) -> dict[str, dict[str, Any]]:
        return self.content["runs"]

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / RECORD_NAME, self.content)

    def run_folder(self, key: str) -> Path:
        return self.folder / "runs" / key

    def configured(self, config: TrainConfig) -> TrainConfig:
        """`config` with the settings' overrides applied, as every run of the experiment."""
        return parse_overrides(config, self.content["settings"].get("overrides", []))

    def train(self, key: str, config: TrainConfig) -> dict[str, Any]:
        """The result of run `key` (top1, steps, seconds): from the record when it finished
        before, else trained now (resumed where it stopped) and recorded."""
        if key in self.runs:
            return self.runs[key]
        print(f"\n== {self.content['experiment']}: {key} ==", flush=True)
        summary = train(self.configured(config), self.run_folder(key))
        if not summary.complete:
            raise Interrupted(key)
        self.runs[key] = {"top1": summary.top1, "steps": summary.steps, "seconds": summary.seconds}
        self.save()
        return self.runs[key]

    def fewshot(
        self,
        key: str,
        train: ArrayDataset,
        test: ArrayDataset,
        *,
        shots: int,
        model: VisionTransformer | None = None,
    ) -> float:
        """The `shots`-shot linear accuracy (mean over FEWSHOT_SEEDS draws) of finished run
        `key`'s frozen model, or of `model` (e.g. an untrained one) recorded under `key`: from
        the record, else measured now and recorded."""
        result = self.runs.setdefault(key, {}) if model is not None else self.runs[key]
        if "fewshot" not in result:
            model = model if model is not None else load_model(self.run_folder(key))
            measured, _, _ = fewshot_accuracy(
                model, train, test, shots=[shots], seeds=FEWSHOT_SEEDS
            )
            result["fewshot"] = measured[0].mean
            self.save()
        return result["fewshot"]
