"""Where the benchmarks put what they measured: one Markdown section appended to RESULTS.md, the
file every measured number of this project lives in (the docs include it as their Results page).

The benchmarks that train arms over seeds are experiments (`vitkit.experiments.engine`) at fixed
steps, resumed from their folder's experiment.json: a `Benchmark`. `Summary` is what one found,
written both as the result section of its report.html and as its RESULTS.md section.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from argparse import ArgumentParser
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitkit.analysis.page import Page
from vitkit.devices import describe_machine
from vitkit.errors import VitkitError
from vitkit.experiments.engine import Experiment, Outcome, Request, Runs, run_experiment
from vitkit.experiments.record import RECORD_NAME, ExperimentRecord, Interrupted, read_record

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


@dataclass(frozen=True)
class Benchmark:
    """A benchmark that trains arms over seeds: an experiment at fixed steps (no time budget,
    so its accuracies do not depend on the machine's speed or load), whose report shows its
    summary and no inspection figures."""

    experiment: Experiment
    summarise: Summarise

    @classmethod
    def of(
        cls, name: str, title: str, *, arms: tuple[str, ...], runs: Runs, summarise: Summarise,
        layout: str, own_fields: tuple[str, ...] = (), **more: object,
    ) -> Benchmark:  # fmt: skip
        """`own_fields`: the TrainConfig fields the runs set beyond the seed; `more`: other
        `Experiment` fields (measure, data_size)."""
        experiment = Experiment(
            name=name, title=title, introduction="Fixed steps per run.", default_seeds=1,
            default_budget_seconds=None, own_fields=frozenset({"seed", *own_fields}), arms=arms,
            runs=runs, layout=layout, figures=lambda outcome: {}, timed=False,
            result=lambda page, record, outcome: summarise(record, outcome).add_to(page),
            **more,
        )  # fmt: skip
        return cls(experiment, summarise)

    def run(
        self, args: argparse.Namespace, settings: dict[str, object], *,
        arms: tuple[str, ...] | None = None, data: str | None = None,
    ) -> None:  # fmt: skip
        """Run (or resume) the benchmark in args.out with `settings` (recorded; the runs read
        them from the record), print its summary and, with args.write, append it to
        RESULTS.md. `arms` and `data` replace the experiment's arms and args.data."""
        experiment = dataclasses.replace(
            self.experiment, arms=arms or self.experiment.arms, settings=lambda hardware: settings
        )
        command = shlex.join(["python", *sys.argv])
        request = Request(data or args.data, args.seeds, budget_seconds=None)
        try:
            outcome = run_experiment(experiment, request, args.out, command=command)
        except VitkitError as error:  # a bad argument or a folder made with other settings
            raise SystemExit(f"{Path(sys.argv[0]).name}: error: {error}") from None
        except Interrupted as stopped:
            raise SystemExit(f"stopped during {stopped}; the same command resumes") from None
        record = ExperimentRecord(args.out, read_record(args.out / RECORD_NAME))
        section = self.summarise(record, outcome).markdown(command)
        print(f"\n{section}\n\nreport: {args.out / 'report.html'}")
        if args.write:
            append_to_results(section)


def benchmark_arguments(description: str, *, out: str, seeds: list[int]) -> ArgumentParser:
    """The arguments every benchmark takes: --data, --seeds, --out (default runs/OUT) and
    --write; a benchmark adds its own."""
    parser = ArgumentParser(description=description)
    parser.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    parser.add_argument("--out", type=Path, default=Path("runs") / out,
                        help="its folder: the same command resumes there")  # fmt: skip
    parser.add_argument("--write", action="store_true", help="append the summary to RESULTS.md")
    return parser
