"""Class names: the labels of a head's outputs, carried with the weights that give them meaning.

They are a property of trained weights, not of the architecture (`ViTConfig` has no field for
them): the same config serves CIFAR-10 and any other 10-class set, and a new head
(`reset_classifier`) has no names until it is trained. Each writer that can hold them writes them
(vitkit's config.json, transformers' id2label, ONNX metadata), each reader checks them here, so a
stranger's file can only give a list of exactly one string per output, or an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vitkit.errors import CheckpointError
from vitkit.io import read_capped

ClassNames = tuple[str, ...]
# Formats whose files hold parameters only (Google's .npz, timm and torchvision state dicts) keep
# their names in a labels file beside them, e.g. model.npz -> model.labels.txt: one name per line,
# the format `vitkit classify --labels` reads, and invisible to Google's and timm's own loaders.
LABELS_SUFFIX = ".labels.txt"
# ImageNet-21k's 21,843 names take about 400 KB.
MAX_LABELS_BYTES = 16 << 20


def checked_class_names(names: object, num_classes: int, *, source: str) -> ClassNames | None:
    """`names` as a tuple of `num_classes` strings; None for None (no names recorded).

    source: the file and field (or object) the names come from, for the one-line error.
    """
    if names is None:
        return None
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise CheckpointError(
            f"{source}: must be a list of {num_classes} class names, not a {type(names).__name__}"
        )
    if len(names) != num_classes:
        raise CheckpointError(
            f"{source}: {len(names)} class names, but the head has {num_classes} outputs"
        )
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise CheckpointError(
                f"{source}: class name {index} is a {type(name).__name__}, not a string"
            )
    return tuple(names) if names else None


def model_class_names(model: object) -> ClassNames | None:
    """The names a model carries (`VisionTransformer.class_names`), checked against its head, so
    that no writer records names that would label the wrong outputs."""
    names = getattr(model, "class_names", None)
    num_classes = model.config.num_classes  # type: ignore[attr-defined]
    return checked_class_names(names, num_classes, source="model.class_names")


def labels_file(weights: Path) -> Path:
    """Where the class names of a parameters-only weights file are kept."""
    return Path(weights).with_suffix(LABELS_SUFFIX)


def read_labels(path: Path, num_classes: int) -> ClassNames:
    """Class names, one per line: lines end at "\n" only (a "\r" before it is dropped with the
    other surrounding spaces), so a name may hold any other character, U+2028 and the ASCII
    separators included, and reads back as it was written. Trailing blank lines are ignored.
    The count must be the head's, or every name would label the wrong output."""
    data = read_capped(path, MAX_LABELS_BYTES, what="labels file", error=CheckpointError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(
            f"{path}: the labels file is not UTF-8 ({error.reason} at byte {error.start})"
        ) from None
    labels = [line.strip() for line in text.split("\n")]
    while labels and not labels[-1]:
        labels.pop()
    if len(labels) != num_classes:
        raise CheckpointError(
            f"{path}: {len(labels)} labels, but the model has {num_classes} classes "
            "(expected one name per line)"
        )
    return tuple(labels)


def labels_text(names: ClassNames) -> str:
    """The labels file holding `names`: each followed by "\n". A name that such a line cannot
    give back as it was (empty, a line break, surrounding spaces that reading strips) is refused
    rather than changed."""
    for index, name in enumerate(names):
        if not name or name != name.strip() or "\n" in name or "\r" in name:
            raise CheckpointError(
                f"class name {index} ({name!r}) is empty or has a line break or surrounding "
                "spaces, which a labels file cannot hold; export to vitkit or hf to keep the names"
            )
    return "".join(f"{name}\n" for name in names)
