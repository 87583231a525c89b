"""The sections every experiment's report.html shares after its own result table: the arms'
training curves against time, the paper's inspection figures of one model per arm, and how the
experiment was run."""

from __future__ import annotations

from typing import Any

from vitkit.analysis.page import Page
from vitkit.analysis.plots import plot_curves_against_time
from vitkit.analysis.report import add_figures, write_run_figures
from vitkit.data.arrays import ArrayDataset
from vitkit.experiments.record import ExperimentRecord
from vitkit.training.run_dir import CURVES_NAME, RunDir

FIGURE_IMAGES = 128  # test images the attention distances average over, per model


def arm_curve(record: ExperimentRecord, stages: list[str]) -> list[dict[str, Any]]:
    """The metrics.jsonl records of one arm's runs (`stages`: run keys, in training order) as
    one curve: a later stage's seconds count on from the earlier stages' training time, so that
    the arms line up on the time they were given."""
    curve: list[dict[str, Any]] = []
    offset = 0.0
    for key in stages:
        records = RunDir(record.run_folder(key)).metric_records()
        curve += [{**item, "seconds": item["seconds"] + offset} for item in records
                  if "seconds" in item]  # fmt: skip
        offset += record.runs[key]["seconds"]
    return curve


def add_training_curves(
    page: Page, record: ExperimentRecord, arms: dict[str, list[list[str]]], *, note: str = ""
) -> None:
    """A heading and one figure of every arm's training loss and test top-1 against training
    time; `arms`: arm -> per seed, its run keys in training order. `note` adds to the caption
    (e.g. what a pre-training stage's loss is)."""
    curves = {arm: [arm_curve(record, stages) for stages in seeds] for arm, seeds in arms.items()}
    plot = plot_curves_against_time(curves, record.folder / CURVES_NAME)
    page.heading("Training curves")
    page.figure(
        plot,
        "Training loss (left, log scale) and test top-1 (right) against training time: one "
        "colour per arm, one line per seed; an arm of two stages continues its first stage's "
        f"time. {note}".strip(),
    )


def add_inspection_figures(
    page: Page, record: ExperimentRecord, runs: dict[str, str], test: ArrayDataset
) -> None:
    """A heading and, for each labelled run (label -> run key), the small inspection figures of
    its model, captioned with what they show for it, with a link to all of its figures (written
    into the run's folder). A model without attention (a plain ResNet) is named and skipped."""
    page.heading("What the models learned (the paper's inspection figures)")
    page.paragraph(
        f"One model per arm, on {FIGURE_IMAGES} class-balanced test images. Each caption gives "
        "this model's numbers, then what the paper reports, so differences between the arms "
        "can be read beside the paper's."
    )
    for label, key in runs.items():
        run_folder = record.run_folder(key)
        figures = write_run_figures(
            run_folder, test, label=f"{label} ({key})", images=FIGURE_IMAGES
        )
        if figures is None:
            page.heading(f"{label} ({key})", level=3)
            page.paragraph("A ResNet without attention: no figures.")
            continue
        page.heading(f"{label} ({key})", level=3)
        add_figures(page, figures, page_folder=record.folder, small_only=True)
        page.link(
            figures / "index.html", f"All figures of {label}, with its attention maps",
            folder=record.folder,
        )  # fmt: skip


def add_how_it_was_run(
    page: Page, record: ExperimentRecord, *, seconds: float, layout: str
) -> None:
    """The command, the machine, the start and this invocation's time; `layout` names the runs'
    folders (e.g. "runs/seedN/ARM")."""
    content = record.content
    page.how_it_was_run(
        content["command"] or f"vitkit experiment {content['experiment']}",
        f"Machine: {content['machine']}. Started {content['started']}; this invocation took "
        f"{seconds / 60:.1f} min. Each run's folder is {layout}, with its metrics.jsonl and "
        "model; experiment.json holds every setting and result.",
    )
