"""Class names travel with trained weights: a run on a labelled folder records its dataset's
classes in the final model, and `vitkit classify` on the run prints them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vitkit
from vitkit.cli.main import main
from vitkit.training.trainer import train

from helpers import CLASSES, tiny

pytestmark = pytest.mark.usefixtures("cache_in_tmp")


def test_a_run_records_its_class_names(
    image_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    train(tiny(image_tree, steps=2), run)
    names = sorted(CLASSES)  # a folder's classes in sorted order, as torchvision's ImageFolder
    assert json.loads((run / "config.json").read_text())["class_names"] == names
    assert vitkit.load_model(run).class_names == tuple(names)
    capsys.readouterr()

    image = image_tree / "test" / "green" / "0.png"
    assert main(["classify", str(run), str(image), "--json", "--top-k", "3"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["path"] == str(image)
    assert sorted(p["label"] for p in result["predictions"]) == names
    assert all(p["label"] == names[p["index"]] for p in result["predictions"])


def test_parameters_only_formats_keep_the_names_beside_the_weights(
    image_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    train(tiny(image_tree, steps=2), run)
    capsys.readouterr()
    assert main(["convert", str(run), str(tmp_path / "m.safetensors"), "--to", "timm"]) == 0
    assert f"wrote {tmp_path / 'm.labels.txt'} (the 3 class names)" in capsys.readouterr().out
    # (a timm state dict does not record the heads of a width no paper variant has)
    from_timm = vitkit.load_model(tmp_path / "m.safetensors", num_heads=4)
    assert from_timm.class_names == tuple(sorted(CLASSES))
    assert main(["convert", str(run), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert "labels.txt" not in capsys.readouterr().out  # transformers' config holds them
    assert vitkit.load_model(tmp_path / "hf").class_names == tuple(sorted(CLASSES))
