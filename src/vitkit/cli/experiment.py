"""`vitkit experiment NAME`: one of the paper's findings re-measured on this machine, with seeds,
statistics, a plot and a report.html in the output folder.

Experiments (see `vitkit.experiments`):
  resolution  fine-tuning at a higher resolution after pre-training at a lower one, against
              either resolution alone, at equal training time (paper, section 3.2)
  posemb      no, learned 1-D, learned 2-D, relative and sin-cos position embeddings: top-1 and
              5-shot accuracy beside the paper's Table 8 (Appendix D.4)
  data-scale  a ResNet, a ViT and a hybrid on nested shares of the training set at equal time:
              does the ResNet's lead shrink with more data? (section 4.2, Figs. 3-4)
  mpp         masked patch prediction, the paper's self-supervised pre-training, then
              fine-tuning, against training from scratch at equal time; few-shot accuracy of
              the frozen representations (section 4.6, Appendix B.1.2)

Running the same command again resumes: finished runs are read from DIR/experiment.json, an
interrupted one continues from its checkpoint. The data defaults to the CIFAR-10 JPEG tarball in
the project's shared folder when there is one, else to the official CIFAR-10 download.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from vitkit.cli.arguments import int_between
from vitkit.data.shared import default_cifar10
from vitkit.devices import resolve_device
from vitkit.experiments import data_scale, masked_patches, posemb, resolution
from vitkit.experiments.engine import Request, run_experiment
from vitkit.experiments.record import MOST_SEEDS, Interrupted

EXPERIMENTS = {
    module.EXPERIMENT.name: module.EXPERIMENT
    for module in (resolution, posemb, data_scale, masked_patches)
}


def run(args: argparse.Namespace) -> int:
    data = args.data or default_cifar10()
    hardware = args.hardware
    if hardware == "auto":
        hardware = "gpu" if resolve_device("auto").type == "cuda" else "cpu"
    experiment = EXPERIMENTS[args.name]
    budget = args.budget if args.budget is not None else experiment.default_budget_seconds
    seeds = list(range(args.seeds if args.seeds is not None else experiment.default_seeds))
    command = shlex.join(["vitkit", *sys.argv[1:]]) if sys.argv[1:2] == ["experiment"] else ""
    print(
        f"vitkit experiment {args.name}: data {data}, output {args.out}, seeds "
        f"{seeds}, {budget:g} s of training per arm, {hardware} recipe"
    )
    try:
        run_experiment(
            experiment, Request(data, seeds, budget, hardware), args.out,
            overrides=args.overrides, command=command,
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
        "--set", dest="overrides", action="append", default=[], metavar="field=value",
        help="a change to every run's training config, as vitkit train takes it (e.g. "
        "--set batch_size=64); repeat for several",
    )  # fmt: skip
    parser.add_argument(
        "--data", help="CIFAR-10 source (default: the shared tarball, else cifar10)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the experiment's folder")
    parser.add_argument(
        "--seeds",
        type=int_between(1, MOST_SEEDS),  # bounded before the list of seeds is built
        help=f"seeds 0..N-1, N at most {MOST_SEEDS} (default: the experiment's own, 3, or 1 for "
        "data-scale)",
    )
    parser.add_argument(
        "--budget", type=float, help="seconds of training per arm (default: the experiment's own)"
    )
    parser.add_argument(
        "--hardware", choices=["auto", "cpu", "gpu"], default="auto",
        help="the demo's recipes: cpu or gpu; auto picks gpu when CUDA is available",
    )  # fmt: skip
    parser.set_defaults(run=run, command="experiment")
