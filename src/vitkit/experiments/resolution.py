"""`vitkit experiment resolution`: the paper's section 3.2 at equal training time.

"It is often beneficial to fine-tune at higher resolution than pre-training": the paper keeps the
patch size, so the sequence grows, resizes the learned position embeddings by 2-D interpolation
and replaces the head. Each seed trains three arms for the same time budget, with the demo's
recipes (R+ViT-CIFAR/4 on CIFAR-10 on a CPU; `hardware="gpu"`: the demo's GPU recipe):

- low: 16 px for the whole budget;
- low_then_high: 16 px for 3/4 of it (the demo's split), then fine-tuned at 32 px for the rest
  (the paper's procedure);
- high: 32 px for the whole budget (4x the tokens, so about 4x fewer steps).

The report gives each arm's top-1 over the seeds and the paired difference low_then_high - low
(and low_then_high - high) with its 95% confidence interval. Time budgets make the arms equal in
time on this machine (a faster machine trains every arm longer); the runs' step counts are in
experiment.json.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

from vitkit.analysis.page import Page
from vitkit.analysis.plots import plot_arms
from vitkit.data import open_dataset
from vitkit.data.arrays import ArrayDataset
from vitkit.experiments.record import ExperimentRecord
from vitkit.experiments.report_sections import (
    add_how_it_was_run,
    add_inspection_figures,
    add_training_curves,
)
from vitkit.experiments.statistics import PairedDifference, Spread
from vitkit.training.config import TrainConfig
from vitkit.training.demo import STAGE_PRESETS
from vitkit.training.presets import get_preset

NAME = "resolution"
DEFAULT_SEEDS = 3
DEFAULT_BUDGET_SECONDS = 180.0  # per arm: 3 arms x 3 seeds is about 30 minutes on 2 CPU cores
PRETRAIN_SHARE = 0.75  # of the low_then_high arm's budget (the demo's 0.6 : 0.2)
ARMS = {
    "low": "16 px for the whole budget",
    "low_then_high": "16 px for 3/4 of the budget, then fine-tuned at 32 px (the paper's way)",
    "high": "32 px for the whole budget",
}
# What the arms differ in (and the seed): the report's "16 px" and "32 px" must be what trained.
OWN_FIELDS = frozenset({"seed", "resolution", "init"})


def arm_configs(
    arm: str,
    *,
    data: str,
    seed: int,
    budget_seconds: float,
    pretrain_folder: Path,
    hardware: Literal["cpu", "gpu"] = "cpu",
) -> list[tuple[str, TrainConfig]]:
    """The training stages of one arm and seed, in order, as (stage name, config); the
    fine-tuning stage starts from `pretrain_folder`, where the arm's first stage trains."""
    pretrain_preset, finetune_preset = STAGE_PRESETS[hardware]
    pretrain = dataclasses.replace(get_preset(pretrain_preset), data=data, seed=seed)
    finetune = get_preset(finetune_preset)
    if arm == "low":
        return [("low", dataclasses.replace(pretrain, budget_seconds=budget_seconds))]
    if arm == "high":
        return [(
            "high",
            dataclasses.replace(
                pretrain, resolution=finetune.resolution, budget_seconds=budget_seconds
            ),
        )]  # fmt: skip
    if arm == "low_then_high":
        first = dataclasses.replace(pretrain, budget_seconds=PRETRAIN_SHARE * budget_seconds)
        second = dataclasses.replace(
            finetune,
            data=data,
            seed=seed,
            init=str(pretrain_folder),
            budget_seconds=(1 - PRETRAIN_SHARE) * budget_seconds,
        )
        return [("low_then_high-pretrain", first), ("low_then_high", second)]
    raise ValueError(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")


def run(
    data: str,
    out: Path,
    *,
    seeds: list[int],
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    hardware: Literal["cpu", "gpu"] = "cpu",
    overrides: list[str] | None = None,
    command: str = "",
) -> dict[str, list[float]]:
    """Train every arm for every seed (resuming what the folder holds), write the report and
    return each arm's top-1 per seed."""
    settings = {
        "data": data,
        "seeds": seeds,
        "budget_seconds": budget_seconds,
        "overrides": overrides or [],
        "hardware": hardware,
        "pretrain_share": PRETRAIN_SHARE,
    }
    test_set = open_dataset(data, split="test")  # a missing dataset fails before the record
    record = ExperimentRecord.open(out, NAME, settings, command, own_fields=OWN_FIELDS)
    started = time.perf_counter()
    top1: dict[str, list[float]] = {arm: [] for arm in ARMS}
    runs: dict[str, list[list[str]]] = {arm: [] for arm in ARMS}
    for seed in seeds:
        for arm in ARMS:
            stages = arm_configs(
                arm, data=data, seed=seed, budget_seconds=budget_seconds, hardware=hardware,
                pretrain_folder=record.run_folder(f"seed{seed}/low_then_high-pretrain"),
            )  # fmt: skip
            runs[arm].append([f"seed{seed}/{stage}" for stage, _ in stages])
            for key, (_, config) in zip(runs[arm][-1], stages, strict=True):
                result = record.train(key, config)
            top1[arm].append(result["top1"])
    write_report(record, top1, runs, test_set, seconds=time.perf_counter() - started)
    return top1


def write_report(
    record: ExperimentRecord,
    top1: dict[str, list[float]],
    runs: dict[str, list[list[str]]],
    test_set: ArrayDataset,
    *,
    seconds: float,
) -> Path:
    """report.html, resolution.png and curves.png in the experiment folder; `runs`: each arm's
    run keys per seed, in training order; the first seed's models get inspection figures."""
    settings = record.content["settings"]
    seeds = settings["seeds"]
    plot = plot_arms(
        top1, record.folder / "resolution.png", ylabel="test top-1 (%)",
        title=f"Equal training time ({settings['budget_seconds']:g} s per arm), {len(seeds)} seeds",
    )  # fmt: skip
    paper_way = PairedDifference.of(top1["low_then_high"], top1["low"])
    against_high = PairedDifference.of(top1["low_then_high"], top1["high"])
    page = Page("Fine-tuning at a higher resolution (paper, section 3.2)")
    page.paragraph(
        "The paper pre-trains at one resolution and fine-tunes at a higher one, keeping the "
        "patch size (a longer sequence), resizing the position embeddings by 2-D interpolation "
        "and replacing the head; it reports this as beneficial without an equal-time comparison "
        "(its Table 2 models are all fine-tuned at 384 px after 224 px pre-training). Here every "
        "arm trains for the same time."
    )
    page.heading("Result")
    verdict = "helps" if paper_way.low > 0 else "hurts" if paper_way.high < 0 else "is not shown"
    page.paragraph(
        f"Fine-tuning at 32 px after 16 px pre-training, against 16 px for the whole time: "
        f"{paper_way.percent()}. Against 32 px for the whole time: {against_high.percent()}. "
        f"At this budget the higher-resolution fine-tune {verdict} "
        "(judged by whether the 95% interval of the first difference excludes zero)."
    )
    rows = []
    for arm, values in top1.items():
        steps = [record.runs[f"seed{seed}/{arm}"]["steps"] for seed in seeds]
        rows.append([arm, ARMS[arm], *(f"{value:.2%}" for value in values),
                     Spread.of(values).percent(), f"{sum(steps) / len(steps):.0f}"])  # fmt: skip
    page.table(
        ["arm", "what it trains", *(f"seed {seed}" for seed in seeds), "mean ± sd",
         "steps (last stage)"],
        rows,
    )  # fmt: skip
    page.figure(plot, "Test top-1 per arm: one dot per seed, the bar at the mean.")
    add_training_curves(page, record, runs)
    add_inspection_figures(page, record, {arm: keys[0][-1] for arm, keys in runs.items()}, test_set)
    add_how_it_was_run(page, record, seconds=seconds, layout="runs/seedN/ARM")
    path = record.folder / "report.html"
    page.write(path)
    return path
