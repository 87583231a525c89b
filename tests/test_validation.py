"""Validation images held out of the training images: a seeded, class-stratified split of a
folder's class folders (with or without train/test folders), and keep_best choosing weights on
it, never on the test split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vitkit
from vitkit.cli.main import main
from vitkit.data.fewshot import validation_split
from vitkit.errors import ConfigError, DataError, TrainingError
from vitkit.training.best import BestWeights
from vitkit.training.trainer import train
from vitkit.training.validation import Validation

from helpers import tiny, train_killed_and_resumed


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(2, 40), min_size=1, max_size=6),
    fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_validation_split_is_stratified_and_seeded(
    counts: list[int], fraction: float, seed: int
) -> None:
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    train, held = validation_split(labels, fraction, seed=seed)
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(len(labels)))
    for label, count in enumerate(counts):
        n = int((labels[held] == label).sum())
        assert n == min(count - 1, max(1, round(fraction * count)))  # every class its share
    again = validation_split(labels, fraction, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, held)))


def _flat(image_tree: Path, root: Path) -> Path:
    """image_tree's train and test images as one `<class>/<image>` tree."""
    for split in ("train", "test"):
        for folder in (image_tree / split).iterdir():
            target = root / folder.name
            target.mkdir(parents=True, exist_ok=True)
            for image in folder.iterdir():
                shutil.copy(image, target / f"{split}-{image.name}")
    return root


