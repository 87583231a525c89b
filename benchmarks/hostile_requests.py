"""How many oversized requests (issue 29's W03/W13 cases) the importable vitkit mishandles.

Each request runs through `vitkit`'s command line in a child process whose address space (6 GiB)
and file sizes (256 MiB) are capped, on a 3-class folder of 16 px PNGs and a random ViT-Test/8.
A request is handled when it exits with status 2 and a one-line error, no traceback; anything
else (an allocator error, a crash, exit 0) is mishandled.

    python benchmarks/hostile_requests.py WORKDIR
    # an older commit: git worktree add /tmp/old REV && PYTHONPATH=/tmp/old/src python ...
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vitkit
from vitkit.weights.export import export_model

CHILD = r"""
import contextlib, io, json, sys
from vitkit.cli.main import main
argv = json.loads(sys.argv[1])
error = io.StringIO()
with contextlib.redirect_stderr(error), contextlib.redirect_stdout(io.StringIO()):
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "stderr": error.getvalue()}))
"""


def capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 20, 256 << 20))


def requests(tree: str, model: str, image: str) -> list[list[str]]:
    fields = ["model_fields=depth=16000000", "model_fields=width=1200000",
              "model_fields=mlp_dim=16000000", "model_fields=reg_tokens=16000000",
              "resolution=8192", "seed=18446744073709551616", "seed=" + "9" * 5000,
              "randaugment_ops=1000000000"]  # fmt: skip
    commands = [["train", "--preset", "tiny", "--data", tree, "--out", f"run{index}", field]
                for index, field in enumerate(fields)]  # fmt: skip
    return commands + [
        ["eval", "--checkpoint", model, "--data", tree, "--img-size", "8192"],
        ["classify", model, image, "--img-size", "8192"],
        ["export-onnx", model, "m.onnx", "--img-size", "8192"],
        ["classify", model, image, "--patch-size", "4096", "--img-size", "4096"],
        ["export-onnx", model, "m.onnx", "--batch", "1000000000"],
        ["export-onnx", model, "m.onnx", "--opset", "100000"],
        [
            "eval",
            "--checkpoint",
            model,
            "--data",
            tree,
            "--max-tokens",
            "16384",
            "--batch-size",
            "8",
        ],  # fmt: skip
        [
            "figures",
            "--checkpoint",
            model,
            "--data",
            tree,
            "--out",
            "figs",
            "--shown",
            "1000000000",
        ],  # fmt: skip
        ["shard", tree, "shards", "--shard-size", "10", "--seed", "-5"],
        ["fewshot", "--checkpoint", model, "--data", tree, "--seeds", "1000000"],
    ]


def main(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    tree = work / "tree"
    rng = np.random.default_rng(0)
    for split, count in (("train", 48), ("test", 12)):
        for name in ("red", "green", "blue"):
            (tree / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tree / split / name / f"{index}.png")
    torch.manual_seed(0)
    model = export_model(vitkit.create_model("ViT-Test/8", num_classes=3), work / "m", to="vitkit")
    image = str(tree / "test" / "red" / "0.png")
    mishandled = 0
    commands = requests(str(tree), str(model), image)
    for argv in commands:
        try:
            completed = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argv)], cwd=work,
                                       capture_output=True, text=True, timeout=120,
                                       preexec_fn=capped)  # fmt: skip
        except subprocess.TimeoutExpired:  # stuck: mishandled too
            mishandled += 1
            print(f"BAD {' '.join(argv[:1] + argv[-2:])[:60]:60} still running after 120 s")
            continue
        lines = completed.stdout.strip().splitlines()
        record = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
        error = record["stderr"].strip().splitlines() if record else []
        handled = (record is not None and record["code"] == 2 and bool(error)
                   and not any("Traceback" in line for line in error))  # fmt: skip
        mishandled += not handled
        said = error[-1] if error else (completed.stderr.strip().splitlines() or ["(nothing)"])[-1]
        print(
            f"{'ok ' if handled else 'BAD'} {' '.join(argv[:1] + argv[-2:])[:60]:60} {said[-90:]}"
        )
    print(f"mishandled {mishandled} of {len(commands)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
