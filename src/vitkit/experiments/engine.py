"""What every experiment does the same way: arms x seeds at equal budgets, resumed from
experiment.json, measured, and reported.

An experiment is an `Experiment`: its name and defaults, the TrainConfig fields it sets itself,
the runs each arm trains for a seed, what is measured on the finished models, and its report's
own result section. `run_experiment` does the rest for all of them:

1. the settings (data, seeds, budget, overrides, hardware and the experiment's own) are checked
   and the folder's record opened (record.py), before anything trains. The budget is seconds
   per arm, equal time on this machine; an experiment whose runs fix their steps instead (the
   benchmarks', whose accuracies must not depend on the machine's speed or load) takes none;
2. seeds in the outer loop, arms in the inner, each arm's runs in order: a run finished before is
   read from the record, an interrupted one resumes, so a stopped experiment leaves every arm
   with the same seeds and the same command goes on;
3. after each seed's arms, the few-shot accuracy of the representations the experiment names
   (by default each arm's final model), and whatever else the experiment measures on them
   (recorded per run, so a resumed experiment does not measure again);
4. report.html: the experiment's result section, then the sections every experiment shares
   (report_sections.py: training curves, inspection figures, how it was run).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vitkit.analysis.page import Page
from vitkit.data import open_dataset
from vitkit.data.arrays import ArrayDataset
from vitkit.experiments.record import ExperimentRecord
from vitkit.experiments.report_sections import (
    add_how_it_was_run,
    add_inspection_figures,
    add_training_curves,
)
from vitkit.models.vit import VisionTransformer
from vitkit.training.config import TrainConfig


@dataclass(frozen=True)
class Request:
    """What the command asked for."""

    data: str
    seeds: list[int]
    budget_seconds: float | None  # None where the experiment's runs fix their steps
    hardware: Literal["cpu", "gpu"] = "cpu"


@dataclass(frozen=True)
class Seed:
    """One seed's finished arms, for what an experiment measures on them."""

    number: int
    request: Request
    keys: dict[str, list[str]]  # arm -> the record keys of its runs, in training order
    train_set: ArrayDataset | None  # read only for an experiment that measures few-shot accuracy
    test_set: ArrayDataset


@dataclass
class Outcome:
    """What the runs gave, per seed in the request's order: each arm's final top-1 and run keys
    (in training order), and each measured representation's few-shot accuracy."""

    top1: dict[str, list[float | None]] = field(default_factory=dict)
    fewshot: dict[str, list[float]] = field(default_factory=dict)
    runs: dict[str, list[list[str]]] = field(default_factory=dict)
    train_images: int | None = None  # known where the training split was read (few-shot)


# (arm, seed, request, record) -> the arm's runs in training order, as (run name, config); a run's
# record key and folder are "seed{seed}/{run name}".
Runs = Callable[[str, int, Request, ExperimentRecord], list[tuple[str, TrainConfig]]]
# (record, seed) -> representation name -> (the record key its few-shot accuracy is kept under,
# the model to measure, or None for that run's own final model).
Representations = Callable[
    [ExperimentRecord, Seed], dict[str, tuple[str, VisionTransformer | None]]
]


def each_arms_final_model(record: ExperimentRecord, seed: Seed) -> dict[str, tuple[str, None]]:
    """The default representations: every arm's last run."""
    return {arm: (keys[-1], None) for arm, keys in seed.keys.items()}


