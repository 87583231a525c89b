"""`export_model`: write a vitkit model in any format `load_model` reads, all or nothing.

Each format's writer lives beside its reader (`write_timm` in timm.py, `write_hf` in hf.py,
`write_npz` in google.py, `save_pretrained` in native.py); this module only picks one. Every writer
first checks that the target can express the model, raising `CheckpointError` and writing nothing
when it cannot, and then replaces each file atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from vitkit.errors import CheckpointError
from vitkit.models.vit import VisionTransformer
from vitkit.weights.google import write_npz
from vitkit.weights.hf import write_hf
from vitkit.weights.native import save_pretrained
from vitkit.weights.timm import write_timm

ExportFormat = Literal["vitkit", "timm", "hf", "npz"]
WRITERS = {"vitkit": save_pretrained, "timm": write_timm, "hf": write_hf, "npz": write_npz}


def export_model(model: VisionTransformer, destination: str | Path, *, to: ExportFormat) -> Path:
    """Write `model` to `destination` in format `to`: a directory for "vitkit" and "hf", a
    state dict file (.safetensors, .pth, ...) for "timm", an .npz file for "npz"."""
    if to not in WRITERS:
        raise CheckpointError(f"unknown export format {to!r}; expected {', '.join(WRITERS)}")
    destination = Path(destination)
    if to in ("vitkit", "hf") and destination.exists() and not destination.is_dir():
        raise CheckpointError(f"{destination}: exists and is not a directory")
    if to in ("timm", "npz") and destination.is_dir():
        raise CheckpointError(f"{destination}: is a directory; a {to} export is one file")
    try:
        return WRITERS[to](model, destination)
    except CheckpointError as error:
        raise CheckpointError(f"cannot export to {to} ({destination}): {error}") from None
