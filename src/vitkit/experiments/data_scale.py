"""`vitkit experiment data-scale`: the paper's inductive-bias claim (section 4.2, Figs. 3-4) in
miniature.

The paper finds that with little pre-training data ResNets (BiT) beat ViTs, which lack the
convolution's locality and translation equivariance, and that ViTs overtake them as the data grows
(ImageNet -> ImageNet-21k -> JFT-300M; and on nested JFT subsets of 9M to 300M images). Here the
same question at CIFAR scale: a BiT-style ResNet-26 with a pooled head (`BiT-R26-CIFAR`), the
plain ViT-CIFAR/4 and the hybrid R+ViT-CIFAR/4 train at 32 px for the same time on nested,
class-balanced shares of the CIFAR-10 training set (10, 25, 50 and 100%), each with its own
recipe: the ViTs with the demo's (Muon lr 4e-3), the ResNet with AdamW lr 1e-3 (Muon only
orthogonalises transformer matrices). Reported: test top-1 and the paper's 10-shot linear
accuracy of the frozen representation, against the training-set size. At equal time a smaller
share is seen for more epochs.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

from vitkit.analysis.page import Page
from vitkit.analysis.plots import plot_lines
from vitkit.data import open_dataset
from vitkit.data.arrays import ArrayDataset
from vitkit.experiments.record import ExperimentRecord
from vitkit.experiments.report_sections import (
    add_how_it_was_run,
    add_inspection_figures,
    add_training_curves,
)
from vitkit.experiments.statistics import Spread
from vitkit.training.config import TrainConfig
from vitkit.training.demo import STAGE_PRESETS
from vitkit.training.presets import get_preset

NAME = "data-scale"
DEFAULT_SEEDS = 1
DEFAULT_BUDGET_SECONDS = 120.0  # per run: 3 models x 4 shares is about 30 minutes on 2 CPU cores
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
RESOLUTION = 32  # the ResNet's stride is 32: one position at 32 px
SHOTS = 10
# name in the report -> (model preset, changes to the demo's pre-training recipe)
MODELS: dict[str, tuple[str, dict[str, object]]] = {
    "ResNet (BiT-R26-CIFAR)": ("BiT-R26-CIFAR", {"optimizer": "adamw", "lr": 1e-3}),
    "ViT (ViT-CIFAR/4)": ("ViT-CIFAR/4", {}),
    "hybrid (R+ViT-CIFAR/4)": ("R+ViT-CIFAR/4", {}),
}
# What the runs differ in (the model with its recipe, the share, the seed) and the resolution the
# report names.
OWN_FIELDS = frozenset({"seed", "model", "optimizer", "lr", "train_fraction", "resolution"})


def run_config(
    model: str,
    fraction: float,
    *,
    data: str,
    seed: int,
    budget_seconds: float,
    hardware: Literal["cpu", "gpu"] = "cpu",
) -> TrainConfig:
    """The training run of one model on one share of the data."""
    preset, changes = MODELS[model]
    return dataclasses.replace(
        get_preset(STAGE_PRESETS[hardware][0]), data=data, model=preset, resolution=RESOLUTION,
        train_fraction=fraction, seed=seed, budget_seconds=budget_seconds, **changes,
    )  # fmt: skip


def run_key(model: str, fraction: float, seed: int) -> str:
    """The record's key and folder name of one run, e.g. "seed0/ViT-CIFAR-4/0.25"."""
    return f"seed{seed}/{MODELS[model][0].replace('/', '-')}/{fraction:g}"


