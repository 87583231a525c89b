"""report.html for a `vitkit train` run and for the demo: one page a person opens, with the
result table, the training curves, (for the demo) the paper's claim as measured, the
inspection figures with their captions, the command and the machine. Written into the run's
folder, images linked from it and its sub-folders, so the folder works offline as it is.

A run's page tells what was trained, from the run's own records: the architecture of
train_config.json (for a fine-tuning run, its init checkpoint's, whatever the `model` field
says), every change a `--force` resume made, and the per-class accuracy and confusion matrix of
the final weights' eval.json. Those files are read as a stranger's (capped, every value
checked): a bad one is a TrainingError naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.analysis.page import Page
from vitkit.analysis.plots import plot_confusion_matrix, plot_training_curves
from vitkit.analysis.report import FIGURES_FOLDER, add_figures, figures_for_dataset
from vitkit.data.sources import open_for_model
from vitkit.devices import describe_machine
from vitkit.errors import ConfigError, TrainingError
from vitkit.evaluation.accuracy import ClassificationReport
from vitkit.io import read_capped
from vitkit.models.checks import FieldProblem, check_each, integer, shown
from vitkit.models.complexity import count_params
from vitkit.models.config import ViTConfig, config_from_fields
from vitkit.text import printable
from vitkit.training.build import resolve_splits
from vitkit.training.config import ARCHITECTURE_FIELDS, TrainConfig
from vitkit.training.run_dir import (
    CONFIG_NAME,
    CURVES_NAME,
    EVAL_NAME,
    MOST_RECORD_BYTES,
    RunDir,
)
from vitkit.training.summary import TrainSummary
from vitkit.training.validation import VALIDATION
from vitkit.weights.load import load_model

REPORT_NAME = "report.html"
CONFUSION_NAME = "confusion_matrix.png"  # as `vitkit eval` names it
STAGES = {
    "pretrain": "pre-training from scratch",
    "finetune": "fine-tuning at the higher resolution (the paper's way)",
    "finetune_at_pretrain_res": "fine-tuning for the same time at the pre-training resolution",
}
PAPER_CLAIM = (
    "The paper (section 3.2, after Touvron et al. 2019): it is often beneficial to fine-tune at a "
    "higher resolution than pre-training, keeping the patch size (a longer sequence) and "
    "resizing the position embeddings by 2-D interpolation."
)


def write_demo_report(out: Path, summary: dict[str, Any], command: str) -> Path:
    """out/report.html from the demo's summary.json contents, its stages' curves.png and its
    figures/ folder (with captions.json); returns the page's path."""
    stages = summary["stages"]
    page = Page("vitkit demo: pre-train at low resolution, fine-tune at a higher one")
    page.heading("Result")
    rows = [
        [name, what, f"{stages[name]['resolution']} px", str(stages[name]["steps"]),
         f"{stages[name]['seconds']:.0f} s", f"{stages[name]['top1']:.2%}"]
        for name, what in STAGES.items()
    ]  # fmt: skip
    page.table(["stage", "what it trains", "resolution", "steps", "training time", "top-1"], rows)
    gain = summary["top1"] - summary["top1_pretrain_res"]
    verdict = "agrees with" if gain > 0 else "does not agree with"
    high, low = stages["finetune"]["resolution"], stages["finetune_at_pretrain_res"]["resolution"]
    page.paragraph(
        f"The claim as measured: fine-tuning at {high} px gave {summary['top1']:.2%} top-1 "
        f"against {summary['top1_pretrain_res']:.2%} for the same time at {low} px, "
        f"{100 * gain:+.2f} points, which {verdict} the paper (one run; the seed-to-seed spread "
        f"of such differences is about a point, benchmarks/RESULTS.md). {PAPER_CLAIM}"
    )
    if summary.get("eval_flip"):
        page.paragraph("Top-1 counts each test image with its mirror image, logits averaged.")
    page.heading("Training curves")
    curves = [
        (out / name / CURVES_NAME, f"{name}: training loss and top-1 against the step.")
        for name in STAGES
        if (out / name / CURVES_NAME).is_file()
    ]
    page.figure_row(curves, folder=out)
    if (out / FIGURES_FOLDER).is_dir():
        page.heading("What the fine-tuned model learned (the paper's inspection figures)")
        add_figures(page, out / FIGURES_FOLDER, page_folder=out)
    page.how_it_was_run(
        command,
        f"Machine: {describe_machine()}. The whole demo took {summary['seconds'] / 60:.1f} min; "
        "each stage's folder holds its metrics.jsonl, summary.json and model.",
    )
    path = out / REPORT_NAME
    page.write(path)
    return path


