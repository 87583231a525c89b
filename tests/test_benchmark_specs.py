"""The benchmarks that train arms over seeds, each run for a few steps on a CIFAR-10 slice: the
Markdown table they would append to RESULTS.md shows the top-1s their record holds, and the same
command again trains nothing (they resume from their folder). Their full-length numbers are
measurements, in benchmarks/RESULTS.md; this keeps the scripts themselves working."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from vitkit.experiments import record as record_module

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("cache_in_tmp")]

# script -> its arguments beyond --data and --out: the fewest steps that still train each stage.
COMMANDS = {
    "resolution_seeds": ["--seeds", "0", "--pretrain", "3", "--finetune", "1"],
    "budget_split": ["--shares", "0.5", "--cost", "6"],
    "demo_recipes": ["--rows", "ema0.99-800"],
    "mixed_aspect": "--train-per-class 13 --test-per-class 2 --steps 2 --seeds 0".split(),
    "flexivit": ["--patch-sizes", "4", "8", "--steps", "2"],
}


def run_benchmark(
    name: str, arguments: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> str:
    """`python benchmarks/NAME.py ARGUMENTS` in this process; what it printed."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *arguments])
    module.main()
    return capsys.readouterr().out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_benchmark_reports_its_records_top1_and_resumes(
    name: str,
    cifar_subset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / name
    arguments = ["--data", str(cifar_subset), "--out", str(out), *COMMANDS[name]]
    if name == "demo_recipes":  # its rows fix 800 steps: the row is shortened here
        monkeypatch.syspath_prepend(str(BENCHMARKS))
        recipes = importlib.import_module("demo_recipes")
        monkeypatch.setitem(recipes.ROWS, "ema0.99-800", ["ema_decay=0.5", "steps=3"])
    printed = run_benchmark(name, arguments, monkeypatch, capsys)
    runs = json.loads((out / "experiment.json").read_text())["runs"]
    table = printed[printed.index("| ") :]
    shown = [run["top1"] for run in runs.values() if run["top1"] is not None] + [
        value for run in runs.values() for key, value in run.get("measured", {}).items()
        if "top1" in key
    ]  # fmt: skip
    assert len(shown) >= 2
    for top1 in shown:
        assert f"{top1:.2%}" in table
    assert (out / "report.html").stat().st_size > 0 and (out / "curves.png").is_file()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(record_module, "train", no_training)
    assert run_benchmark(name, arguments, monkeypatch, capsys).endswith(printed.split("\n## ")[-1])
    # The folder holds seed 0 alone: other seeds are refused in one line naming the setting.
    with pytest.raises(SystemExit, match=rf"^{name}\.py: error: .*seeds=\[0\], this command"):
        run_benchmark(name, [*arguments, "--seeds", "0", "1"], monkeypatch, capsys)
