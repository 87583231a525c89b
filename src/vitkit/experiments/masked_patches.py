"""`vitkit experiment mpp`: the paper's masked patch prediction (section 4.6, Appendix B.1.2) at
equal training time.

The paper pre-trains ViT-B/16 on JFT without labels, predicting the 3-bit mean colour of the
corrupted half of the patches (models/masked_patches.py), then fine-tunes it on ImageNet: 79.9%
top-1, 2 points above the same model trained from scratch and 4 below supervised pre-training.
Here, per seed, the small ViT of the posemb experiment (ViT-CIFAR/4 at 16 px, the demo's recipe)
trains three arms on CIFAR-10:

- scratch: supervised from scratch for the whole budget;
- mpp_then_finetune: masked patch prediction for half the budget (no labels), then supervised
  fine-tuning from its encoder, with a new head, for the other half: equal total time;
- scratch_half: supervised from scratch for the fine-tuning's time alone: what the
  self-supervised initialisation adds at equal labelled time.

And the frozen representations' 10-shot linear accuracy: the masked-patch encoder against the
same architecture untrained (random initialisation) and the supervised scratch model.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

import torch

from vitkit.analysis.page import Page
from vitkit.analysis.plots import plot_arms
from vitkit.data import open_dataset
from vitkit.data.arrays import ArrayDataset
from vitkit.experiments.record import FEWSHOT_SEEDS, ExperimentRecord
from vitkit.experiments.report_sections import (
    add_how_it_was_run,
    add_inspection_figures,
    add_training_curves,
)
from vitkit.experiments.statistics import PairedDifference, Spread
from vitkit.training.build import new_model
from vitkit.training.config import TrainConfig
from vitkit.training.demo import STAGE_PRESETS
from vitkit.training.presets import get_preset

NAME = "mpp"
DEFAULT_SEEDS = 3
DEFAULT_BUDGET_SECONDS = 240.0  # per arm: 2.5 budgets per seed, 3 seeds: about 30 minutes
MODEL = {"cpu": "ViT-CIFAR/4", "gpu": "ViT-CIFAR-L/4"}
PRETRAIN_SHARE = 0.5  # of the mpp_then_finetune arm's budget
SHOTS = 10
ARMS = {
    "scratch": "supervised from scratch for the whole budget",
    "mpp_then_finetune": "masked patch prediction for half the budget, then fine-tuned",
    "scratch_half": "supervised from scratch for half the budget",
}
# The frozen representations compared by few-shot accuracy: name -> the run it is read from.
REPRESENTATIONS = {
    "random init": "random_init",
    "masked patches": "mpp",
    "supervised": "scratch",
}
# Section 4.6, ImageNet top-1 of ViT-B/16: from scratch, and fine-tuned after masked patch
# prediction on JFT.
PAPER_TOP1 = {"scratch": 0.779, "mpp_then_finetune": 0.799}
# What the masked patch pre-training changes against the supervised runs, fine-tuning from it,
# the seed, and the model the report names.
OWN_FIELDS = frozenset(
    {"seed", "model", "task", "init", "test_split", "eval_flip", "label_smoothing"}
)


def stage_configs(
    arm: str,
    *,
    data: str,
    seed: int,
    budget_seconds: float,
    pretrain_folder: Path,
    hardware: Literal["cpu", "gpu"] = "cpu",
) -> list[tuple[str, TrainConfig]]:
    """The training stages of one arm and seed, in order, as (run name, config); fine-tuning
    starts from `pretrain_folder`, where the masked patch prediction trains."""
    supervised = dataclasses.replace(
        get_preset(STAGE_PRESETS[hardware][0]), data=data, model=MODEL[hardware], seed=seed,
        budget_seconds=budget_seconds,
    )  # fmt: skip
    half = PRETRAIN_SHARE * budget_seconds
    if arm == "scratch":
        return [("scratch", supervised)]
    if arm == "scratch_half":
        return [("scratch_half", dataclasses.replace(supervised, budget_seconds=half))]
    if arm == "mpp_then_finetune":
        pretrain = dataclasses.replace(
            supervised, task="masked_patches", test_split="", eval_flip=False,
            label_smoothing=0.0, budget_seconds=half,
        )  # fmt: skip
        finetune = dataclasses.replace(
            supervised, init=str(pretrain_folder), budget_seconds=budget_seconds - half
        )
        return [("mpp", pretrain), ("mpp_then_finetune", finetune)]
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
) -> dict[str, dict[str, list[float]]]:
    """Train every arm for every seed (resuming what the folder holds), measure the few-shot
    accuracies, write the report; returns {"top1": {arm: per seed}, "fewshot": {...}}."""
    settings = {
        "data": data,
        "seeds": seeds,
        "budget_seconds": budget_seconds,
        "overrides": overrides or [],
        "hardware": hardware,
        "model": MODEL[hardware],
        "pretrain_share": PRETRAIN_SHARE,
        "shots": SHOTS,
    }
    train_set, test_set = open_dataset(data, split="train"), open_dataset(data, split="test")
    record = ExperimentRecord.open(out, NAME, settings, command, own_fields=OWN_FIELDS)
    started = time.perf_counter()
    results: dict[str, dict[str, list[float]]] = {
        "top1": {arm: [] for arm in ARMS},
        "fewshot": {name: [] for name in REPRESENTATIONS},
    }
    runs: dict[str, list[list[str]]] = {arm: [] for arm in ARMS}
    for seed in seeds:
        for arm in ARMS:
            stages = stage_configs(
                arm, data=data, seed=seed, budget_seconds=budget_seconds, hardware=hardware,
                pretrain_folder=record.run_folder(f"seed{seed}/mpp"),
            )  # fmt: skip
            runs[arm].append([f"seed{seed}/{stage}" for stage, _ in stages])
            for key, (_, config) in zip(runs[arm][-1], stages, strict=True):
                result = record.train(key, config)
            results["top1"][arm].append(result["top1"])
        untrained = new_model(record.configured(stages[0][1]), device=torch.device("cpu"),
                              num_classes=len(train_set.classes))  # fmt: skip
        for name, run_name in REPRESENTATIONS.items():
            model = untrained if run_name == "random_init" else None
            results["fewshot"][name].append(
                record.fewshot(
                    f"seed{seed}/{run_name}", train_set, test_set, shots=SHOTS, model=model
                )  # fmt: skip
            )
    write_report(record, results, runs, test_set, seconds=time.perf_counter() - started)
    return results


def write_report(
    record: ExperimentRecord,
    results: dict[str, dict[str, list[float]]],
    runs: dict[str, list[list[str]]],
    test_set: ArrayDataset,
    *,
    seconds: float,
) -> Path:
    """report.html, mpp_top1.png, mpp_fewshot.png and curves.png in the experiment folder;
    `runs`: each arm's run keys per seed, in training order. The first seed's trained models
    (and the masked-patch encoder before fine-tuning) get inspection figures."""
    settings = record.content["settings"]
    seeds, budget = settings["seeds"], settings["budget_seconds"]
    top1, fewshot = results["top1"], results["fewshot"]
    title = f"{settings['model']}, {budget:g} s per arm, {len(seeds)} seeds"
    page = Page("Masked patch prediction (paper, section 4.6 and Appendix B.1.2)")
    page.paragraph(
        "The paper's self-supervised pre-training: half of each image's patch embeddings are "
        "corrupted (80% replaced by a learned [mask] embedding, 10% by another patch's, 10% "
        "kept) and the model predicts each corrupted patch's 3-bit mean colour (512 classes). "
        "Fine-tuned on ImageNet, its ViT-B/16 reached 79.9% top-1 against 77.9% from scratch. "
        "Here a small ViT on CIFAR-10 at equal training time; the labels are used only by the "
        "supervised runs."
    )
    page.heading("Result")
    equal_time = PairedDifference.of(top1["mpp_then_finetune"], top1["scratch"])
    equal_labels = PairedDifference.of(top1["mpp_then_finetune"], top1["scratch_half"])
    frozen = PairedDifference.of(fewshot["masked patches"], fewshot["random init"])
    page.paragraph(
        f"Pre-training with masked patch prediction then fine-tuning, against training from "
        f"scratch for the same total time: {equal_time.percent()}; against training from scratch "
        f"for the fine-tuning's time alone: {equal_labels.percent()}. Frozen, the masked-patch "
        f"encoder's {SHOTS}-shot accuracy minus a randomly initialised one's: "
        f"{frozen.percent()} (differences with their 95% intervals over the seeds)."
    )
    rows = []
    for arm, values in top1.items():
        steps = [record.runs[f"seed{seed}/{arm}"]["steps"] for seed in seeds]
        paper = PAPER_TOP1.get(arm)
        rows.append([arm, ARMS[arm], *(f"{value:.2%}" for value in values),
                     Spread.of(values).percent(), f"{sum(steps) / len(steps):.0f}",
                     f"{paper:.1%}" if paper else ""])  # fmt: skip
    page.table(
        ["arm", "what it trains", *(f"seed {seed}" for seed in seeds), "top-1, mean ± sd",
         "steps (last stage)", "paper: ImageNet top-1 (ViT-B/16)"],
        rows,
    )  # fmt: skip
    page.table(
        ["frozen representation", f"{SHOTS}-shot, mean ± sd"],
        [[name, Spread.of(values).percent()] for name, values in fewshot.items()],
    )
    top1_plot = plot_arms(top1, record.folder / "mpp_top1.png", ylabel="test top-1 (%)",
                          title=title)  # fmt: skip
    fewshot_plot = plot_arms(
        fewshot, record.folder / "mpp_fewshot.png",
        ylabel=f"{SHOTS}-shot linear accuracy (%)", title=title,
    )  # fmt: skip
    page.figure(top1_plot, "Test top-1 per arm: one dot per seed, the bar at the mean.")
    page.figure(
        fewshot_plot,
        f"{SHOTS}-shot linear accuracy of each frozen representation (mean over {FEWSHOT_SEEDS} "
        f"draws of the {SHOTS} images per class), one dot per training seed.",
    )
    add_training_curves(
        page, record, runs,
        note="The first half of mpp_then_finetune is the masked patch prediction's loss (over "
        "512 colours), which has no test top-1.",
    )  # fmt: skip
    first = seeds[0]
    figure_runs = {"masked-patch encoder, before fine-tuning": f"seed{first}/mpp"}
    figure_runs |= {arm: f"seed{first}/{arm}" for arm in ARMS}
    add_inspection_figures(page, record, figure_runs, test_set)
    add_how_it_was_run(
        page, record, seconds=seconds,
        layout="runs/seedN/RUN (mpp: the masked patch pre-training)",
    )  # fmt: skip
    path = record.folder / "report.html"
    page.write(path)
    return path
