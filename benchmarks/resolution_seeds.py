"""The demo's claim over several seeds, at a short fixed-step budget: after the same pre-training at
16 px, fine-tuning at 32 px against fine-tuning for the same time at 16 px.

Per seed: `demo-pretrain` for --pretrain steps, then two `demo-finetune` runs from it, at 32 px for
--finetune steps and at 16 px for --finetune x --step-ratio steps. The step ratio stands for equal
time: a 32 px step of the demo's model costs about 4.3 16 px steps (the demo's own stages: 284
and 1212 steps in 155 s each, benchmarks/RESULTS.md). Fixed steps make each run's accuracy
independent of the machine's speed and load. Prints per-seed top-1 and the paired difference
with its confidence interval (`vitkit.experiments.statistics`, as the experiments report it);
--write appends the table to RESULTS.md.

    .venv/bin/python benchmarks/resolution_seeds.py --data ../shared/data/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import append_to_results

from vitkit.experiments.statistics import PairedDifference


def train(preset: str, data: str, out: Path, *fields: str) -> float:
    """Top-1 of one fixed-step `vitkit train` run."""
    command = [sys.executable, "-m", "vitkit.cli.main", "train", "--preset", preset, "--data",
               data, "--out", str(out), "budget_seconds=0", *fields]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())["top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--pretrain", type=int, default=600)
    parser.add_argument("--finetune", type=int, default=70)
    parser.add_argument("--step-ratio", type=float, default=4.3)
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    low_steps = round(args.finetune * args.step_ratio)
    rows, highs, lows = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            root = Path(folder) / f"seed{seed}"
            pre = train("demo-pretrain", args.data, root / "pretrain",
                        f"steps={args.pretrain}", f"seed={seed}")  # fmt: skip
            init = f"init={root / 'pretrain'}"
            high = train("demo-finetune", args.data, root / "high", init,
                         f"steps={args.finetune}", f"seed={seed}")  # fmt: skip
            low = train("demo-finetune", args.data, root / "low", init, "resolution=16",
                        f"steps={low_steps}", f"seed={seed}")  # fmt: skip
            highs.append(high)
            lows.append(low)
            rows.append(f"| {seed} | {pre:.2%} | {high:.2%} | {low:.2%} | {high - low:+.2%} |")
            print(rows[-1], flush=True)
    table = "\n".join([
        f"## The demo's claim over seeds (fixed steps), {time.strftime('%Y-%m-%d')}",
        "",
        f"Command: `.venv/bin/python benchmarks/resolution_seeds.py --seeds "
        f"{' '.join(map(str, args.seeds))} --pretrain {args.pretrain} --finetune {args.finetune} "
        f"--step-ratio {args.step_ratio}`: pre-training {args.pretrain} steps at 16 px, then "
        f"{args.finetune} steps at 32 px against {low_steps} at 16 px (equal time).",
        "",
        "| seed | pre-train 16 px | fine-tune 32 px | fine-tune 16 px | 32 px - 16 px |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Paired difference, 32 px - 16 px: {PairedDifference.of(highs, lows).percent()}.",
    ])  # fmt: skip
    print(table)
    if args.write:
        append_to_results(table)


if __name__ == "__main__":
    main()
