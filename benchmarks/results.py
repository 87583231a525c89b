"""Where the benchmarks put what they measured: one Markdown section appended to RESULTS.md, the
file every measured number of this project lives in (the docs include it as their Results page).
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def append_to_results(section: str) -> None:
    """Append `section` to RESULTS.md, after a blank line."""
    with RESULTS.open("a", encoding="utf-8") as results:
        results.write("\n" + section.strip("\n") + "\n")
