"""Class names: the labels of a head's outputs, carried with the weights that give them meaning.

They are a property of trained weights, not of the architecture (`ViTConfig` has no field for
them): the same config serves CIFAR-10 and any other 10-class set, and a new head
(`reset_classifier`) has no names until it is trained. Each writer that can hold them writes them
(vitkit's config.json, transformers' id2label, ONNX metadata), each reader checks them here, so a
stranger's file can only give a list of exactly one string per output, or an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

from vitkit.errors import CheckpointError

ClassNames = tuple[str, ...]


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
