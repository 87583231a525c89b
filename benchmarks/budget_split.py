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

import dataclasses

from results import Benchmark, Summary, benchmark_arguments

from vitkit.experiments.engine import Outcome, Request
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
        [
            f"Every arm costs {settings['cost']} pre-training steps' worth (a 32 px step counts "
            f"{settings['step_ratio']:g})."
        ],  # fmt: skip
        [
            "pre-training share",
            "seed",
            "steps at 16 px",
            "steps at 32 px",
            "pre-train top-1",
            "after the 32 px fine-tune",
        ],  # fmt: skip
        rows,
    )


BENCHMARK = Benchmark.of(
    "budget-split",
    "The demo's budget split between 16 px pre-training and the 32 px fine-tune",
    arms=("0.5", "0.71", "0.9"),
    runs=arm_runs,
    summarise=summarise,
    layout="runs/seedN/{pretrain-SHARE, finetune-SHARE}",
    own_fields=("resolution",),
)


def main() -> None:
    parser = benchmark_arguments(__doc__.split("\n\n")[0], out="budget_split", seeds=[0])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.71, 0.9])
    parser.add_argument("--cost", type=int, default=4174)
    parser.add_argument("--step-ratio", type=float, default=4.3)
    args = parser.parse_args()
    BENCHMARK.run(args, {"cost": args.cost, "step_ratio": args.step_ratio},
                  arms=tuple(f"{share:g}" for share in args.shares))  # fmt: skip


if __name__ == "__main__":
    main()
