"""How the demo should split its model's training time between 16 px pre-training and the 32 px
fine-tune, at fixed steps.

Each arm spends the same cost, --cost 16 px steps' worth (default 4,174: the demo's own 2,970
pre-training steps plus 280 fine-tuning steps at 32 px, each of which costs about --step-ratio
4.3 pre-training steps; benchmarks/RESULTS.md). An arm with pre-training share s pre-trains for
s x cost steps at 16 px and fine-tunes for (1 - s) x cost / step-ratio steps at 32 px. Fixed steps
make the accuracies independent of the machine's speed and load. The demo gives pre-training
0.6 and each fine-tune 0.2 of its budget, which came to a share of about 0.71 in its runs.

    .venv/bin/python benchmarks/budget_split.py [--shares 0.5 0.71 0.9] [--seed 0] [--write]

About 10 minutes per arm on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from resolution_seeds import train
from results import append_to_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--shares", type=float, nargs="*", default=[0.5, 0.71, 0.9])
    parser.add_argument("--cost", type=int, default=4174)
    parser.add_argument("--step-ratio", type=float, default=4.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for share in args.shares:
            pretrain_steps = round(share * args.cost)
            finetune_steps = round((1 - share) * args.cost / args.step_ratio)
            root = Path(folder) / f"share{share}"
            seed = f"seed={args.seed}"
            pre = train("demo-pretrain", args.data, root / "pretrain",
                        f"steps={pretrain_steps}", seed)  # fmt: skip
            high = train("demo-finetune", args.data, root / "high", f"init={root / 'pretrain'}",
                         f"steps={finetune_steps}", seed)  # fmt: skip
            rows.append(f"| {share:g} | {pretrain_steps} | {finetune_steps} | {pre:.2%} | "
                        f"**{high:.2%}** |")  # fmt: skip
            print(rows[-1], flush=True)
    table = "\n".join([
        f"## The demo's budget split (fixed steps), {time.strftime('%Y-%m-%d')}",
        "",
        f"Command: `.venv/bin/python benchmarks/budget_split.py --shares "
        f"{' '.join(f'{share:g}' for share in args.shares)} --cost {args.cost} --step-ratio "
        f"{args.step_ratio} --seed {args.seed}`. Every arm costs {args.cost} pre-training steps' "
        "worth; one seed.",
        "",
        "| pre-training share | steps at 16 px | steps at 32 px | pre-train top-1 | "
        "after the 32 px fine-tune |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ])  # fmt: skip
    print(table)
    if args.write:
        append_to_results(table)


if __name__ == "__main__":
    main()