# The config fields a reader of a single run's report looks for first (with init, `model`
# is not used: the architecture is the checkpoint's).
SHOWN_FIELDS = ("model", "data", "init", "resolution", "optimizer", "lr", "batch_size",
                "budget_seconds", "steps", "precision", "seed")  # fmt: skip


def write_run_outputs(
    out: Path, config: TrainConfig, summary: TrainSummary, *, command: str | None
) -> dict[str, Path]:
    """What a complete run leaves for a person beside its weights: curves.png, the paper's
    inspection figures of the trained model on the test split (figures/), the confusion matrix
    of the final weights (confusion_matrix.png, from eval.json) and report.html showing them;
    returns their paths by what they are. A finished run run again writes them anew. `command`:
    the command line that ran it (None: run from Python)."""
    written = {"training curves": plot_training_curves(RunDir(out).metric_records(),
                                                       out / CURVES_NAME)}  # fmt: skip
    figures = None
    splits = resolve_splits(config)
    # The images the run was evaluated on: the test split, else those it held out to validate.
    looked_at, evaluated = (splits.test, splits.test) if splits.test else (splits.train, VALIDATION)
    if splits.test or splits.validation_fraction:
        model = load_model(out)
        if model.config.depth > 0:  # a plain ResNet has no attention to show
            images = open_for_model(config.data, looked_at, model.preprocessing,
                                    skip_bad=config.skip_bad)  # fmt: skip
            label = f"{out} on {config.data} ({looked_at})"
            index = figures_for_dataset(model, model.preprocessing, images, out / FIGURES_FOLDER,
                                        label=label)["index.html"]  # fmt: skip
            written["inspection figures"] = index
            figures = index.parent
    evaluation = final_evaluation(out, evaluated) if looked_at else None
    if evaluation is not None and evaluation.report.confusion is not None:
        written["confusion matrix"] = plot_confusion_matrix(
            evaluation.report.confusion, list(evaluation.report.counts), out / CONFUSION_NAME
        )
    written["report"] = write_train_report(out, summary, command=command, figures=figures,
                                           evaluation=evaluation)  # fmt: skip
    return written


def final_evaluation(out: Path, split: str) -> RunEvaluation | None:
    """The run's eval.json when it holds the final weights on `split` (a test split, or
    VALIDATION); None without one, or for one of another split (written before --force changed
    test_split: earlier weights)."""
    if not os.path.lexists(out / EVAL_NAME):
        return None
    evaluation = read_evaluation(out / EVAL_NAME)
    return evaluation if evaluation.split == split else None


def write_train_report(
    out: Path,
    summary: TrainSummary,
    *,
    command: str | None,
    figures: Path | None,
    evaluation: RunEvaluation | None,
) -> Path:
    """out/report.html for one `vitkit train` run: its summary, the main fields of its
    train_config.json with the architecture trained and the --force changes, its curves.png, the
    per-class accuracy and confusion matrix of `evaluation`, and the inspection figures in
    `figures`; returns the page's path."""
    page = Page(f"vitkit train: {out.name}")
    page.heading("Result")
    page.table(
        ["steps", "images seen", "resolution", "training time", "top-1"],
        [[str(summary.steps), str(summary.images_seen), f"{summary.resolution} px",
          f"{summary.seconds:.0f} s",
          "not evaluated" if summary.top1 is None else f"{summary.top1:.2%}"]],
    )  # fmt: skip
    if (saved := RunDir(out).saved_config()) is not None:  # read as a resume reads it
        add_config(page, saved, out / CONFIG_NAME)
    curves = out / CURVES_NAME
    if curves.is_file():
        page.figure(curves, "Training loss (every logged step) and, where evaluated, top-1 "
                            "against the step.")  # fmt: skip
    if evaluation is not None:
        add_evaluation(page, evaluation, out)
    if figures is not None:
        page.heading("What the model learned (the paper's inspection figures)")
        add_figures(page, figures, page_folder=out)
    page.how_it_was_run(
        command or "From Python: vitkit.training.train(config, out_dir).",
        f"Machine: {describe_machine()}. train_config.json holds every field.",
        code=command is not None,
    )
    path = out / REPORT_NAME
    page.write(path)
    return path


