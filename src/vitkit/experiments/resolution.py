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

from vitkit.analysis.page import Page
from vitkit.analysis.plots import plot_arms
from vitkit.experiments.engine import Experiment, Outcome, Request
from vitkit.experiments.record import ExperimentRecord
from vitkit.experiments.statistics import PairedDifference, Spread
from vitkit.training.config import TrainConfig
from vitkit.training.demo import STAGE_PRESETS
from vitkit.training.presets import get_preset

PRETRAIN_SHARE = 0.75  # of the low_then_high arm's budget (the demo's 0.6 : 0.2)
ARMS = {
    "low": "16 px for the whole budget",
    "low_then_high": "16 px for 3/4 of the budget, then fine-tuned at 32 px (the paper's way)",
    "high": "32 px for the whole budget",
}


def arm_runs(
    arm: str, seed: int, request: Request, record: ExperimentRecord
) -> list[tuple[str, TrainConfig]]:
    """The runs of one arm and seed, in order; the fine-tune starts from the pre-training run's
    folder."""
    pretrain_preset, finetune_preset = STAGE_PRESETS[request.hardware]
    pretrain = dataclasses.replace(get_preset(pretrain_preset), data=request.data, seed=seed)
    budget = request.budget_seconds
    if arm == "low":
        return [("low", dataclasses.replace(pretrain, budget_seconds=budget))]
    if arm == "high":
        high = get_preset(finetune_preset).resolution
        return [("high", dataclasses.replace(pretrain, resolution=high, budget_seconds=budget))]
    first = dataclasses.replace(pretrain, budget_seconds=PRETRAIN_SHARE * budget)
    second = dataclasses.replace(
        get_preset(finetune_preset),
        data=request.data,
        seed=seed,
        init=str(record.run_folder(f"seed{seed}/low_then_high-pretrain")),
        budget_seconds=(1 - PRETRAIN_SHARE) * budget,
    )
    return [("low_then_high-pretrain", first), ("low_then_high", second)]


def write_result(page: Page, record: ExperimentRecord, outcome: Outcome) -> None:
    """The paired differences with a verdict, each arm's top-1 per seed, and their plot."""
    settings = record.content["settings"]
    seeds, top1 = settings["seeds"], outcome.top1
    paper_way = PairedDifference.of(top1["low_then_high"], top1["low"])
    against_high = PairedDifference.of(top1["low_then_high"], top1["high"])
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
    plot = plot_arms(
        top1, record.folder / "resolution.png", ylabel="test top-1 (%)",
        title=f"Equal training time ({settings['budget_seconds']:g} s per arm), {len(seeds)} seeds",
    )  # fmt: skip
    page.figure(plot, "Test top-1 per arm: one dot per seed, the bar at the mean.")


EXPERIMENT = Experiment(
    name="resolution",
    title="Fine-tuning at a higher resolution (paper, section 3.2)",
    introduction=(
        "The paper pre-trains at one resolution and fine-tunes at a higher one, keeping the "
        "patch size (a longer sequence), resizing the position embeddings by 2-D interpolation "
        "and replacing the head; it reports this as beneficial without an equal-time comparison "
        "(its Table 2 models are all fine-tuned at 384 px after 224 px pre-training). Here every "
        "arm trains for the same time."
    ),
    default_seeds=3,
    default_budget_seconds=180.0,  # per arm: 3 arms x 3 seeds is about 30 minutes on 2 CPU cores
    # What the arms differ in (and the seed): the report's "16 px" and "32 px" must be what trained.
    own_fields=frozenset({"seed", "resolution", "init"}),
    arms=tuple(ARMS),
    runs=arm_runs,
    result=write_result,
    layout="runs/seedN/ARM",
    settings=lambda hardware: {"pretrain_share": PRETRAIN_SHARE},
)
