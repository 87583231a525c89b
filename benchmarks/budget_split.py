"""How the demo should split its model's training time between 16 px pre-training and the 32 px
fine-tune, at fixed steps.

Each arm spends the same cost, --cost 16 px steps' worth (default 4,174: the demo's own 2,970
pre-training steps plus 280 fine-tuning steps at 32 px, each of which costs about --step-ratio
4.3 pre-training steps; benchmarks/RESULTS.md). An arm with pre-training share s pre-trains for
s x cost steps at 16 px and fine-tunes for (1 - s) x cost / step-ratio steps at 32 px. Fixed steps
make the accuracies independent of the machine's speed and load. The demo gives pre-training
0.6 and each fine-tune 0.2 of its budget, which came to a share of about 0.71 in its runs. The
runs, their record and report.html stay in --out, and the same command resumes.

    .venv/bin/python benchmarks/budget_split.py [--shares 0.5 0.71 0.9] [--seeds 0] [--write]

About 10 minutes per arm on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from results import Summary, result_section, run_benchmark

from vitkit.experiments.engine import Experiment, Outcome, Request
from vitkit.experiments.record import ExperimentRecord
from vitkit.training.presets import get_preset


def steps(share: float, settings: dict) -> tuple[int, int]:
    """Steps at 16 px and at 32 px of the arm with pre-training share `share`."""
    cost, ratio = settings["cost"], settings["step_ratio"]
    return round(share * cost), round((1 - share) * cost / ratio)


def arm_runs(arm: str, seed: int, request: Request, record: ExperimentRecord) -> list:
    """Pre-training at 16 px for the arm's share of the cost, then the 32 px fine-tune."""
    pretrain_steps, finetune_steps = steps(float(arm), record.content["settings"])
    common = {"data": request.data, "seed": seed, "budget_seconds": 0.0}
    init = str(record.run_folder(f"seed{seed}/pretrain-{arm}"))
    return [
        (f"pretrain-{arm}",
         dataclasses.replace(get_preset("demo-pretrain"), **common, steps=pretrain_steps)),
        (f"finetune-{arm}", dataclasses.replace(get_preset("demo-finetune"), **common, init=init,
                                                steps=finetune_steps)),
    ]  # fmt: skip


def summarise(record: ExperimentRecord, outcome: Outcome) -> Summary:
    """One row per arm and seed: its steps, and top-1 after each stage."""
    settings = record.content["settings"]
    rows = []
    for arm, values in outcome.top1.items():
        for seed, top1 in zip(settings["seeds"], values, strict=True):
            pretrain = record.runs[f"seed{seed}/pretrain-{arm}"]["top1"]
            rows.append([arm, str(seed), *map(str, steps(float(arm), settings)),
                         f"{pretrain:.2%}", f"**{top1:.2%}**"])  # fmt: skip
    return Summary(
        "The demo's budget split (fixed steps)",
        [f"Every arm costs {settings['cost']} pre-training steps' worth (a 32 px step counts "
         f"{settings['step_ratio']:g})."],  # fmt: skip
        ["pre-training share", "seed", "steps at 16 px", "steps at 32 px", "pre-train top-1",
         "after the 32 px fine-tune"],  # fmt: skip
        rows,
    )


EXPERIMENT = Experiment(
    name="budget-split",
    title="The demo's budget split between 16 px pre-training and the 32 px fine-tune",
    introduction="Every arm spends the same cost in steps; fixed steps per run.",
    default_seeds=1,
    default_budget_seconds=None,
    own_fields=frozenset({"seed", "resolution"}),
    arms=("0.5", "0.71", "0.9"),
    runs=arm_runs,
    result=result_section(summarise),
    layout="runs/seedN/{pretrain-SHARE, finetune-SHARE}",
    figures=lambda outcome: {},
    timed=False,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--shares", type=float, nargs="*", default=[0.5, 0.71, 0.9])
    parser.add_argument("--cost", type=int, default=4174)
    parser.add_argument("--step-ratio", type=float, default=4.3)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/budget_split"))
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    cost = {"cost": args.cost, "step_ratio": args.step_ratio}
    experiment = dataclasses.replace(
        EXPERIMENT, arms=tuple(f"{share:g}" for share in args.shares),
        settings=lambda hardware: cost,
    )  # fmt: skip
    run_benchmark(experiment, summarise, args.data, args.seeds, args.out, write=args.write)


if __name__ == "__main__":
    main()
