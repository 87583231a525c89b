"""Fixed-step comparison of pre-training recipes for the demo (vitkit demo), at 16 px.

Each arm is one `demo-pretrain` run with a fixed number of steps (so machine load changes its
duration but not its accuracy) and the given field overrides; the script prints a Markdown table
of test top-1 and, with --write, appends it to benchmarks/RESULTS.md. The runs, their record and
report.html stay in --out, and the same command resumes (a new --rows adds its arms).

    .venv/bin/python benchmarks/demo_recipes.py --data ../shared/data/cifar10-jpg.tar.gz [--write]
    .venv/bin/python benchmarks/demo_recipes.py --rows vit-lr1e-3 hybrid-lr1e-3   # a subset

About 2-3 minutes per row on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses

from results import Benchmark, Summary, benchmark_arguments

from vitkit.experiments.engine import Outcome, Request, Seed
from vitkit.experiments.record import ExperimentRecord
from vitkit.training.config import parse_overrides
from vitkit.training.presets import get_preset
from vitkit.training.run_dir import RunDir

# name -> field overrides of the demo-pretrain preset (800 steps = 2 epochs at batch 128); each
# row names every field it was measured with that differs from the preset now (the earlier rows
# predate Muon and flip-averaged evaluation, so they name AdamW and eval_flip=false; the Muon rows
# name lr=4e-3, the preset's until demo_levers.py's 5 seeds moved it to 3e-3).
_ADAMW = ["optimizer=adamw", "eval_flip=false"]
ROWS: dict[str, list[str]] = {
    "vit-lr2e-3": ["model=ViT-CIFAR/4", *_ADAMW, "lr=2e-3", "crop_scale_min=0.35", "steps=800"],
    "vit-lr1e-3": ["model=ViT-CIFAR/4", *_ADAMW, "lr=1e-3", "crop_scale_min=0.35", "steps=800"],
    "vit-lr5e-4": ["model=ViT-CIFAR/4", *_ADAMW, "lr=5e-4", "crop_scale_min=0.35", "steps=800"],
    "vit-lr4e-3": ["model=ViT-CIFAR/4", *_ADAMW, "lr=4e-3", "crop_scale_min=0.35", "steps=800"],
    "vit-lr2e-3-no-smoothing": [
        "model=ViT-CIFAR/4",
        *_ADAMW,
        "lr=2e-3",
        "label_smoothing=0",
        "crop_scale_min=0.35",
        "steps=800",
    ],  # fmt: skip
    "vit-batch64-lr7e-4": [
        "model=ViT-CIFAR/4",
        *_ADAMW,
        "lr=7e-4",
        "batch_size=64",
        "crop_scale_min=0.35",
        "steps=1600",
    ],  # fmt: skip
    "hybrid-lr1e-3": [*_ADAMW, "lr=1e-3", "crop_scale_min=0.35", "steps=800"],
    "hybrid-lr2e-3": [*_ADAMW, "lr=2e-3", "crop_scale_min=0.35", "steps=800"],
    "hybrid-crop0.6": [*_ADAMW, "lr=1e-3", "crop_scale_min=0.6", "steps=800"],
    "hybrid-no-crop": [*_ADAMW, "lr=1e-3", "steps=800"],
    # The time-to-accuracy levers (2026-12-01): optimiser, learning rate, precision, evaluation.
    "adamw-800": [*_ADAMW, "lr=1e-3", "steps=800"],
    "adamw-800-eval-flip": ["optimizer=adamw", "lr=1e-3", "steps=800"],
    "adamw-lr2e-3-800": [*_ADAMW, "lr=2e-3", "steps=800"],
    "muon-lr1e-3-800": ["eval_flip=false", "lr=1e-3", "steps=800"],
    "muon-lr2e-3-800": ["eval_flip=false", "lr=2e-3", "steps=800"],
    "muon-lr4e-3-800": ["lr=4e-3", "eval_flip=false", "steps=800"],
    "muon-lr8e-3-800": ["eval_flip=false", "lr=8e-3", "steps=800"],
    "adamw-bf16-800": [*_ADAMW, "lr=1e-3", "precision=bf16", "steps=800"],
    # The levers against the preset as it is (Muon lr 4e-3, flip-averaged evaluation): EMA of the
    # weights (the summary has both accuracies, the raw one being the preset's own), warm-up and
    # decay, and the model's shape at about the demo model's FLOPs per image (width 128, depth
    # 6, MLP 256, i.e. 2 x 128^2 x (4 + 2 x 2) multiply-adds per token and block; each row keeps
    # the product of depth and per-block cost within 10%).
    "ema0.99-800": ["lr=4e-3", "ema_decay=0.99", "steps=800"],
    "ema0.998-800": ["lr=4e-3", "ema_decay=0.998", "steps=800"],
    "warmup0.15-800": ["lr=4e-3", "warmup_fraction=0.15", "steps=800"],
    "linear-decay-800": ["lr=4e-3", "decay=linear", "steps=800"],
    "deep-narrow-800": ["lr=4e-3", "model_fields=width=96,depth=11,mlp_dim=192", "steps=800"],
    "shallow-wide-800": [
        "lr=4e-3",
        "model_fields=width=192,depth=3,mlp_dim=384,num_heads=6",
        "steps=800",
    ],
    "mlp4-800": ["lr=4e-3", "model_fields=mlp_dim=512,depth=4", "steps=800"],
}


def arm_runs(arm: str, seed: int, request: Request, record: ExperimentRecord) -> list:
    """The row's one run: demo-pretrain with its overrides."""
    base = dataclasses.replace(get_preset("demo-pretrain"), data=request.data, seed=seed)
    return [(arm, parse_overrides(base, ["budget_seconds=0", *ROWS[arm]]))]


def measure_without_ema(record: ExperimentRecord, seed: Seed) -> None:
    """The raw weights' top-1 of each run that averaged its weights (summary.json has it)."""
    for keys in seed.keys.values():
        summary = RunDir(record.run_folder(keys[-1])).summary()
        if summary is not None and (raw := summary.top1_without_ema) is not None:
            record.measured(keys[-1], "top1_without_ema", lambda raw=raw: raw)


def summarise(record: ExperimentRecord, outcome: Outcome) -> Summary:
    """One row per recipe and seed: its overrides, top-1 (and the raw weights' with EMA) and
    training time."""
    rows = []
    for arm, values in outcome.top1.items():
        for seed, top1 in zip(record.content["settings"]["seeds"], values, strict=True):
            run = record.runs[f"seed{seed}/{arm}"]
            raw = run.get("measured", {}).get("top1_without_ema")
            rows.append([f"`{' '.join(ROWS[arm])}`", str(seed), f"{top1:.2%}",
                         "" if raw is None else f"{raw:.2%}", f"{run['seconds']:.0f}"])  # fmt: skip
    return Summary(
        "Demo pre-training recipes (fixed steps)",
        [],
        [
            "recipe (overrides of demo-pretrain)",
            "seed",
            "top-1",
            "top-1 without EMA",
            "training s",
        ],  # fmt: skip
        rows,
    )


BENCHMARK = Benchmark.of(
    "demo-recipes",
    "Pre-training recipes for the demo, at fixed steps",
    arms=tuple(ROWS),
    runs=arm_runs,
    summarise=summarise,
    layout="runs/seedN/ROW",
    measure=measure_without_ema,
)


def main() -> None:
    parser = benchmark_arguments(__doc__.splitlines()[0], out="demo_recipes", seeds=[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    args = parser.parse_args()
    BENCHMARK.run(args, {}, arms=tuple(args.rows))


if __name__ == "__main__":
    main()
