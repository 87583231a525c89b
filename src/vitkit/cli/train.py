"""`vitkit train --preset NAME --data PATH --out DIR [field=value ...]`: one training stage.

At the end (the library's `train` does it) it writes curves.png, the paper's inspection figures
of the trained model on the test split (figures/), its confusion matrix (confusion_matrix.png) and
report.html, which shows them with the result, the architecture trained and the per-class
accuracy, and prints their paths and the summary.

Running the same command again resumes the run in DIR; a different config is refused unless
--force. The fields and their defaults are listed by `vitkit train --help`.

On several processes, the same command under torchrun (`torchrun --standalone --nproc-per-node
8 -m vitkit train ...`; docs/distributed.md shows several nodes); it resumes on any number of
processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path

from vitkit.training.config import describe_fields, parse_overrides
from vitkit.training.distributed import launch
from vitkit.training.presets import PRESETS, get_preset
from vitkit.training.trainer import train


def run(args: argparse.Namespace) -> int:
    config = get_preset(args.preset)
    if args.data:
        config = dataclasses.replace(config, data=args.data)
    config = parse_overrides(config, args.fields)
    data = ["--data", args.data] if args.data else []
    force = ["--force"] if args.force else []
    command = shlex.join(["vitkit", "train", "--preset", args.preset, *data,
                          "--out", str(args.out), *force, *args.fields])  # fmt: skip
    summary = train(config, args.out, force=args.force, command=command)
    if launch().rank == 0:
        print(json.dumps(summary.to_json(), indent=2))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="pre-train or fine-tune a ViT (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="fields (field=value):\n" + describe_fields(),
    )
    parser.add_argument("--preset", choices=list(PRESETS), required=True)
    parser.add_argument("--data", help="dataset path or name (overrides the preset's data)")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument(
        "--force",
        action="store_true",
        help="resume a run with changed fields (its length, schedule, optimiser hyperparameters, "
        "regularisation, augmentation, cadence, device); the changes are recorded in "
        "train_config.json. Fields that define the model, the data or the saved state cannot "
        "change",
    )
    parser.add_argument("fields", nargs="*", metavar="field=value", help="config overrides")
    parser.set_defaults(run=run, command="train")
