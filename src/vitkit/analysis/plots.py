"""The inspection figures as PNG files (matplotlib, no display needed).

Each function takes plain arrays computed elsewhere (`attention.py`, `embeddings.py`, the
evaluation) and writes one picture; none of them runs a model. Class, arm and folder names come
from data: every figure is drawn with matplotlib's mathtext off (`_plain_text`), so a name such as
`$\frac{1}{$` is drawn as those characters instead of failing to parse as a formula, and control
characters in class names are drawn as their escapes (`vitkit.text.printable`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.ticker import LogFormatter, MaxNLocator  # noqa: E402

from vitkit.io import atomic_write  # noqa: E402
from vitkit.text import printable  # noqa: E402

DPI = 110  # of every PNG: a report page shows one narrower than its column at this size
# The height of a capital letter or a digit per point of font size (DejaVu Sans, matplotlib's
# font): what sets how tall text looks.
CAP_HEIGHT = 0.73
READABLE_PIXELS = 12  # the capitals and digits of the report's plots, at the saved size


def _points(pixels: float) -> float:
    """The font size (points) whose capitals and digits are `pixels` tall in a PNG saved at DPI."""
    return pixels / CAP_HEIGHT * 72 / DPI


# Text sizes of the pictures a run's report shows, set in pixels of the saved picture rather than
# in points of a figure whose size varies (the confusion matrix's 7 pt names were 8 px tall).
_READABLE = {
    "font.size": _points(READABLE_PIXELS),
    "axes.labelsize": _points(READABLE_PIXELS + 1),
    "axes.titlesize": _points(READABLE_PIXELS + 2),
    "xtick.labelsize": _points(READABLE_PIXELS),
    "ytick.labelsize": _points(READABLE_PIXELS),
}


def _plain_text(plot: Callable[..., Path]) -> Callable[..., Path]:
    """Draw with every text shown literally: mathtext parsing off for the texts `plot` makes
    (matplotlib fixes that choice when a text is created)."""

    @functools.wraps(plot)
    def drawn(*args: object, **kwargs: object) -> Path:
        with plt.rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)

    return drawn


def _readable_text(plot: Callable[..., Path]) -> Callable[..., Path]:
    """Draw with text READABLE_PIXELS tall (a capital letter, a digit) in the saved picture."""

    @functools.wraps(plot)
    def drawn(*args: object, **kwargs: object) -> Path:
        with plt.rc_context(_READABLE):
            return plot(*args, **kwargs)

    return drawn


def _plain_log_scale(axes: plt.Axes, which: Literal["x", "y"]) -> None:
    """A log scale labelled with plain numbers ("2", "1e+04"): matplotlib's own labels are
    formulas ("$10^{4}$"), which the figures, drawn with mathtext off, would show as source."""
    axes.set_xscale("log") if which == "x" else axes.set_yscale("log")
    axis = axes.xaxis if which == "x" else axes.yaxis
    axis.set_major_formatter(LogFormatter())
    # Where the axis spans less than a decade, label the ticks between the powers of ten too.
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))


def _save(figure: plt.Figure, path: Path) -> Path:
    atomic_write(
        path, lambda handle: figure.savefig(handle, format="png", dpi=DPI, bbox_inches="tight")
    )
    plt.close(figure)
    return path


def _grid_shape(count: int, columns: int) -> tuple[int, int]:
    columns = min(columns, count)
    return -(-count // columns), columns


@_plain_text
def plot_embedding_filters(components: torch.Tensor, path: Path) -> Path:
    """Principal components (n, C, P, P) in [0, 1] as small RGB (or grey) images (Fig. 7 left)."""
    rows, columns = _grid_shape(len(components), 7)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.1 + 0.4))
    for index, axis in enumerate(np.atleast_1d(axes).flat):
        axis.set_axis_off()
        if index < len(components):
            image = components[index].permute(1, 2, 0).numpy()
            axis.imshow(image if image.shape[-1] == 3 else image[..., 0], cmap="gray")
    figure.suptitle("RGB embedding filters (first principal components)")
    return _save(figure, path)


@_plain_text
def plot_position_similarity(similarity: torch.Tensor, path: Path) -> Path:
    """The (h, w, h, w) similarities as an h x w mosaic of h x w maps (Fig. 7 centre), drawn as one
    image so that large grids (24 x 24 at 384 px) stay fast."""
    height, width = similarity.shape[:2]
    gap = 1
    mosaic = np.full(
        (height * (height + gap) - gap, width * (width + gap) - gap), np.nan, dtype=np.float32
    )
    for row in range(height):
        for column in range(width):
            top, left = row * (height + gap), column * (width + gap)
            mosaic[top : top + height, left : left + width] = similarity[row, column].numpy()
    figure, axis = plt.subplots(figsize=(6.4, 6.4 * mosaic.shape[0] / mosaic.shape[1] + 0.6))
    shown = axis.imshow(mosaic, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    axis.set_xticks([(c + 0.5) * (width + gap) - gap for c in range(width)], range(1, width + 1))
    axis.set_yticks([(r + 0.5) * (height + gap) - gap for r in range(height)], range(1, height + 1))
    axis.set_xlabel("input patch column")
    axis.set_ylabel("input patch row")
    axis.tick_params(length=0, labelsize=7)
    figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04, label="cosine similarity")
    axis.set_title("Position embedding similarity")
    return _save(figure, path)


@_plain_text
def plot_attention_distance(distances: torch.Tensor, token_pixels: int, path: Path) -> Path:
    """(blocks, heads) mean attention distance in pixels against depth, a point per head
    (Fig. 7 right)."""
    blocks, heads = distances.shape
    figure, axis = plt.subplots(figsize=(5, 4))
    for head in range(heads):
        axis.scatter(
            np.arange(1, blocks + 1), distances[:, head].numpy(), s=14, label=f"head {head + 1}"
        )
    axis.set_xlabel("network depth (block, counted from 1 as the captions count)")
    axis.set_ylabel("mean attention distance (pixels)")
    axis.set_xticks(range(1, blocks + 1))
    axis.set_ylim(bottom=0)
    axis.set_title(f"Mean attention distance ({token_pixels} px per token)")
    if heads <= 16:
        axis.legend(fontsize=6, ncol=2)
    return _save(figure, path)


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, H, W), bilinear, each map rescaled to [0, 1]."""
    low = maps.flatten(1).min(dim=1).values[:, None, None]
    high = maps.flatten(1).max(dim=1).values[:, None, None]
    unit = (maps - low) / (high - low).clamp_min(1e-12)
    return F.interpolate(unit[:, None].float(), size=size, mode="bilinear")[:, 0].numpy()


