"""A training run's report tells what was trained: the architecture of train_config.json (an init
run's checkpoint's, not the unused `model` field), every --force change, the per-class accuracy
and confusion matrix of eval.json (class names escaped, a stranger's eval.json refused in one
line), curves whose every point of a short run shows, text readable at the saved size, and the
same outputs from the Python `train` as from the command."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

import matplotlib.text
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from vitkit.analysis import plots
from vitkit.analysis.plots import plot_confusion_matrix, plot_training_curves
from vitkit.analysis.run_report import (
    CONFUSION_NAME,
    EVAL_NAME,
    read_evaluation,
    write_train_report,
)
from vitkit.errors import TrainingError
from vitkit.models.config import get_config
from vitkit.training.run_dir import RunDir
from vitkit.training.summary import TrainSummary
from vitkit.training.trainer import train

from helpers import tiny

# Class names from a stranger's folders: markup, a right-to-left override, accents, CJK.
HOSTILE_CLASSES = ("<img src=x onerror=alert(1)>", "evil\u202etxt", "café", "猫")
SAVE = plots._save  # the plots' own, which the text check wraps
SUMMARY = TrainSummary(steps=4, images_seen=128, resolution=16, seconds=2.0, top1=0.5)


def evaluation_json(classes: tuple[str, ...] = HOSTILE_CLASSES, **changes: object) -> dict:
    """An eval.json as `vitkit eval` writes it (with the split's name) for `classes`, each with
    3 images of which the diagonal's are right."""
    count = len(classes)
    confusion = np.eye(count, dtype=int) * 2 + np.roll(np.eye(count, dtype=int), 1, axis=1)
    return {
        "split": "test", "top1": 2 / 3, "top5": 1.0, "images": 3 * count,
        "per_class": {name: 2 / 3 for name in classes}, "counts": {name: 3 for name in classes},
        "confusion": confusion.tolist(), **changes,
    }  # fmt: skip


def blue_pixels(png: Path) -> int:
    """Pixels of matplotlib's "tab:blue" (the training loss) in `png`."""
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=int)
    return int((np.abs(pixels - (31, 119, 180)).sum(axis=-1) < 30).sum())