def test_a_tree_without_splits_trains_and_validates(
    image_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flat = _flat(image_tree, tmp_path / "flat")
    run = tmp_path / "run"
    summary = train(tiny(flat), run)
    said = capsys.readouterr().err
    assert "training on them, 10% of each class held out (seed 0)" in said
    record = json.loads((run / "train_config.json").read_text())["validation"]
    assert record == {"split": ".", "fraction": 0.1, "seed": 0, "images": 18,
                      "per_class": {"blue": 6, "green": 6, "red": 6}}  # fmt: skip
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["split"] == "validation" and evaluation["images"] == 18
    assert summary.top1 is None and summary.validation_top1 == evaluation["top1"]
    # `vitkit eval` reads the same tree by its split ".", all 180 images.
    assert main(["eval", "--checkpoint", str(run), "--data", str(flat),
                                 "--split", ".", "--out", str(tmp_path / "e")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["images"] == 180


def test_keep_best_keeps_the_best_validation_weights(image_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = tiny(image_tree, val_fraction=0.25, keep_best=True, eval_every=2)
    summary = train(config, run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    watched = [r for r in records if r.get("split") == "validation"]
    assert [r["step"] for r in watched] == [2, 4, 6]  # every eval_every steps
    best = max(watched, key=lambda r: r["top1"])  # the first of equals
    kept = json.loads((run / "best" / "best.json").read_text())
    assert kept == {"step": best["step"], "validation_top1": best["top1"]}
    assert (summary.best_step, summary.best_validation_top1) == (best["step"], best["top1"])
    assert vitkit.load_model(run / "best").class_names == ("blue", "green", "red")
    # The test split is counted on the final weights, never used to choose.
    assert summary.top1 == json.loads((run / "eval.json").read_text())["top1"]
    assert json.loads((run / "eval.json").read_text())["split"] == "test"


def test_keep_best_resumes_with_the_same_best(image_tree: Path, tmp_path: Path) -> None:
    config = tiny(image_tree, val_fraction=0.25, keep_best=True, eval_every=2)
    train(config, tmp_path / "whole")
    train_killed_and_resumed(config, tmp_path / "resumed")

    def results(run: Path) -> tuple[dict, dict]:
        summary = json.loads((run / "summary.json").read_text())
        times = ("seconds", "eval_seconds")
        best = json.loads((run / "best" / "best.json").read_text())
        return best, {key: value for key, value in summary.items() if key not in times}

    assert results(tmp_path / "whole") == results(tmp_path / "resumed")


def test_keep_best_needs_a_validation_split_and_evaluations(
    image_tree: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="set eval_every"):
        tiny(image_tree, keep_best=True)
    with pytest.raises(TrainingError, match="set val_fraction"):
        train(tiny(image_tree, keep_best=True, eval_every=2), tmp_path / "run")


def test_eval_reads_the_validation_images_a_run_held_out(
    image_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vitkit eval --split validation` of a run's folder counts what the run's end counted,
    from train_config.json's record alone; a folder without one is refused in one line."""
    flat = _flat(image_tree, tmp_path / "flat")
    run = tmp_path / "run"
    train(tiny(flat), run)
    assert main(["eval", "--checkpoint", str(run), "--data", str(flat), "--split",
                 "validation", "--out", str(tmp_path / "e")]) == 0  # fmt: skip
    evaluated = json.loads((tmp_path / "e" / "eval.json").read_text())
    at_the_end = json.loads((run / "eval.json").read_text())
    for key in ("images", "top1", "per_class", "confusion"):
        assert evaluated[key] == at_the_end[key], key
    model_only = tmp_path / "model-only"
    model_only.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copy(run / name, model_only / name)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(model_only), "--data", str(flat), "--split",
                 "validation"]) == 2  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "no train_config.json" in error[0]


def test_eval_with_flip_averaging_counts_what_an_eval_flip_run_counted(
    image_tree: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    summary = train(tiny(image_tree, eval_flip=True), run)
    out = tmp_path / "e"
    assert main(["eval", "--checkpoint", str(run), "--data", str(image_tree), "--flip-average",
                 "--out", str(out)]) == 0  # fmt: skip
    evaluated = json.loads((out / "eval.json").read_text())
    assert evaluated["flip_average"] is True and evaluated["top1"] == summary.top1
    assert evaluated["confusion"] == json.loads((run / "eval.json").read_text())["confusion"]


@pytest.mark.parametrize(
    "content",
    ['{"step": 2, "validation_top1": "high"}', '{"step": -1, "validation_top1": 0.5}',
     "[1, 2]", "not json", '{"step": 2}', '{"step": 2, "validation_top1": NaN}'],
)  # fmt: skip
def test_a_bad_best_record_is_refused_in_one_line(tmp_path: Path, content: str) -> None:
    """best.json lives in a run folder that may come from a stranger: a bad one is refused,
    naming the file, before the run compares with it."""
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text(content)
    with pytest.raises(TrainingError) as caught:
        BestWeights.read(tmp_path)
    assert "\n" not in str(caught.value) and "best.json" in str(caught.value)


@pytest.mark.parametrize(
    "record",
    [None, {"split": "", "fraction": 0.1, "seed": 0}, {"split": ".", "fraction": 1.5, "seed": 0},
     {"split": ".", "fraction": 0.1, "seed": -3}, {"split": ".", "fraction": "0.1", "seed": 0}],
)  # fmt: skip
def test_a_bad_validation_record_is_refused_in_one_line(record: object) -> None:
    with pytest.raises(DataError) as caught:
        Validation.from_record(record, where="run/train_config.json")
    assert "\n" not in str(caught.value) and "run/train_config.json" in str(caught.value)


def test_flip_averaging_and_packing_are_refused_together(
    capsys: pytest.CaptureFixture[str], image_tree: Path, tmp_path: Path
) -> None:
    model = vitkit.save_pretrained(vitkit.create_model("ViT-Test/8", img_size=16, num_classes=3),
                                   tmp_path / "model")  # fmt: skip
    code = main(["eval", "--checkpoint", str(model), "--data", str(image_tree),
                 "--flip-average", "--max-tokens", "4", "--out", str(tmp_path / "e")])  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "--flip-average" in error[0]


def test_skipping_bad_images_and_packing_are_refused_together(
    capsys: pytest.CaptureFixture[str], image_tree: Path, tmp_path: Path
) -> None:
    built = vitkit.create_model("ViT-Test/8", img_size=16, num_classes=3, dynamic_img_size=True)
    model = vitkit.save_pretrained(built, tmp_path / "m")
    code = main(["eval", "--checkpoint", str(model), "--data", str(image_tree), "--skip-bad",
                 "--max-tokens", "4", "--out", str(tmp_path / "e")])  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "--skip-bad" in error[0]
