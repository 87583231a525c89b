"""experiment.json: what an experiment folder holds, so that the same command resumes it.

The record names the experiment and its settings (data, seeds, budget, subsets, ...), the
command, the machine and the start time, and keeps each finished training run's result under
its key ("seed0/low"). Every run trains in `runs/KEY` with `vitkit.training.train`, which resumes
an interrupted run from its checkpoint; a finished one is read from the record and not repeated.
A folder belongs to one experiment: another experiment, or other settings, is refused in one
line naming what differs. The settings' "overrides" ("field=value", as `vitkit train` takes them)
change every run's TrainConfig, e.g. a smaller batch_size for a small dataset; not the fields the
experiment sets itself (what it compares, the seed, the data, the time budget, the splits its
report reads), or its report would describe runs that did not happen.

Everything a command asks for is checked before the record is written: a refused first command
(a bad budget, a missing dataset) must not claim the folder for settings the corrected command
then differs from. experiment.json may have been edited by hand: it is read within a size cap and
every value a later run reads is checked, each bad one refused in one line naming its key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import reprlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitkit.data.arrays import ArrayDataset
from vitkit.devices import describe_machine
from vitkit.errors import ConfigError, TrainingError
from vitkit.evaluation.fewshot import fewshot_accuracy
from vitkit.io import atomic_write_json, read_capped
from vitkit.models.vit import VisionTransformer
from vitkit.training.config import TrainConfig, parse_overrides
from vitkit.training.trainer import train
from vitkit.weights import load_model

RECORD_NAME = "experiment.json"
FEWSHOT_SEEDS = 5  # draws of the k images per class, averaged
MOST_SEEDS = 100  # seeds 0..99; a typo such as 1000000000 must not build a list that fills memory
MOST_RECORD_BYTES = 4 << 20  # 100 seeds of 20 runs make about 200 kB
MOST_RUN_SECONDS = 1e9  # about 30 years: a larger time is an edit, and sums of them overflow
MOST_MEASURED = 64  # numbers measured per run beyond top-1 and few-shot accuracy
# TrainConfig fields every experiment sets itself: the data (--data), the equal training time
# (--budget, which steps or epochs would override), the splits its top-1, few-shot accuracy and
# figures read, and a classifier trained from scratch unless a stage starts from an earlier one.
# Each experiment adds its own fields (what it varies, the seed among them); --set may change
# neither.
SET_BY_EVERY_EXPERIMENT = frozenset(
    {"data", "budget_seconds", "steps", "epochs", "train_split", "test_split", "task", "init"}
)


def _is_share(value: Any) -> bool:
    return type(value) in (int, float) and 0 <= value <= 1  # NaN fails both comparisons


def _is_measured(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) <= MOST_MEASURED
        and all(type(number) in (int, float) and math.isfinite(number) for number in value.values())
    )


# What a run's entry may hold: `train` records top1 (null when the run has no test split), steps
# and seconds; `fewshot` adds its accuracy, alone for a model that was never trained; `measured`
# adds what an experiment measures beyond them, by name.
RUN_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "top1": (lambda value: value is None or _is_share(value), "null or a number from 0 to 1"),
    "steps": (lambda value: type(value) is int and 0 <= value < 2**63, "a whole number >= 0"),
    "seconds": (
        lambda value: type(value) in (int, float) and 0 <= value <= MOST_RUN_SECONDS,
        f"a number of seconds from 0 to {MOST_RUN_SECONDS:g}",
    ),
    "fewshot": (_is_share, "a number from 0 to 1"),
    "measured": (_is_measured, f"a JSON object of at most {MOST_MEASURED} finite numbers"),
}
TRAINED = ("top1", "steps", "seconds")


class Interrupted(Exception):
    """Ctrl-C stopped a run of the experiment; the same command resumes it."""


@dataclass
class ExperimentRecord:
    """The experiment.json of one experiment folder (see the module docstring)."""

    folder: Path
    content: dict[str, Any]

    @classmethod
    def open(
        cls,
        folder: Path,
        experiment: str,
        settings: dict[str, Any],
        command: str,
        *,
        own_fields: frozenset[str],
        timed: bool = True,
    ) -> ExperimentRecord:
        """The folder's record, created if new. `settings` holds at least seeds, budget_seconds
        (None where the experiment is not `timed`: its runs fix their steps) and overrides;
        `own_fields`: the TrainConfig fields the experiment sets itself. Nothing
        is written before every check passed: ConfigError for bad seeds, budget or overrides;
        TrainingError when the folder cannot be made, its record is damaged, or it holds another
        experiment or the same one with other settings."""
        check_request(experiment, settings, SET_BY_EVERY_EXPERIMENT | own_fields, timed=timed)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # --out names a file, or a path through one
            raise TrainingError(
                f"{folder}: cannot make the experiment's folder there ({error.strerror}); "
                "choose another --out"
            ) from None
        path = folder / RECORD_NAME
        if not os.path.lexists(path):
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
        content = read_record(path)
        if content["experiment"] != experiment:
            raise TrainingError(
                f"{folder} holds the {reprlib.repr(content['experiment'])} experiment; use "
                "another --out"
            )
        saved = content["settings"]
        for key in sorted(set(saved) | set(settings)):
            if saved.get(key) != settings.get(key):
                raise TrainingError(
                    f"{path} was made with {key}={reprlib.repr(saved.get(key))}, this command "
                    f"asks for {settings.get(key)!r}; use another --out to change it"
                )
        # Equal, but as this command has them: a saved [false, true] equals seeds [0, 1].
        return cls(folder, {**content, "settings": settings})

    @property
    def runs(self) -> dict[str, dict[str, Any]]:
        return self.content["runs"]

    def save(self) -> None:
        atomic_write_json(self.folder / RECORD_NAME, self.content)

    def run_folder(self, key: str) -> Path:
        return self.folder / "runs" / key

    def configured(self, config: TrainConfig) -> TrainConfig:
        """`config` with the settings' overrides applied, as every run of the experiment; no
        report of its own (the experiment's report.html shows every run)."""
        configured = parse_overrides(config, self.content["settings"]["overrides"])
        return dataclasses.replace(configured, report=False)

    def train(self, key: str, config: TrainConfig) -> dict[str, Any]:
        """The result of run `key` (top1, steps, seconds): from the record when it finished
        before, else trained now (resumed where it stopped) and recorded."""
        recorded = self.runs.get(key, {})
        if "steps" in recorded:
            if recorded["top1"] is None and config.test_split:
                raise TrainingError(
                    f"{self.folder / RECORD_NAME}: runs[{key!r}].top1 is null, but the run is "
                    f"evaluated on {config.test_split!r}; delete the entry to read it again "
                    "from the run's folder"
                )
            return recorded
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

    def measured(self, key: str, name: str, measure: Callable[[], float]) -> float:
        """A number `name` measured on finished run `key` (e.g. its top-1 with more test-time
        views, or its evaluation's images per second): from the record, else `measure()` now,
        recorded."""
        numbers = self.runs[key].setdefault("measured", {})
        if name not in numbers:
            numbers[name] = float(measure())
            self.save()
        return numbers[name]


def check_request(
    experiment: str, settings: dict[str, Any], fixed: frozenset[str], *, timed: bool = True
) -> None:
    """Refuse in one line (ConfigError), before anything is written or trained: seeds that are
    not 1 to MOST_SEEDS distinct whole numbers, a budget that is not a positive number of
    seconds (or, where the experiment is not `timed`, any budget), and overrides that are
    malformed or change a field in `fixed`."""
    seeds, budget = settings["seeds"], settings["budget_seconds"]
    if not (
        1 <= len(seeds) <= MOST_SEEDS
        and len(set(seeds)) == len(seeds)
        and all(type(seed) is int and seed >= 0 for seed in seeds)
    ):
        raise ConfigError(
            f"seeds: expected 1 to {MOST_SEEDS} distinct whole numbers >= 0, got "
            f"{reprlib.repr(seeds)}"
        )
    if not timed and budget is not None:
        raise ConfigError(
            f"budget_seconds: the {experiment} experiment's runs fix their steps; it takes no "
            f"time budget, got {budget!r}"
        )
    if timed and not (type(budget) in (int, float) and 0 < budget < math.inf):
        raise ConfigError(f"budget_seconds: expected a positive number of seconds, got {budget!r}")
    for assignment in settings["overrides"]:
        name = assignment.partition("=")[0]
        if name in fixed:
            raise ConfigError(
                f"--set {name}: the {experiment} experiment sets {name} itself; --set may change "
                f"any field but {', '.join(sorted(fixed))}"
            )
    parse_overrides(TrainConfig(steps=1), settings["overrides"])


def read_record(path: Path) -> dict[str, Any]:
    """The record at `path`, every value a later run reads checked; TrainingError naming the file
    and the first bad key (or why it is no record at all)."""
    data = read_capped(path, MOST_RECORD_BYTES, what="record", error=TrainingError)
    try:
        content = json.loads(data)
        # A lone surrogate (a "\ud800" escape) could be read but not written back or reported.
        json.dumps(content, ensure_ascii=False).encode()
    except (ValueError, RecursionError) as error:  # RecursionError: nesting too deep to parse
        raise TrainingError(f"{path}: not an experiment record ({error})") from None
    problem = next(_record_problems(content), None)
    if problem is not None:
        raise TrainingError(f"{path}: {problem}; fix it, or use another --out")
    return content


def _record_problems(content: Any) -> Iterator[str]:
    """What is wrong with a parsed record, as "KEY problem", the first problem first (a key is
    checked only once its container has been found sound)."""
    if not isinstance(content, dict):
        yield f"not an experiment record ({reprlib.repr(content)} is no JSON object)"
        return
    for key in ("experiment", "command", "machine", "started"):
        if not isinstance(content.get(key), str):
            yield f"{key} must be a string, got {reprlib.repr(content.get(key))}"
    for key in ("settings", "runs"):
        if not isinstance(content.get(key), dict):
            yield f"{key} must be a JSON object, got {reprlib.repr(content.get(key))}"
    for name, run in content["runs"].items():
        where = f"runs[{reprlib.repr(name)}]"
        if not isinstance(run, dict) or not run:
            yield f"{where} must be a JSON object of {', '.join(RUN_FIELDS)}"
            continue
        for field, value in run.items():
            if field not in RUN_FIELDS:
                yield f"{where} has {reprlib.repr(field)}, not one of {', '.join(RUN_FIELDS)}"
            elif not RUN_FIELDS[field][0](value):
                yield f"{where}.{field} must be {RUN_FIELDS[field][1]}, got {reprlib.repr(value)}"
        if 0 < len(run.keys() & set(TRAINED)) < len(TRAINED):
            yield f"{where} needs all of {', '.join(TRAINED)} or none of them"
