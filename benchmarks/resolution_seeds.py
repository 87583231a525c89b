"""The demo's claim over several seeds, at a short fixed-step budget: after the same pre-training at
16 px, fine-tuning at 32 px against fine-tuning for the same time at 16 px.

Per seed: `demo-pretrain` for --pretrain steps, then two `demo-finetune` runs from it, at 32 px for
--finetune steps and at 16 px for --finetune x --step-ratio steps. The step ratio stands for equal
time: a 32 px step of the demo's model costs about 4.3 16 px steps (the demo's own stages: 284
and 1212 steps in 155 s each, benchmarks/RESULTS.md). Fixed steps make each run's accuracy
independent of the machine's speed and load. Prints per-seed top-1 and the paired difference
with its confidence interval; --write appends the table to RESULTS.md. The runs, their record
and report.html stay in --out, and the same command resumes.

    .venv/bin/python benchmarks/resolution_seeds.py --data ../shared/data/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import dataclasses

from results import Benchmark, Summary, benchmark_arguments

from vitkit.experiments.engine import Outcome, Request
from vitkit.experiments.record import ExperimentRecord
from vitkit.experiments.statistics import PairedDifference
from vitkit.training.config import TrainConfig
from vitkit.training.presets import get_preset


def arm_runs(arm: str, seed: int, request: Request, record: ExperimentRecord) -> list:
    """Arm "32 px" or "16 px": the seed's shared pre-training run, then the arm's fine-tune."""
    settings = record.content["settings"]

    def stage(preset: str, **fields: object) -> TrainConfig:
        return dataclasses.replace(get_preset(preset), data=request.data, seed=seed,
                                   budget_seconds=0.0, **fields)  # fmt: skip

    init = str(record.run_folder(f"seed{seed}/pretrain"))
    low_steps = round(settings["finetune_steps"] * settings["step_ratio"])
    finetune = {
        "32 px": stage("demo-finetune", init=init, steps=settings["finetune_steps"]),
        "16 px": stage("demo-finetune", init=init, resolution=16, steps=low_steps),
    }
    pretrain = stage("demo-pretrain", steps=settings["pretrain_steps"])
    return [("pretrain", pretrain), (f"finetune-{arm.replace(' ', '')}", finetune[arm])]


def summarise(record: ExperimentRecord, outcome: Outcome) -> Summary:
    """Per seed, each run's top-1 and the difference; the paired difference's interval."""
    settings = record.content["settings"]
    high, low = outcome.top1["32 px"], outcome.top1["16 px"]
    rows = [
        [str(seed), f"{record.runs[f'seed{seed}/pretrain']['top1']:.2%}", f"{hi:.2%}",
         f"{lo:.2%}", f"{hi - lo:+.2%}"]
        for seed, hi, lo in zip(settings["seeds"], high, low, strict=True)
    ]  # fmt: skip
    low_steps = round(settings["finetune_steps"] * settings["step_ratio"])
    return Summary(
        "The demo's claim over seeds (fixed steps)",
        [
            f"Pre-training {settings['pretrain_steps']} steps at 16 px, then "
            f"{settings['finetune_steps']} steps at 32 px against {low_steps} at 16 px (equal "
            "time)."
        ],  # fmt: skip
        ["seed", "pre-train 16 px", "fine-tune 32 px", "fine-tune 16 px", "32 px - 16 px"],
        rows,
        [f"Paired difference, 32 px - 16 px: {PairedDifference.of(high, low).percent()}."],
    )


BENCHMARK = Benchmark.of(
    "resolution-seeds",
    "The demo's claim over seeds: a 32 px fine-tune against 16 px for the same time",
    arms=("32 px", "16 px"),
    runs=arm_runs,
    summarise=summarise,
    layout="runs/seedN/{pretrain, finetune-32px, finetune-16px}",
    own_fields=("resolution",),
)


def main() -> None:
    parser = benchmark_arguments(__doc__.split("\n\n")[0], out="resolution_seeds", seeds=[0, 1, 2])
    parser.add_argument("--pretrain", type=int, default=600)
    parser.add_argument("--finetune", type=int, default=70)
    parser.add_argument("--step-ratio", type=float, default=4.3)
    args = parser.parse_args()
    BENCHMARK.run(args, {"pretrain_steps": args.pretrain, "finetune_steps": args.finetune,
                         "step_ratio": args.step_ratio})  # fmt: skip


if __name__ == "__main__":
    main()