@_plain_text
def plot_attention_maps(
    images: np.ndarray, maps: torch.Tensor, path: Path, *, titles: Sequence[str] = ()
) -> Path:
    """Images (N, H, W, 3) uint8 beside the images weighted by their attention map (N, h, w),
    upsampled to the image (Fig. 6): pairs in a grid of up to 4 pairs a row, so that a page
    shows them on one screen."""
    masks = _upsample(maps, images.shape[1:3])
    count = len(images)
    per_row = min(4, count)
    rows = -(-count // per_row)
    figure, axes = plt.subplots(
        rows, 2 * per_row, figsize=(1.6 * 2 * per_row, 1.7 * rows + 0.3), squeeze=False
    )
    for axis in axes.flat:
        axis.set_axis_off()
    for index in range(count):
        row, column = divmod(index, per_row)
        image_axis, weighted_axis = axes[row, 2 * column], axes[row, 2 * column + 1]
        image_axis.imshow(images[index])
        weighted_axis.imshow((images[index] * masks[index][..., None]).astype(np.uint8))
        if index < len(titles):
            image_axis.set_title(printable(titles[index]), fontsize=7)
        weighted_axis.set_title("rollout", fontsize=7)
    return _save(figure, path)


@_plain_text
def plot_head_attention(images: np.ndarray, maps: torch.Tensor, path: Path) -> Path:
    """For each image (row), the last block's attention of the output token per head (columns),
    (N, heads, h, w), overlaid on the image."""
    count, heads = maps.shape[:2]
    columns = heads + 1
    figure, axes = plt.subplots(
        count, columns, figsize=(1.3 * columns, 1.3 * count + 0.3), squeeze=False
    )
    size = images.shape[1:3]
    for index in range(count):
        axes[index, 0].imshow(images[index])
        overlays = _upsample(maps[index], size)
        for head in range(heads):
            axes[index, head + 1].imshow(images[index])
            axes[index, head + 1].imshow(overlays[head], cmap="inferno", alpha=0.6)
            if index == 0:
                axes[index, head + 1].set_title(f"head {head + 1}", fontsize=7)
        for axis in axes[index]:
            axis.set_axis_off()
    figure.suptitle("Last block: attention of the output token, per head", fontsize=9)
    return _save(figure, path)


# Inches per class of the confusion matrix: a row as tall as its name at the readable size, a cell
# as wide as its rate.
CONFUSION_CELL = 0.55


@_plain_text
@_readable_text
def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrix: row = true class, column = predicted class. Each class
    takes CONFUSION_CELL inches, room for its name and its rate ("0.83") at the readable size,
    so that the picture grows with the classes instead of its text shrinking."""
    totals = matrix.sum(axis=1, keepdims=True)
    rates = matrix / np.maximum(totals, 1)
    count = len(classes)
    side = min(max(4.0, CONFUSION_CELL * count + 1.5), 30.0)
    figure, axis = plt.subplots(figsize=(side + 1, side))
    shown = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if count <= 40:
        names = [printable(name) for name in classes]  # folder names: no control characters
        axis.set_xticks(range(count), names, rotation=90)
        axis.set_yticks(range(count), names)
    if count <= 20:
        for row in range(count):
            for column in range(count):
                value = rates[row, column]
                color = "white" if value > 0.5 else "black"
                axis.text(column, row, f"{value:.2f}", ha="center", va="center", color=color)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)
    axis.set_title("Confusion matrix (rows sum to 1)")
    return _save(figure, path)


# Few enough logged points to draw each as a dot: a short run logs one or two (at its last step,
# and every log_every steps), which a line alone would leave invisible.
FEW_POINTS = 50


@_plain_text
@_readable_text
def plot_training_curves(metrics: Sequence[dict], path: Path) -> Path:
    """A run's training loss and, where it was evaluated, its top-1, against the step (the
    records of its metrics.jsonl), from step 0; every logged point a dot while there are few."""
    losses = [(record["step"], record["loss"]) for record in metrics if "loss" in record]
    accuracies = [(record["step"], record["top1"]) for record in metrics if "top1" in record]
    figure, axis = plt.subplots(figsize=(6.4, 4))
    if losses:
        marker = "o" if len(losses) <= FEW_POINTS else None
        axis.plot(*zip(*losses), marker=marker, markersize=5, color="tab:blue")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (blue)")
    axis.set_xlim(left=0)
    axis.set_ylim(bottom=0)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # no step 2.5
    if accuracies:
        other = axis.twinx()
        other.plot(*zip(*accuracies), "s-", markersize=7, color="tab:orange", clip_on=False)
        other.set_ylabel("top-1 (orange)")
        other.set_ylim(0, 1)  # the whole scale, never a zoom; 0 and 1 drawn whole (clip_on)
        axis.set_zorder(other.get_zorder() + 1)  # the loss's dots over top-1's squares
        axis.patch.set_visible(False)
    axis.grid(alpha=0.3)
    return _save(figure, path)


@_plain_text
def plot_curves_against_time(curves: dict[str, list[Sequence[dict]]], path: Path) -> Path:
    """Training loss (left) and test top-1 (right) against training seconds for several arms of
    an experiment: one colour per arm, one line per seed. Each curve is a list of metrics.jsonl
    records carrying "seconds"; records without it (runs older than that field) are left out.
    Time, not step, is the x axis because the arms are compared at equal time and differ in
    steps (a higher resolution or a pre-training stage costs steps)."""
    figure, (losses, accuracies) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for position, (label, seeds) in enumerate(curves.items()):
        colour = colours[position % len(colours)]
        for seed, records in enumerate(seeds):
            timed = [record for record in records if "seconds" in record]
            for axis, key in ((losses, "loss"), (accuracies, "top1")):
                points = [(record["seconds"], record[key]) for record in timed if key in record]
                if points:
                    seconds, values = zip(*points)
                    scale = 100 if key == "top1" else 1
                    axis.plot(seconds, np.asarray(values) * scale, color=colour, alpha=0.8,
                              marker="o" if key == "top1" else None, markersize=3,
                              label=label if seed == 0 else None)  # fmt: skip
    _plain_log_scale(losses, "y")
    for axis, ylabel in ((losses, "training loss (log scale)"), (accuracies, "test top-1 (%)")):
        axis.set_xlabel("training time (s)")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    losses.legend(fontsize=8)
    return _save(figure, path)


@_plain_text
def plot_arms(values: dict[str, list[float]], path: Path, *, ylabel: str, title: str) -> Path:
    """An experiment's arms side by side: each seed's value as a dot, the mean as a bar, so the
    spread over seeds is seen next to the difference between arms. Values are fractions (top-1),
    drawn in percent."""
    figure, axes = plt.subplots(figsize=(1.8 + 1.6 * len(values), 4))
    for position, arm in enumerate(values.values()):
        percent = 100 * np.asarray(arm, dtype=float)
        axes.bar(position, percent.mean(), width=0.6, color="#c8d8ea")
        axes.scatter(np.full(len(percent), position), percent, color="#1f4e79", zorder=3)
    axes.set_xticks(range(len(values)), list(values), fontsize=9)
    lowest = 100 * min(min(arm) for arm in values.values())
    highest = 100 * max(max(arm) for arm in values.values())
    margin = max(1.0, 0.15 * (highest - lowest))
    axes.set_ylim(lowest - 3 * margin, highest + margin)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


@_plain_text
def plot_lines(
    x: Sequence[float],
    series: dict[str, list[float]],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    log_x: bool = False,
) -> Path:
    """One line per series over the shared `x` (e.g. accuracy against training-set size);
    values are fractions, drawn in percent."""
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, values in series.items():
        axes.plot(x, 100 * np.asarray(values, dtype=float), marker="o", label=label)
    if log_x:
        _plain_log_scale(axes, "x")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)
