"""`vitkit experiment data-scale`: the paper's inductive-bias claim (section 4.2, Figs. 3-4) in
miniature.

The paper finds that with little pre-training data ResNets (BiT) beat ViTs, which lack the
convolution's locality and translation equivariance, and that ViTs overtake them as the data grows
(ImageNet -> ImageNet-21k -> JFT-300M; and on nested JFT subsets of 9M to 300M images). Here the
same question at CIFAR scale: a BiT-style ResNet-26 with a pooled head (`BiT-R26-CIFAR`), the
plain ViT-CIFAR/4 and the hybrid R+ViT-CIFAR/4 train at 32 px for the same time on nested,
class-balanced shares of the CIFAR-10 training set (10, 25, 50 and 100%), each with its own
recipe: the ViTs with the demo's (Muon lr 3e-3), the ResNet with AdamW lr 1e-3 (Muon only
orthogonalises transformer matrices). Reported: test top-1 and the paper's 10-shot linear
accuracy of the frozen representation, against the training-set size. At equal time a smaller
share is seen for more epochs.
"""

from __future__ import annotations

import dataclasses

from vitkit.analysis.page import Page
from vitkit.analysis.plots import plot_lines
from vitkit.experiments.engine import Experiment, Outcome, Request
from vitkit.experiments.record import ExperimentRecord
from vitkit.experiments.statistics import Spread
from vitkit.training.config import TrainConfig
from vitkit.training.demo import STAGE_PRESETS
from vitkit.training.presets import get_preset

FRACTIONS = (0.1, 0.25, 0.5, 1.0)
RESOLUTION = 32  # the ResNet's stride is 32: one position at 32 px
SHOTS = 10
# name in the report -> (model preset, changes to the demo's pre-training recipe)
MODELS: dict[str, tuple[str, dict[str, object]]] = {
    "ResNet (BiT-R26-CIFAR)": ("BiT-R26-CIFAR", {"optimizer": "adamw", "lr": 1e-3}),
    "ViT (ViT-CIFAR/4)": ("ViT-CIFAR/4", {}),
    "hybrid (R+ViT-CIFAR/4)": ("R+ViT-CIFAR/4", {}),
}


def arm_name(model: str, fraction: float) -> str:
    """One model on one share, as the arm and its runs' folders name it: "ViT-CIFAR-4/0.25"."""
    return f"{MODELS[model][0].replace('/', '-')}/{fraction:g}"


# Every share in turn, every model on each.
ARMS = {arm_name(model, fraction): (model, fraction) for fraction in FRACTIONS for model in MODELS}


def share_run(
    arm: str, seed: int, request: Request, record: ExperimentRecord
) -> list[tuple[str, TrainConfig]]:
    """The one run of a model on a share of the training set."""
    model, fraction = ARMS[arm]
    preset, changes = MODELS[model]
    config = dataclasses.replace(
        get_preset(STAGE_PRESETS[request.hardware][0]), data=request.data, model=preset,
        resolution=RESOLUTION, train_fraction=fraction, seed=seed,
        budget_seconds=request.budget_seconds, **changes,
    )  # fmt: skip
    return [(arm, config)]


def by_share(values: dict[str, list]) -> dict[str, list[list]]:
    """Per-arm values (per seed) as model -> [per share: per seed]."""
    return {model: [values[arm_name(model, fraction)] for fraction in FRACTIONS]
            for model in MODELS}  # fmt: skip


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


def write_result(page: Page, record: ExperimentRecord, outcome: Outcome) -> None:
    """The verdict, then top-1 and few-shot accuracy per model and share as tables and plots
    against the number of training images."""
    settings = record.content["settings"]
    assert outcome.train_images is not None  # read for the few-shot accuracy
    sizes = [round(fraction * outcome.train_images) for fraction in FRACTIONS]
    title = f"{settings['budget_seconds']:g} s per run at {RESOLUTION} px, " + (
        f"{len(settings['seeds'])} seed(s)"
    )
    results = {"top1": by_share(outcome.top1), "fewshot": by_share(outcome.fewshot)}
    page.paragraph(gap_verdict(results["top1"]))
    for metric, label in (("top1", "test top-1"), ("fewshot", f"{SHOTS}-shot linear accuracy")):
        means = {
            model: [Spread.of(values).mean for values in shares]
            for model, shares in results[metric].items()
        }
        rows = [
            [model, *(Spread.of(values).percent() for values in shares)]
            for model, shares in results[metric].items()
        ]
        page.table([f"{label}: model", *(f"{size:,} images" for size in sizes)], rows)
        plot = plot_lines(
            sizes, means, record.folder / f"data_scale_{metric}.png", xlabel="training images",
            ylabel=f"{label} (%)", title=title, log_x=True,
        )  # fmt: skip
        page.figure(plot, f"{label.capitalize()} against the number of training images.")


EXPERIMENT = Experiment(
    name="data-scale",
    title="Data size and inductive bias (paper, section 4.2, Figs. 3-4)",
    introduction=(
        "The paper: with little data the ResNets (BiT) beat ViT, whose architecture has less "
        "image-specific inductive bias; with more data ViT catches up and overtakes them. Here a "
        "ResNet, a plain ViT and a hybrid train for the same time on nested, class-balanced "
        "shares of the training set."
    ),
    default_seeds=1,
    default_budget_seconds=120.0,  # per run: 3 models x 4 shares is about 30 minutes on 2 cores
    # What the runs differ in (the model with its recipe, the share, the seed) and the resolution
    # the report names.
    own_fields=frozenset({"seed", "model", "optimizer", "lr", "train_fraction", "resolution"}),
    arms=tuple(ARMS),
    runs=share_run,
    result=write_result,
    layout="runs/seedN/MODEL/SHARE",
    settings=lambda hardware: {
        "fractions": list(FRACTIONS),
        "shots": SHOTS,
        "resolution": RESOLUTION,
        "subset_seed": 0,
    },  # fmt: skip
    shots=SHOTS,
    # Curves and figures of the models trained on the whole training set.
    curves=lambda outcome: {
        model: outcome.runs[arm_name(model, FRACTIONS[-1])] for model in MODELS
    },
    curves_note=f"On {FRACTIONS[-1]:.0%} of the training set.",
    figures=lambda outcome: {
        model: outcome.runs[arm_name(model, FRACTIONS[-1])][0][-1] for model in MODELS
    },
)