@dataclass(frozen=True)
class Experiment:
    """One of the paper's findings as arms x seeds at an equal budget (see the module docstring).

    `settings` gives the experiment's own settings for a hardware (recorded beside data, seeds,
    budget_seconds, overrides and hardware; another value refuses the folder). `own_fields` are
    the TrainConfig fields its runs set themselves, which --set may not change. `shots` > 0
    measures that few-shot accuracy of `representations`. `result` writes the report's result
    section; `curves` and `figures` choose the arms whose training curves and the runs whose
    inspection figures the report shows (by default every arm, and the first seed's final
    models; none leaves the section out). `measure` measures more on a seed's finished runs,
    recording each number with `ExperimentRecord.measured`. `timed=False`: the runs fix their
    own steps, and the request has no budget. `data_size` decodes the data's splits at that
    square size (resized and centre-cropped), for data whose images differ in size."""

    name: str
    title: str
    introduction: str
    default_seeds: int
    default_budget_seconds: float | None  # None where not `timed`
    own_fields: frozenset[str]
    arms: tuple[str, ...]
    runs: Runs
    result: Callable[[Page, ExperimentRecord, Outcome], None]
    layout: str  # the runs' folders, e.g. "runs/seedN/ARM"
    settings: Callable[[str], dict[str, object]] = lambda hardware: {}
    shots: int = 0
    representations: Representations = each_arms_final_model
    curves: Callable[[Outcome], dict[str, list[list[str]]]] = lambda outcome: outcome.runs
    curves_note: str = ""
    figures: Callable[[Outcome], dict[str, str]] = lambda outcome: {
        arm: keys[0][-1] for arm, keys in outcome.runs.items()
    }
    measure: Callable[[ExperimentRecord, Seed], None] | None = None
    timed: bool = True
    data_size: int | None = None  # the size the splits are decoded at, where their images differ


def run_experiment(
    experiment: Experiment,
    request: Request,
    out: Path,
    *,
    overrides: list[str] | None = None,
    command: str = "",
) -> Outcome:
    """Train every arm for every seed (resuming what `out` holds), measure, write report.html;
    returns what the runs gave."""
    settings = {
        "data": request.data,
        "seeds": request.seeds,
        "budget_seconds": request.budget_seconds,
        "overrides": overrides or [],
        "hardware": request.hardware,
        **experiment.settings(request.hardware),
    }
    # Missing data fails before the record claims the folder.
    size = None if experiment.data_size is None else (experiment.data_size,) * 2
    test_set = open_dataset(request.data, split="test", image_size=size)
    train_set = (
        open_dataset(request.data, split="train", image_size=size) if experiment.shots else None
    )
    record = ExperimentRecord.open(
        out, experiment.name, settings, command, own_fields=experiment.own_fields,
        timed=experiment.timed,
    )  # fmt: skip
    started = time.perf_counter()
    outcome = Outcome(train_images=None if train_set is None else len(train_set))
    for seed in request.seeds:
        keys = {}
        for arm in experiment.arms:
            runs = experiment.runs(arm, seed, request, record)
            keys[arm] = [f"seed{seed}/{name}" for name, _ in runs]
            for key, (_, config) in zip(keys[arm], runs, strict=True):
                result = record.train(key, config)
            outcome.top1.setdefault(arm, []).append(result["top1"])
            outcome.runs.setdefault(arm, []).append(keys[arm])
        finished = Seed(seed, request, keys, train_set, test_set)
        if experiment.shots:
            for name, (key, model) in experiment.representations(record, finished).items():
                accuracy = record.fewshot(
                    key, train_set, test_set, shots=experiment.shots, model=model
                )
                outcome.fewshot.setdefault(name, []).append(accuracy)
        if experiment.measure is not None:
            experiment.measure(record, finished)
    write_report(experiment, record, outcome, test_set, seconds=time.perf_counter() - started)
    return outcome


def write_report(
    experiment: Experiment,
    record: ExperimentRecord,
    outcome: Outcome,
    test_set: ArrayDataset,
    *,
    seconds: float,
) -> Path:
    """report.html in the experiment's folder: its title and introduction, its result section,
    then the training curves, the inspection figures and how it was run."""
    page = Page(experiment.title)
    page.paragraph(experiment.introduction)
    page.heading("Result")
    experiment.result(page, record, outcome)
    add_training_curves(page, record, experiment.curves(outcome), note=experiment.curves_note)
    figures = experiment.figures(outcome)
    if figures:
        add_inspection_figures(page, record, figures, test_set)
    add_how_it_was_run(page, record, seconds=seconds, layout=experiment.layout)
    path = record.folder / "report.html"
    page.write(path)
    return path
