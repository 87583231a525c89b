"""Where the benchmarks put what they measured: one Markdown section appended to RESULTS.md, the
file every measured number of this project lives in (the docs include it as their Results page).

The benchmarks that train are experiments (`vitkit.experiments.engine`): arms x seeds at fixed
steps, resumed from their folder's experiment.json. `Summary` is what one found, written both as
the result section of its report.html and as its RESULTS.md section; `run_benchmark` runs one,
prints its summary and, with --write, appends it.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitkit.analysis.page import Page
from vitkit.devices import describe_machine
from vitkit.experiments.engine import Experiment, Outcome, Request, run_experiment
from vitkit.experiments.record import RECORD_NAME, ExperimentRecord, read_record

RESULTS = Path(__file__).with_name("RESULTS.md")


def append_to_results(section: str) -> None:
    """Append `section` to RESULTS.md, after a blank line."""
    with RESULTS.open("a", encoding="utf-8") as results:
        results.write("\n" + section.strip("\n") + "\n")


@dataclass
class Summary:
    """A benchmark's finding: paragraphs, then one table, then paragraphs after it."""

    title: str
    before: list[str]
    header: list[str]
    rows: list[list[str]]
    after: list[str] = field(default_factory=list)

    def add_to(self, page: Page) -> None:
        for text in self.before:
            page.paragraph(text)
        page.table(self.header, self.rows)
        for text in self.after:
            page.paragraph(text)

    def markdown(self, command: str) -> str:
        """A RESULTS.md section: the title with today's date, the machine and the command, the
        paragraphs and the table (its first column left-aligned, the others right)."""
        lines = [f"## {self.title}, {time.strftime('%Y-%m-%d')}", ""]
        lines += [f"Machine: {describe_machine()}. Command: `{command}`.", ""]
        lines += [*(f"{text}\n" for text in self.before)]
        lines += [
            "| " + " | ".join(self.header) + " |",
            "| --- |" + " ---: |" * (len(self.header) - 1),  # numbers right, as on the page
            *("| " + " | ".join(row) + " |" for row in self.rows),
        ]
        lines += [*(f"\n{text}" for text in self.after)]
        return "\n".join(lines)


Summarise = Callable[[ExperimentRecord, Outcome], Summary]


def result_section(summarise: Summarise) -> Callable[[Page, ExperimentRecord, Outcome], None]:
    """An experiment's report section that shows its summary."""
    return lambda page, record, outcome: summarise(record, outcome).add_to(page)


def run_benchmark(
    experiment: Experiment, summarise: Summarise, data: str, seeds: list[int], out: Path,
    *, write: bool,
) -> None:  # fmt: skip
    """Run (or resume) `experiment` in `out` at fixed steps, print its summary and, with `write`,
    append it to RESULTS.md."""
    command = shlex.join(["python", *sys.argv])
    request = Request(data, seeds, budget_seconds=None)
    outcome = run_experiment(experiment, request, out, command=command)
    record = ExperimentRecord(out, read_record(out / RECORD_NAME))
    section = summarise(record, outcome).markdown(command)
    print(f"\n{section}\n\nreport: {out / 'report.html'}")
    if write:
        append_to_results(section)
