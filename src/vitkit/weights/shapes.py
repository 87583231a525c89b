"""Reading an architecture off tensor shapes, for the converters that infer one (Google, timm,
torchvision) or check one (Hugging Face, vitkit): a tensor of the wrong rank, an empty position
embedding or a key with a thousand-digit index is a `CheckpointError` naming the key, never an
IndexError, a complex square root or a ValueError from `int()`. What no shape records (the
number of heads) is taken from the paper's variants here too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Protocol

from vitkit.errors import CheckpointError
from vitkit.models.config import VARIANTS

# A block, stage or unit index in a key: plain decimal, at most 9 digits ("blocks.01." is not
# block 1, and Python's int() refuses numbers of over 4,300 digits with a ValueError).
INDEX = r"(0|[1-9][0-9]{0,8})"
_BLOCK = re.compile(rf"blocks\.{INDEX}\.")


class Shaped(Protocol):
    """A numpy array, a torch tensor, or an .npy header read without its data."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def ndim(self) -> int: ...


def require_shape(tensors: Mapping[str, Shaped], key: str, ndim: int) -> tuple[int, ...]:
    """The shape of `tensors[key]`, which must exist and have `ndim` dimensions, none empty (a
    size read off it may divide)."""
    if key not in tensors:
        raise CheckpointError(f"missing key {key!r}")
    shape = tuple(int(size) for size in tensors[key].shape)
    if len(shape) != ndim or 0 in shape:
        raise CheckpointError(f"{key}: expected a non-empty {ndim}-d tensor, found shape {shape}")
    return shape


def square_side(num_patches: int) -> int | None:
    """The side of a square patch grid of `num_patches` positions, or None when there is none
    (no positions, or not a square)."""
    if num_patches < 1:
        return None
    side = math.isqrt(num_patches)
    return side if side * side == num_patches else None


def block_indices(keys: Iterable[str]) -> set[int]:
    """The indices N of vitkit's "blocks.N." keys."""
    return {int(match.group(1)) for key in keys if (match := _BLOCK.match(key))}


def infer_num_heads(width: int, num_heads: int | None, *, source: str) -> int:
    """`num_heads` when given, else the heads of the paper's variant of width `width`: a state
    dict (timm's, torchvision's) holds q, k and v fused in one (3 * width, width) weight, whose
    shape is the same for any number of heads. `source` names the format in the error."""
    if num_heads is not None:
        return num_heads
    widths = {variant.width: variant.num_heads for variant in VARIANTS.values()}
    if width not in widths:
        raise CheckpointError(
            f"{source} state dicts do not record the number of heads and width {width} is not a "
            "paper variant's: pass num_heads=N (the commands: --num-heads N)"
        )
    return widths[width]
