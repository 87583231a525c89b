"""TensorBoard event files in the run folder (`log=tensorboard`), beside metrics.jsonl.

metrics.jsonl stays the run's record; this mirrors each of its lines as scalars (`train/loss`,
`train/lr`, `train/images_per_s`, and `<split>/top1` where evaluated) while the run trains, and
adds the run's figures (curves.png, confusion_matrix.png, figures/*.png) as images at its last
step. `tensorboard --logdir runs/` then shows every run under runs/, named by its folder.

A resumed run starts a new event file whose purge step is the first step it trains, so that
TensorBoard drops what a killed process logged past the checkpoint, as metrics.jsonl does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# metrics.jsonl keys and the scalar tags they are shown under.
SCALAR_TAGS = {"loss": "train/loss", "lr": "train/lr", "images_per_s": "train/images_per_s"}


def log_problem(log: str) -> str | None:
    """Why the `log` field's choice cannot run here (tensorboard's package missing), or None."""
    if log == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        return (
            "log=tensorboard needs the tensorboard package: pip install tensorboard "
            "(or vitkit[tensorboard])"
        )
    return None


def open_log(log: str, folder: Path, *, first_step: int) -> TensorBoardLog | None:
    """The view of a run's metrics that `log` asks for besides metrics.jsonl (None: none), the
    one place the field's value is read."""
    return TensorBoardLog(folder, first_step=first_step) if log == "tensorboard" else None


def add_figures_to_log(log: str, folder: Path, *, step: int) -> None:
    """The run's figures into the view `log` asks for, if it has one."""
    if (view := open_log(log, folder, first_step=step + 1)) is not None:
        view.add_figures(folder, step=step)
        view.close()


class TensorBoardLog:
    """One event file of a run folder: metric records as scalars, figures as images."""

    def __init__(self, folder: Path, *, first_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the optional package

        self._writer = SummaryWriter(log_dir=str(folder), purge_step=first_step)

    def write(self, record: dict[str, Any]) -> None:
        """A metrics.jsonl record's numbers as scalars at its step."""
        step = record["step"]
        for key, tag in SCALAR_TAGS.items():
            if key in record:
                self._writer.add_scalar(tag, record[key], step)
        if "top1" in record:
            self._writer.add_scalar(f"{record['split']}/top1", record["top1"], step)
        self._writer.flush()

    def add_figures(self, folder: Path, *, step: int) -> None:
        """The run's figures (its PNG files and those in figures/) as images, tagged by name."""
        for path in sorted([*folder.glob("*.png"), *folder.glob("figures/*.png")]):
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            tag = str(path.relative_to(folder).with_suffix(""))
            self._writer.add_image(tag, pixels, step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
