"""`export_model`: write a vitkit model in any format `load_model` reads, all or nothing.

Each format's writer lives beside its reader (`write_timm` in timm.py, `write_hf` in hf.py,
`write_npz` in google.py, `save_pretrained` in native.py); this module only picks one. timm has a
second form, its own folder layout (`write_timm_folder` in timm_folder.py, which
`timm.create_model("local-dir:...")` loads), written when the destination is a folder. Every writer
first checks that the target can express the model, raising `CheckpointError` and writing nothing
when it cannot, and then replaces each file atomically.

A refusal carries the one reason its format gives and, computed here from every format's own
check (`REFUSALS`), the formats that do hold the model, so that the advice can never point at a
format that refuses too. vitkit's own format holds every model, so that list is never empty.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from vitkit.errors import CheckpointError, VitkitError
from vitkit.io import atomic_write_text, staged_writes, write_failure
from vitkit.models.config import ViTConfig
from vitkit.models.vit import VisionTransformer
from vitkit.weights.class_names import labels_file, labels_text, model_class_names
from vitkit.weights.google import google_refusal, write_npz
from vitkit.weights.hf import hf_refusal, write_hf
from vitkit.weights.load import PARAMETERS_ONLY
from vitkit.weights.native import save_pretrained
from vitkit.weights.timm import timm_model_kwargs, timm_model_name, write_timm
from vitkit.weights.timm_folder import write_timm_folder

ExportFormat = Literal["vitkit", "timm", "hf", "npz"]
WRITERS = {"vitkit": save_pretrained, "timm": write_timm, "hf": write_hf, "npz": write_npz}
# The folder forms of the formats written to a file otherwise, for a destination that is a folder.
FOLDER_WRITERS = {"timm": write_timm_folder}
# Where advice lists the formats that hold a model: a stranger's formats before vitkit's own.
_ADVICE_ORDER: tuple[ExportFormat, ...] = ("timm", "hf", "npz", "vitkit")
# The phrase before the formats in a refusal (tests parse the formats after it).
HOLDING_FORMATS = "formats that hold this model:"


def _timm_refusal(config: ViTConfig) -> str | None:
    """timm's check is the choice of its registered name and `create_model` arguments."""
    try:
        timm_model_name(config)
        timm_model_kwargs(config)
    except CheckpointError as error:
        return str(error)
    return None


REFUSALS: dict[str, Callable[[ViTConfig], str | None]] = {
    "vitkit": lambda config: None,  # save_pretrained writes every field of the config
    "timm": _timm_refusal,
    "hf": hf_refusal,
    "npz": google_refusal,
}


def holding_formats(config: ViTConfig) -> list[str]:
    """The export formats that can express a model of `config` (always including "vitkit")."""
    return [name for name in _ADVICE_ORDER if REFUSALS[name](config) is None]


def writes_folder(destination: str | Path, to: ExportFormat) -> bool:
    """Whether `export_model` writes a folder: always for "vitkit" and "hf", for "timm" when the
    destination is one (an existing directory, or a name without a suffix), never for "npz"."""
    if to in FOLDER_WRITERS:
        destination = Path(destination)
        return destination.is_dir() or not destination.suffix
    return to not in PARAMETERS_ONLY


def export_model(model: VisionTransformer, destination: str | Path, *, to: ExportFormat) -> Path:
    """Write `model` to `destination` in format `to`: a directory for "vitkit" and "hf", an .npz
    file for "npz"; for "timm" a state dict file (.safetensors, .pth, ...) or, where
    `destination` is a folder (`writes_folder`), timm's local-dir layout.

    A format that cannot express the model raises CheckpointError with its one reason and the
    formats that can (`holding_formats`), and writes nothing. The class names, where the model
    has them, go into the format's own field (vitkit, hf, timm's folder) or, for the files of
    the parameters-only formats (timm, npz), into a labels file beside the weights
    (`class_names.labels_file`)."""
    if to not in WRITERS:
        raise CheckpointError(f"unknown export format {to!r}; expected {', '.join(WRITERS)}")
    destination = Path(destination)
    where = f"cannot export to {to} ({destination})"
    if problem := REFUSALS[to](model.config):
        advice = ", ".join(holding_formats(model.config))
        raise CheckpointError(f"{where}: {problem}; {HOLDING_FORMATS} {advice}")
    folder = writes_folder(destination, to)
    labels = None  # checked before anything is written
    if not folder and (names := model_class_names(model)):
        labels = labels_text(names)
    writer = FOLDER_WRITERS[to] if folder and to in FOLDER_WRITERS else WRITERS[to]
    try:
        # One staged write: the weights, their labels file and a folder's files all land, or none.
        with staged_writes(destination, folder=folder) as stage:
            target = stage if folder else stage / destination.name
            written = writer(model, target)
            if labels is not None:
                atomic_write_text(labels_file(written), labels)
    except VitkitError as error:
        raise CheckpointError(f"{where}: {error}") from None
    except OSError as error:
        raise CheckpointError(f"{where}: {write_failure(error)}; nothing was written") from None
    return destination
