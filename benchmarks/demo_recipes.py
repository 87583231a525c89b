"""Fixed-step comparison of pre-training recipes for the demo (vitkit demo), at 16 px.

Each row is one `vitkit train --preset demo-pretrain` run with a fixed number of steps (so machine
load changes its duration but not its accuracy) and the given field overrides; the script prints
a Markdown table of test top-1 and, with --write, appends it to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/demo_recipes.py --data ../shared/data/cifar10-jpg.tar.gz [--write]
    .venv/bin/python benchmarks/demo_recipes.py --rows vit-lr1e-3 hybrid-lr1e-3   # a subset

About 2-3 minutes per row on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from results import append_to_results

# name -> field overrides of the demo-pretrain preset (800 steps = 2 epochs at batch 128); each
# row names every field it was measured with that differs from the preset now (the earlier rows
# predate Muon and flip-averaged evaluation, so they name AdamW and eval_flip=false).
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
    "muon-lr4e-3-800": ["eval_flip=false", "steps=800"],
    "muon-lr8e-3-800": ["eval_flip=false", "lr=8e-3", "steps=800"],
    "adamw-bf16-800": [*_ADAMW, "lr=1e-3", "precision=bf16", "steps=800"],
    # The levers against the preset as it is (Muon lr 4e-3, flip-averaged evaluation): EMA of the
    # weights (the summary has both accuracies, the raw one being the preset's own), warm-up and
    # decay, and the model's shape at about the demo model's FLOPs per image (width 128, depth
    # 6, MLP 256, i.e. 2 x 128^2 x (4 + 2 x 2) multiply-adds per token and block; each row keeps
    # the product of depth and per-block cost within 10%).
    "ema0.99-800": ["ema_decay=0.99", "steps=800"],
    "ema0.998-800": ["ema_decay=0.998", "steps=800"],
    "warmup0.15-800": ["warmup_fraction=0.15", "steps=800"],
    "linear-decay-800": ["decay=linear", "steps=800"],
    "deep-narrow-800": ["model_fields=width=96,depth=11,mlp_dim=192", "steps=800"],
    "shallow-wide-800": ["model_fields=width=192,depth=3,mlp_dim=384,num_heads=6", "steps=800"],
    "mlp4-800": ["model_fields=mlp_dim=512,depth=4", "steps=800"],
}


def run_row(name: str, overrides: list[str], data: str, out: Path) -> dict:
    command = [
        sys.executable, "-m", "vitkit.cli.main", "train", "--preset", "demo-pretrain",
        "--data", data, "--out", str(out / name), "budget_seconds=0", *overrides,
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / name / "summary.json").read_text())
    return {
        "top1": summary["top1"],
        "top1_without_ema": summary.get("top1_without_ema"),
        "wall_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--rows", nargs="*", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    lines = [
        "| recipe (overrides of demo-pretrain) | top-1 | top-1 without EMA | wall s |",
        "| --- | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as out:
        for name in args.rows:
            result = run_row(name, ROWS[name], args.data, Path(out))
            raw = f"{result['top1_without_ema']:.2%}" if result["top1_without_ema"] else ""
            lines.append(f"| `{' '.join(ROWS[name])}` | {result['top1']:.2%} | {raw} | "
                         f"{result['wall_s']:.0f} |")  # fmt: skip
            print(lines[-1], flush=True)
    header = (
        f"\n## Demo pre-training recipes (fixed steps), {time.strftime('%Y-%m-%d')}\n\n"
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}. Command: `.venv/bin/python benchmarks/demo_recipes.py "
        f"--data {args.data}`.\n\n"
    )
    table = header + "\n".join(lines) + "\n"
    print(table)
    if args.write:
        append_to_results(table)


if __name__ == "__main__":
    main()
