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

import torch

from vitkit.analysis.page import Page
from vitkit.analysis.plots import plot_arms
from vitkit.experiments.engine import Experiment, Outcome, Request, Seed
from vitkit.experiments.record import FEWSHOT_SEEDS, ExperimentRecord
from vitkit.experiments.statistics import PairedDifference, Spread
from vitkit.models.vit import VisionTransformer
from vitkit.training.build import new_model
from vitkit.training.config import TrainConfig
from vitkit.training.demo import STAGE_PRESETS
from vitkit.training.presets import get_preset

MODEL = {"cpu": "ViT-CIFAR/4", "gpu": "ViT-CIFAR-L/4"}
PRETRAIN_SHARE = 0.5  # of the mpp_then_finetune arm's budget
SHOTS = 10
ARMS = {
    "scratch": "supervised from scratch for the whole budget",
    "mpp_then_finetune": "masked patch prediction for half the budget, then fine-tuned",
    "scratch_half": "supervised from scratch for half the budget",
}
# Section 4.6, ImageNet top-1 of ViT-B/16: from scratch, and fine-tuned after masked patch
# prediction on JFT.
PAPER_TOP1 = {"scratch": 0.779, "mpp_then_finetune": 0.799}


def arm_runs(
    arm: str, seed: int, request: Request, record: ExperimentRecord
) -> list[tuple[str, TrainConfig]]:
    """The runs of one arm and seed, in order; the fine-tune starts from the masked patch
    prediction's folder."""
    supervised = dataclasses.replace(
        get_preset(STAGE_PRESETS[request.hardware][0]), data=request.data,
        model=MODEL[request.hardware], seed=seed, budget_seconds=request.budget_seconds,
    )  # fmt: skip
    half = PRETRAIN_SHARE * request.budget_seconds
    if arm == "scratch":
        return [("scratch", supervised)]
    if arm == "scratch_half":
        return [("scratch_half", dataclasses.replace(supervised, budget_seconds=half))]
    pretrain = dataclasses.replace(
        supervised, task="masked_patches", test_split="", eval_flip=False, label_smoothing=0.0,
        budget_seconds=half,
    )  # fmt: skip
    finetune = dataclasses.replace(
        supervised, init=str(record.run_folder(f"seed{seed}/mpp")),
        budget_seconds=request.budget_seconds - half,
    )  # fmt: skip
    return [("mpp", pretrain), ("mpp_then_finetune", finetune)]


def representations(
    record: ExperimentRecord, seed: Seed
) -> dict[str, tuple[str, VisionTransformer | None]]:
    """The frozen encoders compared by few-shot accuracy: the architecture untrained (made for
    the seed, recorded as random_init), the masked-patch encoder before fine-tuning, and the
    supervised one."""
    ((_, supervised),) = arm_runs("scratch", seed.number, seed.request, record)
    untrained = new_model(record.configured(supervised), device=torch.device("cpu"),
                          num_classes=len(seed.train_set.classes))  # fmt: skip
    return {
        "random init": (f"seed{seed.number}/random_init", untrained),
        "masked patches": (seed.keys["mpp_then_finetune"][0], None),
        "supervised": (seed.keys["scratch"][-1], None),
    }


def write_result(page: Page, record: ExperimentRecord, outcome: Outcome) -> None:
    """The paired differences, each arm's top-1 per seed beside the paper's, the frozen
    representations' few-shot accuracy, and both as plots."""
    settings = record.content["settings"]
    seeds, budget = settings["seeds"], settings["budget_seconds"]
    top1, fewshot = outcome.top1, outcome.fewshot
    title = f"{settings['model']}, {budget:g} s per arm, {len(seeds)} seeds"
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


EXPERIMENT = Experiment(
    name="mpp",
    title="Masked patch prediction (paper, section 4.6 and Appendix B.1.2)",
    introduction=(
        "The paper's self-supervised pre-training: half of each image's patch embeddings are "
        "corrupted (80% replaced by a learned [mask] embedding, 10% by another patch's, 10% "
        "kept) and the model predicts each corrupted patch's 3-bit mean colour (512 classes). "
        "Fine-tuned on ImageNet, its ViT-B/16 reached 79.9% top-1 against 77.9% from scratch. "
        "Here a small ViT on CIFAR-10 at equal training time; the labels are used only by the "
        "supervised runs."
    ),
    default_seeds=3,
    default_budget_seconds=240.0,  # per arm: 2.5 budgets per seed, 3 seeds: about 30 minutes
    # What the masked patch pre-training changes against the supervised runs, fine-tuning from
    # it, the seed, and the model the report names.
    own_fields=frozenset(
        {"seed", "model", "task", "init", "test_split", "eval_flip", "label_smoothing"}
    ),
    arms=tuple(ARMS),
    runs=arm_runs,
    result=write_result,
    layout="runs/seedN/RUN (mpp: the masked patch pre-training)",
    settings=lambda hardware: {
        "model": MODEL[hardware],
        "pretrain_share": PRETRAIN_SHARE,
        "shots": SHOTS,
    },  # fmt: skip
    shots=SHOTS,
    representations=representations,
    curves_note="The first half of mpp_then_finetune is the masked patch prediction's loss (over "
    "512 colours), which has no test top-1.",
    figures=lambda outcome: {
        "masked-patch encoder, before fine-tuning": outcome.runs["mpp_then_finetune"][0][0],
        **{arm: keys[0][-1] for arm, keys in outcome.runs.items()},
    },
)
