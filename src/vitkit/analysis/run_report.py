"""report.html for a `vitkit train` run and for the demo: one page a person opens, with the
result table, the training curves, (for the demo) the paper's claim as measured, the
inspection figures with their captions, the command and the machine. Written into the run's
folder, images linked from it and its sub-folders, so the folder works offline as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitkit.analysis.page import Page
from vitkit.analysis.report import FIGURES_FOLDER, add_figures
from vitkit.devices import describe_machine
from vitkit.training.run_dir import CURVES_NAME, RunDir

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
    page.heading("How it was run")
    page.paragraph(command, code=True)
    page.paragraph(
        f"Machine: {describe_machine()}. The whole demo took {summary['seconds'] / 60:.1f} min; "
        "each stage's folder holds its metrics.jsonl, summary.json and model."
    )
    path = out / "report.html"
    page.write(path)
    return path


# The config fields a reader of a single run's report looks for first.
SHOWN_FIELDS = ("model", "data", "init", "resolution", "optimizer", "lr", "batch_size",
                "budget_seconds", "steps", "precision", "seed")  # fmt: skip


def write_train_report(out: Path, summary: dict[str, Any], command: str) -> Path:
    """out/report.html for one `vitkit train` run: its summary.json contents, the main fields of
    its train_config.json, its curves.png and its figures/ folder; returns the page's path."""
    page = Page(f"vitkit train: {out.name}")
    page.heading("Result")
    top1 = summary.get("top1")
    page.table(
        ["steps", "images seen", "resolution", "training time", "top-1"],
        [[str(summary["steps"]), str(summary["images_seen"]), f"{summary['resolution']} px",
          f"{summary['seconds']:.0f} s", "not evaluated" if top1 is None else f"{top1:.2%}"]],
    )  # fmt: skip
    if (saved := RunDir(out).saved_config()) is not None:  # read as a resume reads it
        config = saved["requested"]
        page.table(["field", "value"], [[name, str(config[name])] for name in SHOWN_FIELDS
                                        if config.get(name) not in (None, "", 0)])  # fmt: skip
    curves = out / CURVES_NAME
    if curves.is_file():
        page.figure(curves, "Training loss and, where evaluated, top-1 against the step.")
    if (out / FIGURES_FOLDER).is_dir():
        page.heading("What the model learned (the paper's inspection figures)")
        add_figures(page, out / FIGURES_FOLDER, page_folder=out)
    page.heading("How it was run")
    page.paragraph(command, code=True)
    page.paragraph(f"Machine: {describe_machine()}. train_config.json holds every field.")
    path = out / "report.html"
    page.write(path)
    return path
