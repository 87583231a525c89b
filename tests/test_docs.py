"""The documentation site: MkDocs builds it with --strict (a broken link, a missing page or an
API reference that cannot be generated fails the build), and headless Chromium opens its home
page, an API reference page and its search box."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vitkit.weights import load_model

from helpers import inspect_in_chromium

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["models", "weights", "data", "training", "distributed", "evaluation", "experiments",
         "reliability", "cli", "architecture", "results"]  # fmt: skip
REFERENCE = ["models", "weights", "data", "training", "evaluation", "experiments"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    return out


def test_every_page_and_reference_is_built_from_its_source(site: Path) -> None:
    """Each page exists; the home page carries the README's commands, the results page
    benchmarks/RESULTS.md, and the reference pages the docstrings of the code."""
    for page in [*PAGES, *(f"reference/{name}" for name in REFERENCE), "reference"]:
        assert (site / page / "index.html").is_file(), page
    home = page_text(site / "index.html")
    assert "bash scripts/demo.sh" in home and "vitkit train --preset transfer" in home
    results = page_text(site / "results" / "index.html")
    first_heading = next(
        line[3:] for line in (ROOT / "benchmarks" / "RESULTS.md").read_text().splitlines()
        if line.startswith("## ")
    )  # fmt: skip
    assert first_heading.split(",")[0] in results
    reference = page_text(site / "reference" / "weights" / "index.html")
    first_line = load_model.__doc__.split("\n")[0]
    assert "load_model" in reference and first_line.split("(")[0] in reference


def page_text(page: Path) -> str:
    """A built page's text, without its tags (highlighted code is split into many spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def test_search_finds_a_page(site: Path) -> None:
    """The search index holds every page, so the search box has something to find."""
    index = json.loads((site / "search" / "search_index.json").read_text())
    locations = {entry["location"].split("#")[0] for entry in index["docs"]}
    assert {f"{page}/" for page in PAGES} <= locations
    assert any("load_model" in entry["text"] for entry in index["docs"])


def test_chromium_shows_the_home_page_a_reference_page_and_search_results(
    site: Path, tmp_path: Path
) -> None:
    """In headless Chromium: the home page's title and navigation, the rendered docstring of a
    reference page, and the search box returning results for a query typed into it."""
    home = inspect_in_chromium(
        site / "index.html",
        "var doc = frame.contentDocument;"
        "report({title: doc.title, nav: doc.querySelectorAll('.md-nav__link').length,"
        "  search: doc.querySelectorAll('input.md-search__input').length});",
        tmp_path,
        root=site,
    )
    assert home["title"].startswith("vitkit") and home["nav"] >= len(PAGES) and home["search"] == 1
    reference = inspect_in_chromium(
        site / "reference" / "weights" / "index.html",
        "var doc = frame.contentDocument;"
        "report({objects: doc.querySelectorAll('.doc-object').length,"
        "  text: doc.body.innerText.indexOf('load_model') >= 0});",
        tmp_path,
        root=site,
    )
    assert reference["objects"] > 0 and reference["text"]
    search = inspect_in_chromium(
        site / "index.html",
        "var doc = frame.contentDocument, input = doc.querySelector('input.md-search__input');"
        "function type() { input.focus(); input.value = 'load_model';"
        "  ['focus', 'input', 'keyup'].forEach(function (name) {"
        "    input.dispatchEvent(new frame.contentWindow.Event(name, {bubbles: true})); }); }"
        # Chromium's virtual time runs ahead of the search worker's real time: each tick spins
        # for some real milliseconds, and types the query again until the worker has its index.
        "var tries = 0, poll = setInterval(function () {"
        "  for (var spin = 0, sum = 0; spin < 2e7; spin++) { sum += spin; }"
        "  var items = doc.querySelectorAll('.md-search-result__item');"
        "  if (!items.length) { type(); }"
        "  if (items.length || ++tries > 60) { clearInterval(poll);"
        "    report({results: items.length,"
        "      first: items.length ? items[0].innerText.slice(0, 200) : ''}); } }, 100);",
        tmp_path,
        root=site,
    )
    assert search["results"] > 0 and "load_model" in search["first"], search
