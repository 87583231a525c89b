"""`vitkit train --preset NAME --data PATH --out DIR [field=value ...]`: one training stage.

`--config FILE` reads the same settings from a YAML or TOML file (preset, data, out and any
field, one `key: value` per line), or from a run's own train_config.json, which trains that run
again; --preset, --data, --out and fields on the command line override the file's.

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
import json
import shlex
from pathlib import Path

from vitkit.errors import ConfigError
from vitkit.training.config import describe_fields, parse_overrides
from vitkit.training.config_file import ConfigFile, config_from_file, read_config_file
from vitkit.training.distributed import launch
from vitkit.training.presets import PRESETS
from vitkit.training.trainer import train


def run(args: argparse.Namespace) -> int:
    if not (args.preset or args.config):
        raise ConfigError("give --preset NAME or --config FILE (vitkit train --help lists both)")
    file = read_config_file(args.config) if args.config else ConfigFile(Path())
    out = args.out or (Path(file.out) if file.out else None)
    if out is None:
        raise ConfigError("no run directory: give --out DIR (or out in the --config file)")
    config = config_from_file(file, preset=args.preset, data=args.data)
    config = parse_overrides(config, args.fields)
    summary = train(config, out, force=args.force, command=recorded_command(args, out))
    if launch().rank == 0:
        print(json.dumps(summary.to_json(), indent=2))
    return 0


def recorded_command(args: argparse.Namespace, out: Path) -> str:
    """The command as the run's report.html shows it: what was given, and the run directory."""
    words = ["vitkit", "train"]
    for option, value in (("--config", args.config), ("--preset", args.preset),
                          ("--data", args.data)):  # fmt: skip
        if value:
            words += [option, str(value)]
    words += ["--out", str(out), *(["--force"] if args.force else []), *args.fields]
    return shlex.join(words)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="pre-train or fine-tune a ViT (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="fields (field=value):\n" + describe_fields(),
    )
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="YAML or TOML file of settings (preset, data, out, fields), or a "
                        "run's train_config.json to train that run again")  # fmt: skip
    parser.add_argument("--preset", choices=list(PRESETS),
                        help="the recipe to start from (default: the --config file's, or the "
                        "field defaults listed below)")  # fmt: skip
    parser.add_argument("--data", help="dataset path or name (overrides the preset's data)")
    parser.add_argument("--out", type=Path, help="run directory (or out in the --config file)")
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