def test_a_python_run_writes_its_report_and_a_finished_run_run_again_rewrites_it(
    image_tree: Path, tmp_path: Path, cache_in_tmp: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train` from Python: curves, figures and a report that says it ran from Python; a run of
    3 steps, which logs its loss once, draws that point; run again, the finished run writes its
    outputs anew, now with the per-class accuracy of its eval.json."""
    out = tmp_path / "run"
    config = tiny(image_tree, steps=3, log_every=10, report=True)
    train(config, out)
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    report = (out / "report.html").read_text()
    assert "From Python: vitkit.training.train(config, out_dir)." in report
    assert (out / "figures" / "captions.json").is_file()
    assert [record["step"] for record in RunDir(out).metric_records() if "loss" in record] == [3]
    assert blue_pixels(out / "curves.png") > 30  # one dot of 5 pt: about 55 pixels; a line: 0

    (out / "report.html").unlink()
    (out / EVAL_NAME).write_text(json.dumps(evaluation_json(("red", "green", "blue"))))
    summary = train(config, out, command="vitkit train --preset tiny")
    assert summary.steps == 3
    report = (out / "report.html").read_text()
    assert "<code>vitkit train --preset tiny</code>" in report
    assert "<h2>Accuracy per class (test split)</h2>" in report
    assert "<tr><td>green</td><td>66.67%</td><td>3</td></tr>" in report
    assert f'<img src="{CONFUSION_NAME}"' in report and (out / CONFUSION_NAME).is_file()


def test_a_forced_resume_is_listed_and_a_run_without_test_split_has_a_report(
    image_tree: Path, tmp_path: Path, cache_in_tmp: None
) -> None:
    out = tmp_path / "run"
    config = tiny(image_tree, steps=2, test_split="", report=True)
    train(config, out)
    train(dataclasses.replace(config, steps=4, lr=2e-3), out, force=True)
    report = (out / "report.html").read_text()
    assert "<h3>Changed on resuming (--force)</h3>" in report
    rows = ("<tr><td>2</td><td>lr</td><td>0.001</td><td>0.002</td></tr>",
            "<tr><td>2</td><td>steps</td><td>2</td><td>4</td></tr>")  # fmt: skip
    assert all(row in report for row in rows), report
    assert "<td>not evaluated</td>" in report
    assert "Accuracy per class" not in report and "inspection figures" not in report


def test_an_init_run_names_the_architecture_it_trained_and_escapes_class_names(
    tmp_path: Path,
) -> None:
    """A fine-tuning run whose preset says ViT-Ti/16 trained its init checkpoint's hybrid: the
    page names the hybrid, says where it came from and never shows the unused model; every
    class name reaches the page as text, control characters as their escapes."""
    config = dataclasses.replace(
        tiny(tmp_path), init=str(tmp_path / "pre"), model="ViT-Ti/16", test_split="test"
    )
    hybrid = get_config("R+ViT-CIFAR/4", depth=3, num_classes=len(HOSTILE_CLASSES))
    RunDir(tmp_path).write_config(config, hybrid, total_steps=4, warmup_steps=1, forced=[])
    (tmp_path / EVAL_NAME).write_text(json.dumps(evaluation_json()))
    evaluation = read_evaluation(tmp_path / EVAL_NAME)
    write_train_report(tmp_path, SUMMARY, command=None, figures=None, evaluation=evaluation)
    report = (tmp_path / "report.html").read_text()
    assert "ViT-Ti/16" not in report and "<td>model</td>" not in report
    assert (
        "<tr><td>architecture</td><td>width 128, depth 3, 4 heads, patch 1, 32x32 px, gap "
        "pooling, ResNet stages (), "
    ) in report
    assert "parameters (the init checkpoint&#x27;s)</td></tr>" in report
    assert "top-1 66.67%, top-4 100.00%" in report  # top-k of 4 classes
    assert "<td>&lt;img src=x onerror=alert(1)&gt;</td><td>66.67%</td><td>3</td>" in report
    assert "<img src=x" not in report
    assert "<td>evil\\u202etxt</td>" in report and "\u202e" not in report
    assert "<td>café</td>" in report and "<td>猫</td>" in report


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"top1": float("nan")}, "top1 must be a fraction in [0, 1], got nan"),
        ({"top5": True}, "top5 must be a fraction"),
        ({"split": ["test"]}, "split must be the name of a split"),
        ({"images": 13}, "images 13 is not the sum of counts"),
        ({"per_class": {"a": 0.5}}, "counts must name the classes of per_class"),
        ({"counts": {"café": -1}}, "counts (class 'café') must be between 0 and"),
        ({"confusion": [[1, 2], [3, 4]]}, "confusion must be 4 x 4"),
        ({"confusion": "[[1]]"}, "confusion must be a list of rows of counts"),
    ],
)
def test_a_bad_eval_json_is_refused_in_one_line_naming_the_key(
    tmp_path: Path, change: dict, named: str
) -> None:
    path = tmp_path / EVAL_NAME
    path.write_text(json.dumps(evaluation_json(**change)))
    with pytest.raises(TrainingError) as error:
        read_evaluation(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and named in message and "\n" not in message


def test_a_train_config_with_a_bad_architecture_or_forced_record_is_refused(
    tmp_path: Path,
) -> None:
    config = tiny(tmp_path)
    RunDir(tmp_path).write_config(config, get_config("ViT-Test/8"), total_steps=4,
                                  warmup_steps=1, forced=[])  # fmt: skip
    path = tmp_path / "train_config.json"
    saved = json.loads(path.read_text())
    for change, named in (
        ({"architecture": {**saved["architecture"], "depth": -1}}, "architecture.depth"),
        ({"architecture": {"layers": 3}}, '"architecture": unknown field(s) layers'),
        ({"forced": [{"at_step": "2", "changed": {}}]}, '"forced" must be a list'),
    ):
        path.write_text(json.dumps({**saved, **change}))
        with pytest.raises(TrainingError, match=f"^{re.escape(str(path))}: ") as error:
            write_train_report(tmp_path, SUMMARY, command=None, figures=None, evaluation=None)
        assert named in str(error.value)


def texts_at_saved_size(
    monkeypatch: pytest.MonkeyPatch, draw: Callable[..., Path], *args: object
) -> tuple[list[tuple[str, float]], Path]:
    """(text, height of its capitals and digits in pixels of the saved PNG) for every visible
    text `draw(*args)` puts in its figure, and the PNG."""
    figures = []

    def kept(figure: Figure, path: Path) -> Path:
        figures.append(figure)
        return SAVE(figure, path)

    monkeypatch.setattr(plots, "_save", kept)
    path = draw(*args)
    texts = [text for text in figures[0].findobj(matplotlib.text.Text)
             if text.get_visible() and text.get_text()]  # fmt: skip
    pixels_per_point = plots.DPI / 72
    return [(t.get_text(), t.get_fontsize() * pixels_per_point * plots.CAP_HEIGHT)
            for t in texts], path  # fmt: skip


def test_the_report_plots_text_is_readable_at_the_saved_size(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every text of the curves and of the confusion matrix has capitals and digits at least
    11 px tall in the PNG, which is narrow enough that the report's 60 em column shows it at
    that size."""
    metrics = [{"step": step, "loss": 2 / step} for step in range(1, 200)] + [
        {"step": 199, "top1": 0.6}
    ]
    matrix = np.array(evaluation_json()["confusion"])
    classes = ("red", "green", "blue", "grey")
    for draw, *args, shown in (
        (plot_training_curves, metrics, tmp_path / "curves.png", "training loss (blue)"),
        (plot_confusion_matrix, matrix, classes, tmp_path / "confusion.png", "0.67"),
    ):
        texts, png = texts_at_saved_size(monkeypatch, draw, *args)
        assert shown in {text for text, _ in texts}
        small = [(text, round(pixels, 1)) for text, pixels in texts if pixels < 11]
        assert not small, small
        assert Image.open(png).width <= 900


def test_report_false_writes_no_report(image_tree: Path, tmp_path: Path) -> None:
    """report=false (experiments' runs) leaves the curves, figures and page out; the model,
    summary and eval.json are written as ever."""
    train(tiny(image_tree, steps=2, report=False), tmp_path / "run")
    written = {path.name for path in (tmp_path / "run").iterdir()}
    assert {"model.safetensors", "summary.json", "eval.json"} <= written
    assert not written & {"report.html", "curves.png", "figures", "confusion_matrix.png"}
