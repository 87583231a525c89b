"""One self-contained HTML page of headings, paragraphs, tables and figures: the reports that
experiments (and training runs) write beside their results.

Images are PNG files in the page's own folder, linked by name, so the folder works offline and can
be moved or shared as it is; every text is escaped. The style keeps the page readable on a laptop
screen: a text column of 60 em, images scaled to fit it, tables that scroll sideways if wide.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitkit.io import atomic_write_text

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.5em 0 0; }
.table { overflow-x: auto; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1.5em 0; }
.row { display: flex; flex-wrap: wrap; gap: 0 1.5em; }
.row figure { flex: 1 1 18em; margin: 1em 0; }
img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.92em; }
code { background: #f4f4f4; padding: 0 0.25em; }
"""


@dataclass
class Page:
    """An HTML page built part by part, in order, then written with `write`."""

    title: str
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str, *, level: int = 2) -> None:
        """A section heading (level 2), or a sub-section's (level 3)."""
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, *, code: bool = False) -> None:
        """A paragraph; with `code`, the text set as one line of code (a command)."""
        escaped = html.escape(text)
        self.parts.append(f"<p><code>{escaped}</code></p>" if code else f"<p>{escaped}</p>")

    def link(self, target: Path, text: str, *, folder: Path) -> None:
        """A paragraph that links `text` to `target`, a file below `folder`, the page's folder."""
        href = html.escape(target.relative_to(folder).as_posix())
        self.parts.append(f'<p><a href="{href}">{html.escape(text)}</a></p>')

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in rows
        )
        self.parts.append(
            f'<div class="table"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>"
        )

    def figure(self, image: Path, caption: str, *, folder: Path | None = None) -> None:
        """An image with its caption, linked by its name when it lies in the page's folder, or
        by its path relative to `folder`, the page's folder, when it lies below it."""
        self.parts.append(_figure(image, caption, folder))

    def figure_row(
        self, figures: Sequence[tuple[Path, str]], *, folder: Path | None = None
    ) -> None:
        """(image, caption) pairs side by side where the screen is wide enough, wrapping
        below each other where it is not; linked as in `figure`."""
        cells = "".join(_figure(image, caption, folder) for image, caption in figures)
        self.parts.append(f'<div class="row">{cells}</div>')

    def how_it_was_run(self, command: str, facts: str, *, code: bool = True) -> None:
        """Every report's last section: the command that ran it (one line of code; `code`
        False: a sentence, where Python ran it), then the machine and what else says how."""
        self.heading("How it was run")
        self.paragraph(command, code=code)
        self.paragraph(facts)

    def write(self, path: Path) -> None:
        title = html.escape(self.title)
        body = "\n".join(self.parts)
        atomic_write_text(
            path,
            f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{title}</h1>\n{body}\n</body>\n</html>\n",
        )


def _figure(image: Path, caption: str, folder: Path | None) -> str:
    name = html.escape(image.name if folder is None else image.relative_to(folder).as_posix())
    text = html.escape(caption)
    return f'<figure><img src="{name}" alt="{text}"><figcaption>{text}</figcaption></figure>'
