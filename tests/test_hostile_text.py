"""Text from data shown as text: class names with formulas, escapes and odd line breaks.

Class names are whatever a stranger named their folders or wrote in a checkpoint. A name that
matplotlib would parse as a formula is drawn as its characters; a name with terminal escapes or a
newline is printed escaped, so it cannot retitle the window or forge a prediction line; a labels
file holds one name per "\\n"-ended line, so Unicode's other line breaks stay inside their name.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import vitkit
from vitkit.analysis import plots
from vitkit.analysis.plots import (
    plot_arms,
    plot_attention_maps,
    plot_confusion_matrix,
    plot_curves_against_time,
)
from vitkit.cli.main import main
from vitkit.errors import CheckpointError
from vitkit.weights.class_names import labels_text, read_labels
from vitkit.weights.export import export_model

from helpers import CLASSES, random_test_vit

FORMULAS = ["$\\frac{1}{$", "$x^$", "a $ b", "\\$\\\\"]
ESCAPES = "\x1b]0;owned\x07\x1b[31mred\nfake 0.9999  dog (1)\r\u202eevil"


def test_every_plot_draws_names_that_look_like_formulas(tmp_path: Path) -> None:
    names = FORMULAS[:3]
    curve = [{"seconds": 1.0, "loss": 1.0, "step": 1}, {"seconds": 2.0, "top1": 0.5, "step": 2}]
    plot_confusion_matrix(np.eye(3), names, tmp_path / "confusion.png")
    plot_arms({name: [0.1, 0.2] for name in names}, tmp_path / "arms.png", ylabel="$", title="$x")
    plot_curves_against_time({name: [curve] for name in names}, tmp_path / "curves.png")
    pixels = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    maps = np.zeros((1, 16, 16), dtype=np.float32)
    import torch

    plot_attention_maps(pixels, torch.from_numpy(maps), tmp_path / "maps.png", titles=names[:1])
    assert len(list(tmp_path.glob("*.png"))) == 4


def test_log_axes_are_labelled_with_numbers_not_formula_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With mathtext off, matplotlib's own log-axis labels ("$\\mathdefault{10^{4}}$") would be
    drawn as their source: a loss within one decade, a loss over four, data sizes on a log x."""
    labels: list[list[str]] = []
    save = plots._save

    def drawn_then_saved(figure: plt.Figure, path: Path) -> Path:
        figure.canvas.draw()
        labels.append([text.get_text() for axes in figure.axes
                       for text in axes.get_xticklabels(which="both")
                       + axes.get_yticklabels(which="both")])  # fmt: skip
        return save(figure, path)

    monkeypatch.setattr(plots, "_save", drawn_then_saved)
    narrow = [{"seconds": float(i), "loss": 2.2 - 0.05 * i, "top1": 0.3} for i in range(8)]
    wide = [{"seconds": float(i), "loss": 10.0 ** (1 - i), "top1": 0.3} for i in range(5)]
    plot_curves_against_time({"a": [narrow]}, tmp_path / "narrow.png")
    plot_curves_against_time({"a": [wide]}, tmp_path / "wide.png")
    plots.plot_lines([5000, 50000], {"ViT": [0.3, 0.6]}, tmp_path / "sizes.png", xlabel="n",
                     ylabel="%", title="t", log_x=True)  # fmt: skip
    assert len(labels) == 3
    for drawn in labels:
        assert not [label for label in drawn if "$" in label or "mathdefault" in label]
    assert {"2", "1e\u221203", "10000"} <= {label for drawn in labels for label in drawn}


def test_class_folders_named_like_a_formula_or_an_escape_are_evaluated(
    image_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(image_tree, tree)
    for split in ("train", "test"):
        (tree / split / CLASSES[0]).rename(tree / split / FORMULAS[0])
        (tree / split / CLASSES[1]).rename(tree / split / "green\x1b[31m")
    model = random_test_vit(num_classes=3)
    checkpoint = export_model(model, tmp_path / "model", to="vitkit")
    out = tmp_path / "eval"
    code = main(["eval", "--checkpoint", str(checkpoint), "--data", str(tree), "--out", str(out)])
    assert code == 0
    assert (out / "confusion_matrix.png").stat().st_size > 0
    assert FORMULAS[0] in json.loads((out / "eval.json").read_text())["per_class"]
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "green\\x1b[31m" in printed


def test_classify_prints_names_from_a_checkpoint_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = random_test_vit(num_classes=3)
    model.class_names = (ESCAPES, "dog", "Kätzchen")
    checkpoint = export_model(model, tmp_path / "model", to="vitkit")
    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    assert main(["classify", str(checkpoint), str(image), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u202e]", out)  # only the lines' own "\n"
    assert out.count("\n") == 4  # the path and three classes, nothing forged
    assert "\\x1b]0;owned\\x07\\x1b[31mred\\nfake 0.9999  dog (1)\\r\\u202eevil (0)" in out
    assert "Kätzchen (2)" in out  # letters stay letters


def test_an_error_naming_a_hostile_name_is_one_visible_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / f"model{ESCAPES}"
    assert main(["convert", str(missing), str(tmp_path / "out"), "--to", "vitkit"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 2  # the progress line and the error
    assert "\x1b" not in error and "\r" not in error
    assert error.splitlines()[-1].startswith("vitkit convert: error: ")
    assert "\\x1b]0;owned\\x07" in error.splitlines()[-1]


@pytest.mark.parametrize(
    "names",
    [
        ("cat\u2028dog", "bird", "fish"),  # Unicode's line separator
        ("cat\x1cdog", "bi\x85rd", "fish\x0bx\x0cy"),  # ASCII separators, NEL, VT, FF
        ("Kätzchen", "sports car", "$\\frac{1}{$"),
    ],
)
def test_labels_files_give_back_every_name_as_written(tmp_path: Path, names: tuple) -> None:
    model = random_test_vit(num_classes=3)
    model.class_names = names
    weights = export_model(model, tmp_path / "m.safetensors", to="timm")
    assert vitkit.load_model(weights, num_heads=4).class_names == names


@pytest.mark.parametrize("bad", ["", " padded", "two\nlines", "carriage\rreturn"])
def test_names_a_labels_file_cannot_hold_are_refused_before_writing(
    tmp_path: Path, bad: str
) -> None:
    model = random_test_vit(num_classes=3)
    model.class_names = ("cat", bad, "fish")
    with pytest.raises(CheckpointError, match="class name 1 .* which a labels file cannot hold"):
        export_model(model, tmp_path / "m.safetensors", to="timm")
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=300, deadline=None, derandomize=True)
@given(names=st.lists(st.text(max_size=12), min_size=1, max_size=6))
def test_fuzzed_names_round_trip_through_a_labels_file_or_are_refused(names: list[str]) -> None:
    """Any names: written and read back unchanged, or refused before writing; never shifted."""
    try:
        text = labels_text(tuple(names))
    except CheckpointError:
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.labels.txt"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        assert read_labels(path, len(names)) == tuple(names)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.binary(max_size=200), count=st.integers(1, 5))
def test_fuzzed_labels_files_are_read_or_refused_in_one_line(data: bytes, count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.txt"
        path.write_bytes(data)
        try:
            names = read_labels(path, count)
        except CheckpointError as error:
            assert "\n" not in str(error)
            return
        assert len(names) == count and all(isinstance(name, str) for name in names)
