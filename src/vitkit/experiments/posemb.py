"""`vitkit experiment posemb`: the paper's Appendix D.4 (Table 8), how to give the model the
patches' positions.

Each seed trains the same plain ViT (the demo's transformer, ViT-CIFAR/4, on CIFAR-10 at 16 px:
a 4x4 grid of patches; no ResNet stem, whose convolutions would carry position information of
their own) with each `pos_embed_type` for the same time budget and the demo's pre-training
recipe, then measures test top-1 and the paper's 5-shot linear accuracy of the frozen
representation. The paper's finding: without position information ViT-B/16 is clearly worse
(ImageNet 5-shot 61.4% against 64.2%), and how positions are encoded barely matters (1-D, 2-D
and relative within 0.2 points).
"""

from __future__ import annotations

import dataclasses

from vitkit.analysis.page import Page
from vitkit.analysis.plots import plot_arms
from vitkit.experiments.engine import Experiment, Outcome, Request
from vitkit.experiments.record import FEWSHOT_SEEDS, ExperimentRecord
from vitkit.experiments.statistics import PairedDifference, Spread
from vitkit.training.config import TrainConfig
from vitkit.training.demo import STAGE_PRESETS
from vitkit.training.presets import get_preset

MODEL = {"cpu": "ViT-CIFAR/4", "gpu": "ViT-CIFAR-L/4"}
SHOTS = 5
# pos_embed_type -> (the paper's name, its ImageNet 5-shot linear accuracy with ViT-B/16, Table 8
# "Default/Stem" column; None where the paper has no such row).
VARIANTS: dict[str, tuple[str, float | None]] = {
    "none": ("no position embedding", 0.61382),
    "learned_1d": ("learned 1-D (the paper's default)", 0.64206),
    "learned_2d": ("learned 2-D (X and Y halves)", 0.64001),
    "relative": ("relative (a learned attention bias per offset)", 0.64032),
    "sincos_2d": ("fixed 2-D sin-cos (big_vision; not in the paper)", None),
}
BASELINE = "learned_1d"


def variant_run(
    variant: str, seed: int, request: Request, record: ExperimentRecord
) -> list[tuple[str, TrainConfig]]:
    """The one run of a variant: the demo's pre-training recipe with the plain ViT."""
    config = dataclasses.replace(
        get_preset(STAGE_PRESETS[request.hardware][0]), data=request.data,
        model=MODEL[request.hardware], budget_seconds=request.budget_seconds, seed=seed,
        model_fields=f"pos_embed_type={variant}",
    )  # fmt: skip
    return [(variant, config)]


def write_result(page: Page, record: ExperimentRecord, outcome: Outcome) -> None:
    """Each variant's top-1 (paired with the paper's default) and few-shot accuracy beside the
    paper's, and both as plots."""
    settings = record.content["settings"]
    title = (
        f"{settings['model']}, {settings['budget_seconds']:g} s per run, "
        f"{len(settings['seeds'])} seeds"
    )
    rows = []
    for variant, (name, paper) in VARIANTS.items():
        top1, fewshot = outcome.top1[variant], outcome.fewshot[variant]
        against = (
            ""
            if variant == BASELINE
            else PairedDifference.of(top1, outcome.top1[BASELINE]).percent()
        )
        rows.append([
            variant, name, Spread.of(top1).percent(), against, Spread.of(fewshot).percent(),
            f"{paper:.2%}" if paper is not None else "",
        ])  # fmt: skip
    page.table(
        ["pos_embed_type", "what it is", "top-1, mean ± sd", "top-1 minus learned_1d",
         f"{SHOTS}-shot, mean ± sd", f"paper: ImageNet {SHOTS}-shot (ViT-B/16)"],
        rows,
    )  # fmt: skip
    top1_plot = plot_arms(
        outcome.top1, record.folder / "posemb_top1.png", ylabel="test top-1 (%)", title=title
    )
    fewshot_plot = plot_arms(
        outcome.fewshot, record.folder / "posemb_fewshot.png",
        ylabel=f"{SHOTS}-shot linear accuracy (%)", title=title,
    )  # fmt: skip
    page.figure(top1_plot, "Test top-1 per variant: one dot per seed, the bar at the mean.")
    page.figure(
        fewshot_plot,
        f"{SHOTS}-shot linear accuracy of the frozen representation (mean over "
        f"{FEWSHOT_SEEDS} draws of the {SHOTS} images per class), one dot per training seed.",
    )


EXPERIMENT = Experiment(
    name="posemb",
    title="Position embeddings (paper, Appendix D.4, Table 8)",
    introduction=(
        "The paper trains ViT-B/16 with each way of encoding the patches' positions and compares "
        "ImageNet 5-shot linear accuracy: without position information the model is clearly "
        "worse, and the kind of encoding barely matters. Here every variant trains the same "
        "small ViT on CIFAR-10 for the same time."
    ),
    default_seeds=3,
    default_budget_seconds=90.0,  # per run: 5 variants x 3 seeds is about 30 minutes on 2 cores
    # The variant (model_fields), the seed, and the model the report names.
    own_fields=frozenset({"seed", "model_fields", "model"}),
    arms=tuple(VARIANTS),
    runs=variant_run,
    result=write_result,
    layout="runs/seedN/VARIANT",
    settings=lambda hardware: {"model": MODEL[hardware], "shots": SHOTS},
    shots=SHOTS,
)
