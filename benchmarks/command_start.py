"""How long a `vitkit` command takes to start: `python -m vitkit COMMAND --help`, which imports
everything the command imports and stops before any work, timed as a user waits for it.

Compares this checkout with an earlier commit (--ref, checked out into a temporary git worktree
and run from its src/ with the same venv), the median of --repeats runs each, alternating so that
the machine's drift falls on both alike.

    .venv/bin/python benchmarks/command_start.py --ref 505b00d [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import append_to_results

from vitkit.devices import describe_machine

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["classify", "convert", "eval", "train", "experiment"]


def seconds_to_start(command: str, source: Path) -> float:
    environment = {**os.environ, "PYTHONPATH": str(source)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vitkit", command, "--help"], env=environment,
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", required=True, help="the earlier commit to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        earlier = Path(folder) / "earlier"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach",
                        str(earlier), args.ref], check=True)  # fmt: skip
        try:
            times: dict[str, dict[str, list[float]]] = {}
            for command in COMMANDS:
                times[command] = {"earlier": [], "now": []}
                for _ in range(args.repeats):
                    times[command]["earlier"].append(seconds_to_start(command, earlier / "src"))
                    times[command]["now"].append(seconds_to_start(command, ROOT / "src"))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(earlier)], check=True)  # fmt: skip
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    rows = [
        f"| `{command}` | {statistics.median(pair['earlier']):.2f} s | "
        f"{statistics.median(pair['now']):.2f} s |"
        for command, pair in times.items()
    ]
    table = "\n".join([
        f"## A command's start, {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {describe_machine()}. Command: `.venv/bin/python benchmarks/command_start.py "
        f"--ref {args.ref} --repeats {args.repeats}`: `python -m vitkit COMMAND --help`, median "
        f"of {args.repeats} runs, the two checkouts alternating.",
        "",
        f"| command | {args.ref} | {head} |",
        "| --- | ---: | ---: |",
        *rows,
    ])  # fmt: skip
    print(table)
    if args.write:
        append_to_results(table)


if __name__ == "__main__":
    main()
