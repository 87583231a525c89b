"""Does `torch.compile` pay inside the demo's budget? Its first-step cost, cold and with inductor's
cache warm, against the steps it speeds up, for each of the demo's two resolutions.

Per resolution, three `vitkit train --preset demo-pretrain` runs of --steps steps, each in a fresh
process: eager; compiled with an empty inductor cache (a fresh temporary TORCHINDUCTOR_CACHE_DIR);
compiled again with that cache now filled (what a second run on the machine pays). The 32 px
rows use the demo-pretrain recipe at resolution=32, which trains the demo's fine-tuning model
(the same network on 8x8 tokens) at the fine-tuning stage's cost per step. Each row reports the
first step (vitkit prints its duration when the model is compiled), the pace of the other steps
and the training time; the break-even is the number of steps after which the compiled run is
ahead: first-step overhead / time saved per step. The demo's stages run about 3,000 steps at
16 px and 280 at 32 px (benchmarks/RESULTS.md).

    .venv/bin/python benchmarks/compile_cost.py [--steps 150] [--resolutions 16 32] [--write]

Timing: run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import append_to_results

from vitkit.devices import describe_machine

FIRST_STEP = re.compile(r"torch\.compile: first step ([\d.]+) s")


def run(data: str, resolution: int, steps: int, out: Path, *, compiled: bool, cache: Path) -> dict:
    """One fixed-step run: seconds of its first step (compiled only) and of its training."""
    command = [
        sys.executable, "-m", "vitkit.cli.main", "train", "--preset", "demo-pretrain",
        "--data", data, "--out", str(out), "budget_seconds=0", f"steps={steps}",
        f"resolution={resolution}", "test_split=", f"checkpoint_every={steps}",
        f"compile={str(compiled).lower()}", "compile_time_limit=0",
    ]  # fmt: skip
    environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True)
    if completed.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{completed.stderr[-2000:]}")
    seconds = json.loads((out / "summary.json").read_text())["seconds"]
    found = FIRST_STEP.search(completed.stderr)
    return {"seconds": seconds, "first_step": float(found.group(1)) if found else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--resolutions", type=int, nargs="*", default=[16, 32])
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    lines = [
        "| px | run | first step s | other steps ms | training s | break-even steps |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for resolution in args.resolutions:
            cache = Path(folder) / f"inductor-{resolution}"
            eager = run(args.data, resolution, args.steps, Path(folder) / f"eager-{resolution}",
                        compiled=False, cache=cache)  # fmt: skip
            eager_ms = eager["seconds"] / args.steps * 1000
            lines.append(f"| {resolution} | eager | | {eager_ms:.1f} | {eager['seconds']:.1f} | |")
            print(lines[-1], flush=True)
            for cache_state in ("cold", "warm"):
                name = f"compiled, {cache_state} cache"
                out = Path(folder) / f"{cache_state}-{resolution}"
                result = run(args.data, resolution, args.steps, out, compiled=True, cache=cache)
                first = result["first_step"]
                other_ms = (result["seconds"] - first) / (args.steps - 1) * 1000
                saved_ms = eager_ms - other_ms
                overhead_ms = first * 1000 - eager_ms
                break_even = f"{overhead_ms / saved_ms:,.0f}" if saved_ms > 0 else "never"
                lines.append(f"| {resolution} | {name} | {first:.1f} | {other_ms:.1f} | "
                             f"{result['seconds']:.1f} | {break_even} |")  # fmt: skip
                print(lines[-1], flush=True)
    header = (
        f"\n## torch.compile's cost and pay-back, {time.strftime('%Y-%m-%d')}\n\n"
        f"Machine: {describe_machine()}. Command: `.venv/bin/python "
        f"benchmarks/compile_cost.py --steps {args.steps} --resolutions "
        f"{' '.join(map(str, args.resolutions))}`. The demo's pre-training recipe, batch 128.\n\n"
    )
    table = header + "\n".join(lines) + "\n"
    print(table)
    if args.write:
        append_to_results(table)


if __name__ == "__main__":
    main()
