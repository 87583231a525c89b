"""Requests larger than the machine: every flag and field that sizes work is bounded up front.

A model of sixteen million blocks, an 8192 px grid, a pseudo-inverse for 4096 px patches, a
billion-image ONNX batch, attention over packed sequences of 65,540 tokens: each is refused in
one line before anything is allocated, and a flag out of range is an argparse error. The commands
run in one child process whose address space, file sizes and time are capped, so that a
regression fails this test instead of swapping or filling the machine.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from vitkit.weights.export import export_model

from helpers import random_test_vit

MEMORY_CEILING_BYTES = 6 << 30  # Python with torch maps ~3.2 GiB before doing anything
FILE_CEILING_BYTES = 256 << 20

_CHILD = r"""
import contextlib, io, json, sys
from vitkit.cli.main import main
for argv in json.loads(sys.stdin.read()):
    error = io.StringIO()
    with contextlib.redirect_stderr(error), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse
            code = exit.code
    print(json.dumps({"argv": argv, "code": code, "stderr": error.getvalue()}), flush=True)
"""


def _caps() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CEILING_BYTES, MEMORY_CEILING_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_CEILING_BYTES, FILE_CEILING_BYTES))


def run_each_capped(commands: list[list[str]], cwd: Path) -> list[dict]:
    """`vitkit` with each argv in turn, in one capped child: {argv, code, stderr} per command."""
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(commands),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_caps,
        cwd=cwd,
    )
    records = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    assert completed.returncode == 0 and len(records) == len(commands), (
        f"the child died (exit {completed.returncode}) on command {len(records)}: "
        f"{completed.stderr[-3000:]}"
    )
    return records


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = random_test_vit(num_classes=3)  # the classes of image_tree
    return export_model(model, tmp_path_factory.mktemp("model") / "m", to="vitkit")


# (arguments after the command's fixed ones, what the one-line error must say)
TRAIN = [
    ("model_fields=depth=16000000", "parameters (depth 16000000"),
    ("model_fields=width=1200000", "parameters (depth 2, width 1200000"),
    ("model_fields=mlp_dim=16000000", "mlp_dim 16000000) takes"),
    ("model_fields=reg_tokens=16000000", "of memory but"),
    ("resolution=8192", "patches per image; at most 16,384"),
    ("seed=18446744073709551616", "seed must be in [0, 4294967295]"),
    ("seed=" + "9" * 5000, "seed must be an integer, got '9999"),
    ("randaugment_ops=1000000000", "randaugment_ops must be in [0, 16]"),
]


def test_requests_beyond_the_machine_are_refused_in_one_line(
    image_tree: Path, checkpoint: Path, tmp_path: Path
) -> None:
    image = str(next((image_tree / "test").rglob("*.png")))
    data, model = str(image_tree), str(checkpoint)
    commands: list[tuple[list[str], str]] = [
        (["train", "--preset", "tiny", "--data", data, "--out", "run", field], expected)
        for field, expected in TRAIN
    ]
    commands += [
        (["eval", "--checkpoint", model, "--data", data, "--img-size", "8192"], "patches per"),
        (["classify", model, image, "--img-size", "8192"], "1,048,576 patches per image"),
        (["export-onnx", model, "m.onnx", "--img-size", "8192"], "patches per image"),
        (
            ["classify", model, image, "--patch-size", "4096", "--img-size", "4096"],
            "resampling the 8x8 patch kernel to 4096x4096",
        ),
        (["export-onnx", model, "m.onnx", "--batch", "1000000000"], "batch size 1000000000"),
        (["export-onnx", model, "m.onnx", "--opset", "100000"], "ONNX opset 100000"),
        (
            [
                "eval",
                "--checkpoint",
                model,
                "--data",
                data,
                "--max-tokens",
                "16384",
                "--batch-size",
                "8",
            ],
            "attention over 2 packed sequence(s) of 65,540 tokens",
        ),
        (
            ["figures", "--checkpoint", model, "--data", data, "--shown", "1000000000"],
            "must be from 1 to 64",
        ),
        (["shard", data, "shards", "--seed", "-5"], "must be from 0 to 4294967295"),
        (
            ["fewshot", "--checkpoint", model, "--data", data, "--seeds", "1000000"],
            "must be from 1 to 100",
        ),
    ]
    records = run_each_capped([argv for argv, _ in commands], tmp_path)
    for record, (_, expected) in zip(records, commands):
        lines = record["stderr"].strip().splitlines()
        assert record["code"] == 2, record
        assert expected in lines[-1], (expected, record)
        assert not any("Traceback" in line for line in lines), record
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # nothing was written


def test_a_limit_past_the_dataset_evaluates_all_of_it(
    image_tree: Path, checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    [record] = run_each_capped(
        [
            [
                "eval",
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(image_tree),
                "--limit",
                str(10**12),
                "--out",
                str(out),
            ]
        ],
        tmp_path,
    )
    assert record["code"] == 0, record
    assert json.loads((out / "eval.json").read_text())["images"] == 36  # the whole test split


def test_a_cache_write_that_fails_is_one_line_and_leaves_nothing(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """data_size=1024 caches the 144 training images in 453 MB, past the child's 256 MiB limit
    on a file's size: the write fails (EFBIG, as on a full disk), and says so in one line."""
    home = tmp_path / "home"
    monkeypatch.setenv("VITKIT_HOME", str(home))
    argv = ["train", "--preset", "tiny", "--data", str(image_tree), "--out", "run",
            "data_size=1024"]  # fmt: skip
    [record] = run_each_capped([argv], tmp_path)
    lines = record["stderr"].strip().splitlines()
    assert record["code"] == 2, record
    assert "cannot write the decoded-image cache: File too large" in lines[-1], record
    assert not any("Traceback" in line for line in lines), record
    leftovers = [path for path in home.rglob("*") if path.is_dir() and path.name.startswith(".")]
    assert leftovers == []
