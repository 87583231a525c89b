"""Every image at its own aspect ratio from the commands: `vitkit eval --max-tokens` against the
square test pipeline on a trained model, and `vitkit train max_tokens=... [token_keep=...]`
against square batches, each command timed whole.

CIFAR-10's images are square, so a budget of (resolution / patch)^2 gives every image the square
pipeline's size and the top-1 of `eval` must come out the same both ways: what is measured is the
cost of packing. The training runs use the demo's pre-training recipe (no crop, so every image
keeps its 32x32 size) with the plain ViT-CIFAR/4 for --steps steps, one seed.

    .venv/bin/python benchmarks/packed_commands.py --model runs/some-vit-cifar-run \\
        --data ../shared/data/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vitkit.devices import describe_machine


def vitkit(*arguments: str) -> tuple[str, float]:
    """Run `vitkit ARGUMENTS` in a fresh process: (its last line of output, seconds)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "vitkit.cli.main", *arguments], check=True,
                            capture_output=True, text=True)  # fmt: skip
    return result.stdout.strip().splitlines()[-1], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained model at 32 px, patch 4")
    parser.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    print(describe_machine())
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        print("| command | top-1 | time |\n| --- | ---: | ---: |")
        for extra in ([], ["--max-tokens", "64"], ["--img-size", "16"], ["--max-tokens", "16"]):
            # Twice: the first builds the decoded-data cache if needed; the second is timed.
            for _ in range(2):
                _, seconds = vitkit("eval", "--checkpoint", args.model, "--data", args.data,
                                    "--out", str(root / "eval"), *extra)  # fmt: skip
            top1 = json.loads((root / "eval" / "eval.json").read_text())["top1"]
            print(f"| `vitkit eval {' '.join(extra)}` | {top1:.2%} | {seconds:.1f} s |", flush=True)
        print("\n| run | training time | top-1 |\n| --- | ---: | ---: |")
        for fields in ([], ["max_tokens=64"], ["max_tokens=64", "token_keep=0.5"]):
            out = root / ("run-" + "-".join(fields))
            vitkit("train", "--preset", "demo-pretrain", "--data", args.data, "--out", str(out),
                   "model=ViT-CIFAR/4", "resolution=32", "budget_seconds=0",
                   f"steps={args.steps}", "eval_flip=false", *fields)  # fmt: skip
            summary = json.loads((out / "summary.json").read_text())
            print(f"| {' '.join(fields) or 'square batches'} | {summary['seconds']:.1f} s | "
                  f"{summary['top1']:.2%} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
