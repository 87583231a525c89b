"""The `transfer` preset on issue 30's probe folder: accuracy and time of a CPU fine-tune.

The folder is the probe's: 600 training and 200 test images of 4 CIFAR-10 classes (150 and 50 per
class) from the shared archive, 24-96 px, about half not square, half PNG and half JPEG (RGB,
grayscale, RGBA, CMYK), classes named `sports car` and `Kätzchen` (tests/helpers.py builds it, as
the tests do at a smaller size). Each arm runs `vitkit train --preset transfer` with one change,
then `vitkit eval` of the kept best weights (OUT/best) on the test split, and prints one row:
steps, training seconds, the validation top-1 of the best and of the final weights, and the test
top-1 of both. The arms: the preset, its learning rate a third and three times as large, and the
probe's 3-step fine-tune (which out-scored its full run).

    python benchmarks/transfer.py --init runs/demo/finetune --work /tmp/transfer

`--init`: any checkpoint `vitkit.load_model` reads; the demo's fine-tuned model is what a new user
holds after `bash scripts/demo.sh` (pre-trained on CIFAR-10's training images, among them the
folder's training images' originals, never its test images'). Keep the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the folder builder the tests use

from vitkit.devices import describe_machine  # noqa: E402

from helpers import write_user_folder  # noqa: E402

PROBE_IMAGES = {"train": 150, "test": 50}  # per class, as the probe's folder
ARMS = {
    "transfer": [],
    "transfer lr=3e-5": ["lr=3e-5"],
    "transfer lr=3e-4": ["lr=3e-4"],
    "transfer lr=1e-3": ["lr=1e-3"],
    "transfer epochs=5": ["epochs=5"],
    "transfer steps=3": ["epochs=0", "steps=3", "warmup_fraction=0", "eval_every=3"],
}


def vitkit(*arguments: object) -> None:
    command = [sys.executable, "-m", "vitkit", *map(str, arguments)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_arm(folder: Path, out: Path, init: str, changes: list[str]) -> dict[str, object]:
    started = time.perf_counter()
    vitkit("train", "--preset", "transfer", "--data", folder, "--out", out, f"init={init}",
           *changes)  # fmt: skip
    wall = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    vitkit("eval", "--checkpoint", out / "best", "--data", folder, "--out", out / "best-eval")
    best_test = json.loads((out / "best-eval" / "eval.json").read_text())["top1"]
    return {**summary, "best_test_top1": best_test, "wall_seconds": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", required=True, help="the checkpoint to fine-tune")
    parser.add_argument("--work", type=Path, required=True, help="a folder for data and runs")
    args = parser.parse_args()
    folder = args.work / "folder"
    if not folder.is_dir():
        write_user_folder(folder, PROBE_IMAGES)
    print(f"machine: {describe_machine()}")
    print(f"init: {args.init}; folder: {folder} (600 training, 200 test images)")
    header = ("arm", "steps", "train s", "wall s", "best val", "at step", "final val",
              "final test", "best test")  # fmt: skip
    print(" | ".join(header))
    for name, changes in ARMS.items():
        out = args.work / name.replace(" ", "-").replace("=", "")
        row = run_arm(folder, out, args.init, changes)
        print(" | ".join([
            name, str(row["steps"]), f"{row['seconds']:.0f}", f"{row['wall_seconds']:.0f}",
            f"{row['best_validation_top1']:.1%}", str(row["best_step"]),
            f"{row['validation_top1']:.1%}", f"{row['top1']:.1%}", f"{row['best_test_top1']:.1%}",
        ]), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
