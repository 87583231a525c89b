"""`log=tensorboard`: the run folder's event files, read back with TensorBoard's own reader,
hold metrics.jsonl's numbers as scalars and the report's figures as images, and a resumed run
leaves each step once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vitkit.cli.main import main

from helpers import events, jsonl

pytestmark = pytest.mark.usefixtures("cache_in_tmp")


def scalars(reader: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in reader.Scalars(tag)]


def logged(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(record["step"], pytest.approx(record[key], rel=1e-6))
            for record in records if key in record]  # fmt: skip


def test_a_run_on_a_users_folder_logs_its_metrics_and_figures_to_tensorboard(
    user_folder_flat: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    code = main(["train", "--preset", "tiny", "--data", str(user_folder_flat), "--out", str(run),
                 "steps=4", "log_every=1", "eval_every=2", "log=tensorboard"])  # fmt: skip
    assert code == 0
    reader, records = events(run), jsonl(run)
    tags = reader.Tags()
    assert {"train/loss", "train/lr", "train/images_per_s", "validation/top1"} <= set(
        tags["scalars"]
    )
    assert [step for step, _ in scalars(reader, "train/loss")] == [1, 2, 3, 4]
    for key, tag in (("loss", "train/loss"), ("lr", "train/lr"),
                     ("images_per_s", "train/images_per_s")):  # fmt: skip
        assert scalars(reader, tag) == logged(records, key)
    # evaluated at steps 2 and 4, and the final weights' count at 4: metrics.jsonl's records
    assert scalars(reader, "validation/top1") == logged(records, "top1")
    summary = json.loads((run / "summary.json").read_text())
    assert scalars(reader, "validation/top1")[-1][1] == pytest.approx(summary["validation_top1"])
    # the report's figures, as images of their own size, at the last step
    pngs = sorted([*run.glob("*.png"), *run.glob("figures/*.png")])
    assert {"curves", "confusion_matrix", "figures/attention_distance"} <= set(tags["images"])
    assert len(tags["images"]) == len(pngs) >= 7
    for png in pngs:
        [image] = reader.Images(str(png.relative_to(run).with_suffix("")))
        assert image.step == 4
        assert (image.width, image.height) == Image.open(png).size


def test_a_resumed_run_logs_each_step_once(image_tree: Path, tmp_path: Path) -> None:
    """A process logged steps 1-4 and checkpointed at 2 and 4; the step-4 checkpoint and the
    run's end are lost, so the next process resumes at 2: TensorBoard drops the first process's
    steps 3 and 4 (metrics.jsonl is cut the same way) and shows the second's."""
    run = tmp_path / "run"
    arguments = ["train", "--preset", "tiny", "--data", str(image_tree), "--out", str(run),
                 "steps=4", "log_every=1", "checkpoint_every=2", "log=tensorboard",
                 "report=false"]  # fmt: skip
    assert main(arguments) == 0
    for lost in ("summary.json", "model.safetensors", "config.json", "eval.json"):
        (run / lost).unlink()
    for lost in (run / "checkpoints").glob("step-00000004.pt*"):
        lost.unlink()
    assert main(arguments) == 0
    reader, records = events(run), jsonl(run)
    assert len(list(run.glob("events.out.tfevents.*"))) >= 3  # one per process and the end's
    assert [step for step, _ in scalars(reader, "train/loss")] == [1, 2, 3, 4]
    assert scalars(reader, "train/loss") == logged(records, "loss")
    assert scalars(reader, "test/top1") == logged(records, "top1")


def test_log_is_checked_like_every_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "log=wandb"])
    assert code == 2
    assert "log must be one of jsonl, tensorboard, got 'wandb'" in capsys.readouterr().err
