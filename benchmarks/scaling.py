"""Scaling of `vitkit train` from one process to two (torchrun, gloo, DDP) on this machine, and on
one GPU where there is one.

Every configuration runs the real training command (the demo's pre-training recipe unless
--preset says otherwise; `field=value` overrides as for `vitkit train`) for --steps optimizer
steps, logging one metric line every --window steps; its speed is the median images/s of those
windows, the first left out (start-up: allocation, the first all-reduces). The configurations:
- 1 process x 1 thread: the per-process baseline;
- 1 process x 2 threads: the fair single-process baseline, using the whole 2-core machine;
- 2 processes x 1 thread: `torchrun --standalone --nproc-per-node 2 -m vitkit train ...` (DDP);
- 1 GPU: where CUDA is available.
Scaling efficiency = images/s of 2 processes / (2 x images/s of 1 process x 1 thread). The
configurations take turns for --repeats rounds, so that all see the same machine state.

    .venv/bin/python benchmarks/scaling.py [--data PATH] [--preset demo-pretrain] [--steps 80]
        [--window 10] [--repeats 3] [--no-write] [field=value ...]

Appends a dated section to benchmarks/RESULTS.md (use --no-write to only print).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
from results import append_to_results

from vitkit.data.sources import open_dataset
from vitkit.training.config import parse_overrides
from vitkit.training.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


@dataclass(frozen=True)
class Setup:
    """One way to run the same training command."""

    name: str
    processes: int
    threads: int
    device: str

    def command(self) -> list[str]:
        if self.processes == 1:
            return [sys.executable, "-m", "vitkit", "train"]
        launcher = [str(TORCHRUN), "--standalone", f"--nproc-per-node={self.processes}"]
        return [*launcher, "-m", "vitkit", "train"]


def images_per_second(setup: Setup, train_args: list[str], scratch: Path, window: int) -> float:
    """Median images/s of the logged windows of one run, the first window left out."""
    out = Path(tempfile.mkdtemp(dir=scratch))
    environment = {**os.environ, "OMP_NUM_THREADS": str(setup.threads)}
    command = [*setup.command(), "--out", str(out), *train_args, f"device={setup.device}"]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records if "images_per_s" in r and r["step"] > window]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--preset", default="demo-pretrain")
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps per run")
    parser.add_argument("--window", type=int, default=10, help="steps per timed window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("fields", nargs="*", metavar="field=value", help="config overrides")
    args = parser.parse_args()
    if args.steps < 2 * args.window:
        parser.error("--steps must cover at least two windows (the first is not timed)")
    # Training only: no evaluation, no checkpoint but the last, steps fixed (not a time budget).
    fields = [*args.fields, f"steps={args.steps}", f"log_every={args.window}", "test_split=",
              f"checkpoint_every={args.steps}"]  # fmt: skip
    config = parse_overrides(get_preset(args.preset), fields)
    train_args = ["--preset", args.preset, "--data", str(args.data), *fields]

    setups = [
        Setup("1 process, 1 thread", processes=1, threads=1, device="cpu"),
        Setup("1 process, 2 threads", processes=1, threads=2, device="cpu"),
        Setup("2 processes (DDP, gloo), 1 thread each", processes=2, threads=1, device="cpu"),
    ]
    if torch.cuda.is_available():
        setups.append(Setup(f"1 GPU ({torch.cuda.get_device_name()})", 1, 1, device="cuda"))

    with tempfile.TemporaryDirectory() as scratch:
        os.environ["VITKIT_CACHE"] = str(Path(scratch) / "cache")
        open_dataset(args.data, split=config.train_split)  # decode once, before any timing
        rates: dict[Setup, list[float]] = {setup: [] for setup in setups}
        for _ in range(args.repeats):
            for setup in setups:
                rate = images_per_second(setup, train_args, Path(scratch), args.window)
                rates[setup].append(rate)
                print(f"{setup.name:45s} {rate:10,.0f} img/s")

    median = {setup: statistics.median(values) for setup, values in rates.items()}
    one, two_threads, two = (median[setup] for setup in setups[:3])
    lines = [
        f"## Scaling from 1 to 2 processes, {date.today().isoformat()}",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}. Command: `.venv/bin/python {' '.join(sys.argv)}`. "
        f"`vitkit train --preset {args.preset}` ({config.model} at {config.resolution} px, global "
        f"batch {config.batch_size}) on `{args.data.name}`, {args.steps} steps; images/s is the "
        f"median over windows of {args.window} steps (the first left out), then the median of "
        f"{args.repeats} interleaved repeats.",
        "",
        "| configuration | processes x threads | images/s (median) | all repeats |",
        "| --- | --- | ---: | --- |",
    ]
    for setup in setups:
        values = ", ".join(f"{value:,.0f}" for value in rates[setup])
        shape = f"{setup.processes} x {setup.threads}" if setup.device == "cpu" else "1 GPU"
        lines.append(f"| {setup.name} | {shape} | {median[setup]:,.0f} | {values} |")
    lines += [
        "",
        "Scaling efficiency, 2 processes / (2 x 1 process with 1 thread): "
        f"**{two / (2 * one):.0%}**. Speed-up of 2 processes over 1 process with 2 threads: "
        f"**{two / two_threads:.2f}x**.",
        "",
    ]
    print("\n".join(lines))
    if not args.no_write:
        append_to_results("\n".join(lines))


if __name__ == "__main__":
    main()