def run(
    data: str,
    out: Path,
    *,
    seeds: list[int],
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    hardware: Literal["cpu", "gpu"] = "cpu",
    overrides: list[str] | None = None,
    command: str = "",
) -> dict[str, dict[str, list[list[float]]]]:
    """Train and evaluate every model on every share for every seed (resuming what the folder
    holds), write the report; returns {"top1" | "fewshot": {model: [per share: per seed]}}."""
    settings = {
        "data": data,
        "seeds": seeds,
        "budget_seconds": budget_seconds,
        "overrides": overrides or [],
        "hardware": hardware,
        "fractions": list(FRACTIONS),
        "shots": SHOTS,
        "resolution": RESOLUTION,
        "subset_seed": 0,
    }
    train_set, test_set = open_dataset(data, split="train"), open_dataset(data, split="test")
    record = ExperimentRecord.open(out, NAME, settings, command, own_fields=OWN_FIELDS)
    started = time.perf_counter()
    results: dict[str, dict[str, list[list[float]]]] = {
        metric: {model: [[] for _ in FRACTIONS] for model in MODELS}
        for metric in ("top1", "fewshot")
    }
    for seed in seeds:
        for position, fraction in enumerate(FRACTIONS):
            for model in MODELS:
                key = run_key(model, fraction, seed)
                config = run_config(model, fraction, data=data, seed=seed,
                                    budget_seconds=budget_seconds, hardware=hardware)  # fmt: skip
                result = record.train(key, config)
                fewshot = record.fewshot(key, train_set, test_set, shots=SHOTS)
                results["top1"][model][position].append(result["top1"])
                results["fewshot"][model][position].append(fewshot)
    write_report(record, results, test_set, train_images=len(train_set),
                 seconds=time.perf_counter() - started)  # fmt: skip
    return results


def gap_verdict(top1: dict[str, list[list[float]]]) -> str:
    """Whether the ResNet's lead over the plain ViT (mean top-1) shrinks from the smallest share
    to the whole set: the paper's claim, in one sentence with the numbers."""
    resnet, vit = (Spread.of(top1[name][0]).mean for name in list(MODELS)[:2])
    resnet_all, vit_all = (Spread.of(top1[name][-1]).mean for name in list(MODELS)[:2])
    first, last = resnet - vit, resnet_all - vit_all
    trend = "narrows" if last < first else "widens" if last > first else "stays the same"
    return (
        f"ResNet minus ViT top-1: {first * 100:+.2f} points at {FRACTIONS[0]:.0%} of the data, "
        f"{last * 100:+.2f} at {FRACTIONS[-1]:.0%}: the gap {trend} with more data at this scale."
    )


def write_report(
    record: ExperimentRecord,
    results: dict[str, dict[str, list[list[float]]]],
    test_set: ArrayDataset,
    *,
    train_images: int,
    seconds: float,
) -> Path:
    """report.html, data_scale_top1.png, data_scale_fewshot.png and curves.png (on the whole
    training set) in the experiment folder, with the inspection figures of the first seed's
    models trained on the whole set."""
    settings = record.content["settings"]
    sizes = [round(fraction * train_images) for fraction in FRACTIONS]
    title = f"{settings['budget_seconds']:g} s per run at {RESOLUTION} px, " + (
        f"{len(settings['seeds'])} seed(s)"
    )
    page = Page("Data size and inductive bias (paper, section 4.2, Figs. 3-4)")
    page.paragraph(
        "The paper: with little data the ResNets (BiT) beat ViT, whose architecture has less "
        "image-specific inductive bias; with more data ViT catches up and overtakes them. Here a "
        "ResNet, a plain ViT and a hybrid train for the same time on nested, class-balanced "
        "shares of the training set."
    )
    page.heading("Result")
    page.paragraph(gap_verdict(results["top1"]))
    for metric, label in (("top1", "test top-1"), ("fewshot", f"{SHOTS}-shot linear accuracy")):
        means = {
            model: [Spread.of(values).mean for values in by_share]
            for model, by_share in results[metric].items()
        }
        rows = [
            [model, *(Spread.of(values).percent() for values in by_share)]
            for model, by_share in results[metric].items()
        ]
        page.table([f"{label}: model", *(f"{size:,} images" for size in sizes)], rows)
        plot = plot_lines(
            sizes, means, record.folder / f"data_scale_{metric}.png", xlabel="training images",
            ylabel=f"{label} (%)", title=title, log_x=True,
        )  # fmt: skip
        page.figure(plot, f"{label.capitalize()} against the number of training images.")
    seeds, whole = settings["seeds"], FRACTIONS[-1]
    curves = {model: [[run_key(model, whole, seed)] for seed in seeds] for model in MODELS}
    add_training_curves(page, record, curves, note=f"On {whole:.0%} of the training set.")
    add_inspection_figures(
        page, record, {model: run_key(model, whole, seeds[0]) for model in MODELS}, test_set
    )
    add_how_it_was_run(page, record, seconds=seconds, layout="runs/seedN/MODEL/SHARE")
    path = record.folder / "report.html"
    page.write(path)
    return path