def add_config(page: Page, saved: dict[str, Any], path: Path) -> None:
    """The architecture trained and the main fields of train_config.json (`saved`, read from
    `path`) as a table, then the changes every --force resume made."""
    config = saved["requested"]
    init = config.get("init")
    rows = []
    if (architecture := trained_architecture(saved, path)) is not None:
        where = " (the init checkpoint's)" if init else ""
        described = f"{architecture.describe()}, {count_params(architecture):,} parameters"
        rows.append(["architecture", described + where])
    shown_fields = [name for name in SHOWN_FIELDS if not (init and name in ARCHITECTURE_FIELDS)]
    rows += [[name, str(config[name])] for name in shown_fields
             if config.get(name) not in (None, "", 0)]  # fmt: skip
    page.table(["field", "value"], rows)
    if changes := forced_changes(saved, path):
        page.heading("Changed on resuming (--force)", level=3)
        page.table(["at step", "field", "was", "became"], changes)


def trained_architecture(saved: dict[str, Any], path: Path) -> ViTConfig | None:
    """The ViTConfig that train_config.json (`saved`) records as trained, None when it records
    none; TrainingError naming the file and the field when the record is no ViTConfig."""
    values = saved.get("architecture")
    if values is None:
        return None
    if not isinstance(values, dict):
        raise TrainingError(f'{path}: "architecture" must be an object of ViTConfig fields')
    known = [field.name for field in dataclasses.fields(ViTConfig)]
    if unknown := sorted(set(values) - set(known)):
        raise TrainingError(f'{path}: "architecture": unknown field(s) {", ".join(unknown)[:200]}')
    try:
        return config_from_fields(values, names={name: f"architecture.{name}" for name in known})
    except ConfigError as error:
        raise TrainingError(f"{path}: {error}") from None


def forced_changes(saved: dict[str, Any], path: Path) -> list[list[str]]:
    """[step, field, old value, new value] for every change of train_config.json's "forced"
    records (`saved`, read from `path`), values as JSON writes them; TrainingError naming the
    file when a record is not {"at_step": step, "changed": {field: [old, new]}}."""
    forced = saved.get("forced", [])
    rows = []
    problem = TrainingError(
        f'{path}: "forced" must be a list of {{"at_step": step, "changed": {{field: [old, new]}}}}'
    )
    if not isinstance(forced, list):
        raise problem
    for record in forced:
        if not isinstance(record, dict) or not isinstance(record.get("changed"), dict):
            raise problem
        step = record.get("at_step")
        if type(step) is not int or step < 0:
            raise problem
        for field, change in record["changed"].items():
            if not isinstance(change, list) or len(change) != 2:
                raise problem
            old, new = (printable(json.dumps(value)) for value in change)
            rows.append([str(step), printable(field), old, new])
    return rows


# --- eval.json ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunEvaluation:
    """A run's eval.json: the final weights' accuracies on the split named `split`."""

    split: str
    report: ClassificationReport


