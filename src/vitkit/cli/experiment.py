"""`vitkit experiment NAME`: one of the paper's findings re-measured on this machine, with seeds,
statistics, a plot and a report.html in the output folder.

Experiments (see `vitkit.experiments`):
  resolution  fine-tuning at a higher resolution after pre-training at a lower one, against
              either resolution alone, at equal training time (paper, section 3.2)
  posemb      no, learned 1-D, learned 2-D, relative and sin-cos position embeddings: top-1 and
              5-shot accuracy beside the paper's Table 8 (Appendix D.4)

Running the same command again resumes: finished runs are read from DIR/experiment.json, an
interrupted one continues from its checkpoint. The data defaults to the CIFAR-10 JPEG tarball in
the project's shared folder when there is one, else to the official CIFAR-10 download.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from vitkit.data.shared import default_cifar10
from vitkit.devices import resolve_device
from vitkit.experiments import posemb, resolution
from vitkit.experiments.record import Interrupted

EXPERIMENTS = {module.NAME: module for module in (resolution, posemb)}


def run(args: argparse.Namespace) -> int:
    data = args.data or default_cifar10()
    hardware = args.hardware
    if hardware == "auto":
        hardware = "gpu" if resolve_device("auto").type == "cuda" else "cpu"
    experiment = EXPERIMENTS[args.name]
    budget = args.budget if args.budget is not None else experiment.DEFAULT_BUDGET_SECONDS
    command = shlex.join(["vitkit", *sys.argv[1:]]) if sys.argv[1:2] == ["experiment"] else ""
    print(
        f"vitkit experiment {args.name}: data {data}, output {args.out}, seeds "
        f"{list(range(args.seeds))}, {budget:g} s of training per arm, {hardware} recipe"
    )
    try:
        experiment.run(
            data, args.out, seeds=list(range(args.seeds)), budget_seconds=budget,
            hardware=hardware, command=command,
        )  # fmt: skip
    except Interrupted as stopped:
        print(f"stopped during {stopped}; the same command resumes")
        return 0
    print(f"report: {args.out / 'report.html'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="re-measure one of the paper's findings (seeds, statistics, report.html)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=sorted(EXPERIMENTS), help="the experiment")
    parser.add_argument(
        "--data", help="CIFAR-10 source (default: the shared tarball, else cifar10)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the experiment's folder")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--budget", type=float, help="seconds of training per arm (default: the experiment's own)"
    )
    parser.add_argument(
        "--hardware", choices=["auto", "cpu", "gpu"], default="auto",
        help="the demo's recipes: cpu or gpu; auto picks gpu when CUDA is available",
    )  # fmt: skip
    parser.set_defaults(run=run, command="experiment")
