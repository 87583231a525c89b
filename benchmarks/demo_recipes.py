"""Fixed-step comparison of pre-training recipes for the main job (vitkit demo), at 16 px.

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

# name -> field overrides of the demo-pretrain preset (800 steps = 2 epochs at batch 128); each
# row names every field it was measured with that differs from the preset now.
ROWS: dict[str, list[str]] = {
    "vit-lr2e-3": ["model=ViT-CIFAR/4", "lr=2e-3", "crop_scale_min=0.35", "steps=800"],
    "vit-lr1e-3": ["model=ViT-CIFAR/4", "lr=1e-3", "crop_scale_min=0.35", "steps=800"],
    "vit-lr5e-4": ["model=ViT-CIFAR/4", "lr=5e-4", "crop_scale_min=0.35", "steps=800"],
    "vit-lr4e-3": ["model=ViT-CIFAR/4", "lr=4e-3", "crop_scale_min=0.35", "steps=800"],
    "vit-lr2e-3-no-smoothing": [
        "model=ViT-CIFAR/4",
        "lr=2e-3",
        "label_smoothing=0",
        "crop_scale_min=0.35",
        "steps=800",
    ],
    "vit-batch64-lr7e-4": [
        "model=ViT-CIFAR/4",
        "lr=7e-4",
        "batch_size=64",
        "crop_scale_min=0.35",
        "steps=1600",
    ],
    "hybrid-lr1e-3": ["model=R+ViT-CIFAR/4", "lr=1e-3", "crop_scale_min=0.35", "steps=800"],
    "hybrid-lr2e-3": ["model=R+ViT-CIFAR/4", "lr=2e-3", "crop_scale_min=0.35", "steps=800"],
    "hybrid-crop0.6": ["model=R+ViT-CIFAR/4", "lr=1e-3", "crop_scale_min=0.6", "steps=800"],
    "hybrid-no-crop": ["model=R+ViT-CIFAR/4", "lr=1e-3", "crop_scale_min=1", "steps=800"],
    # The time-to-accuracy levers (2026-12-01), against the preset as it is at 800 steps.
    "preset-800": ["steps=800"],
    "preset-800-eval-flip": ["steps=800", "eval_flip=true"],
    "adamw-lr2e-3-800": ["steps=800", "lr=2e-3"],
    "muon-lr1e-3-800": ["steps=800", "optimizer=muon"],
    "muon-lr2e-3-800": ["steps=800", "optimizer=muon", "lr=2e-3"],
    "muon-lr4e-3-800": ["steps=800", "optimizer=muon", "lr=4e-3"],
    "muon-lr8e-3-800": ["steps=800", "optimizer=muon", "lr=8e-3"],
    "bf16-800": ["steps=800", "precision=bf16"],
}
RESULTS = Path(__file__).with_name("RESULTS.md")


def run_row(name: str, overrides: list[str], data: str, out: Path) -> dict:
    command = [
        sys.executable, "-m", "vitkit.cli.main", "train", "--preset", "demo-pretrain",
        "--data", data, "--out", str(out / name), "budget_seconds=0", *overrides,
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / name / "summary.json").read_text())
    return {"top1": summary["top1"], "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--rows", nargs="*", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    lines = ["| recipe (overrides of demo-pretrain) | top-1 | wall s |", "| --- | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as out:
        for name in args.rows:
            result = run_row(name, ROWS[name], args.data, Path(out))
            lines.append(f"| `{' '.join(ROWS[name])}` | {result['top1']:.2%} | "
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
        with RESULTS.open("a") as file:
            file.write(table)


if __name__ == "__main__":
    main()