def add_evaluation(page: Page, evaluation: RunEvaluation, out: Path) -> None:
    """The per-class table of `evaluation` and its confusion matrix (in `out`, when drawn)."""
    report, split = evaluation.report, printable(evaluation.split)
    top_k = min(5, len(report.per_class))
    page.heading(f"Accuracy per class ({split} split)")
    page.paragraph(
        f"The final weights on the {report.images} images of the {split} split: top-1 "
        f"{report.top1:.2%}, top-{top_k} {report.top5:.2%} (eval.json; vitkit eval gives the "
        "same for any checkpoint and split)."
    )
    page.table(
        ["class", "top-1", "images"],
        [[printable(name), f"{accuracy:.2%}", str(report.counts[name])]
         for name, accuracy in report.per_class.items()],
    )  # fmt: skip
    if report.confusion is not None and (out / CONFUSION_NAME).is_file():
        caption = (
            f"Confusion matrix on the {split} split: a row per true class, a column per "
            "predicted class, each row's share of its class's images."
        )
        page.figure(out / CONFUSION_NAME, caption)


def read_evaluation(path: Path) -> RunEvaluation:
    """The evaluation in `path`, an eval.json as `vitkit eval` writes it with the split's name
    ("split"), read within MOST_RECORD_BYTES and checked value by value: TrainingError naming the
    file and each bad key."""
    try:
        content = json.loads(read_capped(path, MOST_RECORD_BYTES, what=f"run's {path.name}",
                                         error=TrainingError))  # fmt: skip
    except (ValueError, RecursionError) as error:  # ValueError: JSON, UTF-8, digits
        content = error
    if not isinstance(content, dict):
        raise TrainingError(f"{path}: unreadable (no JSON object)")
    values = {name: content.get(name) for name in _EVAL_CHECKS}
    checked, problems = check_each(_EVAL_CHECKS, values, {})
    if not problems:
        problems = _evaluation_problems(checked)
    if problems:
        raise TrainingError(f"{path}: " + "; ".join(problems))
    confusion = checked["confusion"]
    report = ClassificationReport(
        top1=checked["top1"], top5=checked["top5"], per_class=checked["per_class"],
        counts=checked["counts"], images=checked["images"],
        confusion=None if confusion is None else np.array(confusion, dtype=np.int64),
    )  # fmt: skip
    return RunEvaluation(split=checked["split"], report=report)


def _fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise FieldProblem(f"must be a fraction in [0, 1], got {shown(value)}")  # NaN too
    return float(value)


_count = functools.partial(integer, minimum=0, maximum=1 << 53)


def _split(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise FieldProblem(f"must be the name of a split, got {shown(value)}")
    return value


def _by_class(check: Callable[[object], object]) -> Callable[[object], dict[str, object]]:
    """A check of {class name: value} objects, each value by `check`."""

    def by_class(value: object) -> dict[str, object]:
        if not isinstance(value, dict) or not value:
            raise FieldProblem(f"must be an object of class name: value, got {shown(value)}")
        checked = {}
        for name, item in value.items():
            try:
                checked[name] = check(item)
            except FieldProblem as problem:
                raise FieldProblem(f"(class {shown(name)}) {problem}") from None
        return checked

    return by_class


def _confusion(value: object) -> list[list[int]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise FieldProblem(f"must be a list of rows of counts, or null, got {shown(value)}")
    return [[_count(count) for count in row] for row in value]


_EVAL_CHECKS = {
    "split": _split,
    "top1": _fraction,
    "top5": _fraction,
    "images": _count,
    "per_class": _by_class(_fraction),
    "counts": _by_class(_count),
    "confusion": _confusion,
}


def _evaluation_problems(checked: dict[str, Any]) -> list[str]:
    """What does not fit together in a checked eval.json: every key names the same classes in
    the same order, the counts add up, the confusion matrix is classes x classes."""
    classes = list(checked["per_class"])
    problems = []
    if list(checked["counts"]) != classes:
        problems.append("counts must name the classes of per_class, in its order")
    elif sum(checked["counts"].values()) != checked["images"]:
        problems.append(f"images {checked['images']} is not the sum of counts")
    confusion = checked["confusion"]
    if confusion is not None and (
        len(confusion) != len(classes) or any(len(row) != len(classes) for row in confusion)
    ):
        problems.append(f"confusion must be {len(classes)} x {len(classes)} (the classes)")
    return problems
