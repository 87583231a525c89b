"""Converter key maps as tables: each format names vitkit's parameters in one table of rows, and
its reader, its writer and its shape check are all read off that table, so that a name, a reshape
and a shape are each written once, and the directions cannot drift apart.

A row pairs a vitkit key pattern with a foreign one. Patterns name their variable parts in braces:
{i} an encoder block, {w} "weight" or "bias", and whatever else a format fills in (Google's block
layout, ResNet stages and units). Rows that share a vitkit key fuse: the foreign tensors, in the
rows' order, are concatenated along the first dimension (query, key and value into vitkit's one
qkv projection) and split back in that order when written.

Two kinds of format use them:
- Google's files are checked key by key and shape by shape before a byte is read, so its rows are
  filled in for a config (`fill`): each row gives the foreign tensor's shape, in letters that
  stand for the config's dimensions, and a `Transform` pair between the layouts.
- Hugging Face's and torchvision's tensors are vitkit's as they are, only renamed, and the config
  is read after the renaming, so their rows are matched against the keys a file has (`find`;
  `to_foreign` to write). Their shapes are vitkit's own, held to the config by
  `check_architecture` and the strict load (state_dict.py): their rows leave shape and transform
  out.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import torch

from vitkit.errors import CheckpointError

Shape = tuple[int, ...]

# What a {name} of a matched pattern matches: block indices as digits, as the files spell them
# (out-of-range or zero-padded indices then fail where blocks are counted, naming the key).
_FIELDS = {"i": r"\d+", "w": r"weight|bias"}


class Transform(NamedTuple):
    """How one tensor changes between the layouts: `read` turns the foreign tensor (in the row's
    shape) into vitkit's, `write` turns vitkit's (or its part of a fused tensor) back into the
    foreign tensor of the given shape."""

    read: Callable[[torch.Tensor], torch.Tensor]
    write: Callable[[torch.Tensor, Shape], torch.Tensor]


# The same values in both layouts (the write reshapes, as a foreign shape may add unit axes).
SAME = Transform(read=lambda tensor: tensor, write=lambda tensor, shape: tensor.reshape(shape))


class Row(NamedTuple):
    """One parameter under vitkit's name and the foreign one (written under `foreign`, read
    under it or any of `aliases`). `shape`, `transform` and `when` serve the formats whose rows
    are filled in for a config: `when` names a condition of the config, which the format looks
    up, under which alone the parameter exists ("" for always)."""

    vitkit: str
    foreign: str
    shape: str = ""
    transform: Transform = SAME
    when: str = ""
    aliases: tuple[str, ...] = ()


class Entry(NamedTuple):
    """A row filled in for one config: concrete keys and the foreign tensor's shape."""

    vitkit: str
    foreign: str
    shape: Shape
    transform: Transform


def fill(row: Row, names: Mapping[str, object], dims: Mapping[str, int]) -> Entry:
    """`row` with its patterns' {names} filled in and its shape's letters read from `dims`
    (a token that is no letter of `dims` is a literal size: "7 7 c r")."""
    shape = tuple(dims[token] if token in dims else int(token) for token in row.shape.split())
    return Entry(row.vitkit.format(**names), row.foreign.format(**names), shape, row.transform)


def read_entries(
    entries: Sequence[Entry], tensor: Callable[[Entry], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """vitkit's state dict from the foreign tensors of `entries` (`tensor(entry)`, in the
    entry's shape): each transformed, and those of one vitkit key concatenated in order."""
    state: dict[str, torch.Tensor] = {}
    for key, group in _by_vitkit_key(entries).items():
        parts = [entry.transform.read(tensor(entry)) for entry in group]
        state[key] = (torch.cat(parts) if len(parts) > 1 else parts[0]).contiguous()
    return state


def write_entries(
    entries: Sequence[Entry], state: Callable[[str], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The foreign tensors of `entries`, in their shapes, from vitkit's (`state(key)`): each
    split into as many parts as rows share its key, and each part transformed."""
    foreign: dict[str, torch.Tensor] = {}
    for key, group in _by_vitkit_key(entries).items():
        for entry, part in zip(group, _split(state(key), len(group))):
            foreign[entry.foreign] = entry.transform.write(part, entry.shape).contiguous()
    return foreign


def _split(tensor: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
    """A fused tensor's parts, equal slices along its first dimension (itself when unfused)."""
    return tensor.chunk(parts) if parts > 1 else (tensor,)


def _by_vitkit_key(entries: Iterable[Entry]) -> dict[str, list[Entry]]:
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.vitkit, []).append(entry)
    return groups


class Found(NamedTuple):
    """A foreign key matched to a row: the vitkit key, the values of the pattern's {names}, and
    which of the `parts` rows sharing that vitkit key it is (0 of 1 when none fuse)."""

    vitkit: str
    fields: dict[str, str]
    part: int
    parts: int


def find(table: Sequence[Row], key: str) -> Found | None:
    """The row of `table` whose foreign pattern (or an alias) matches `key`, None when none."""
    for row in table:
        for pattern in (row.foreign, *row.aliases):
            if match := _regex(pattern).fullmatch(key):
                fields = match.groupdict()
                fused = [other for other in table if other.vitkit == row.vitkit]
                return Found(row.vitkit.format(**fields), fields, fused.index(row), len(fused))
    return None


def to_foreign(
    table: Sequence[Row], key: str, tensor: torch.Tensor
) -> dict[str, torch.Tensor] | None:
    """vitkit's `key` and its tensor under the foreign key(s) of `table` (a fused tensor split in
    the rows' order); None when no row names the key."""
    for row in table:
        if match := _regex(row.vitkit).fullmatch(key):
            keys = [other.foreign.format(**match.groupdict()) for other in table
                    if other.vitkit == row.vitkit]  # fmt: skip
            return dict(zip(keys, _split(tensor, len(keys))))
    return None


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    """`pattern` as a regular expression: its text literal, each {name} a group of `_FIELDS`."""
    pieces = re.split(r"\{(\w+)\}", pattern)  # text, name, text, name, ..., text
    return re.compile(
        "".join(
            f"(?P<{piece}>{_FIELDS[piece]})" if index % 2 else re.escape(piece)
            for index, piece in enumerate(pieces)
        )
    )


def read_renamed(
    table: Sequence[Row], foreign: Mapping[str, torch.Tensor], *, source: str
) -> dict[str, torch.Tensor]:
    """vitkit's state dict from the tensors of a format whose tensors are vitkit's as they are,
    only renamed (`find`): the parts of rows that share a vitkit key concatenated in the rows'
    order. A key no row matches is a CheckpointError naming it and `source` (the format)."""
    state: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}
    counts: dict[str, int] = {}
    for key, value in foreign.items():
        found = find(table, key)
        if found is None:
            raise CheckpointError(f"unexpected key {key!r} in a {source} checkpoint")
        if found.parts == 1:
            state[found.vitkit] = value
        else:
            fused.setdefault(found.vitkit, {})[found.part] = (key, value)
            counts[found.vitkit] = found.parts
    for vitkit_key, parts in fused.items():
        state[vitkit_key] = _fused(vitkit_key, parts, counts[vitkit_key])
    return state


def _fused(vitkit_key: str, parts: dict[int, tuple[str, torch.Tensor]], count: int) -> torch.Tensor:
    """One vitkit tensor from the file's tensors that fuse into it (query, key and value), which
    must all be there, of one shape and dtype: torch.cat needs non-scalar parts of one shape,
    and would promote mixed dtypes. Errors name the file's keys."""
    if set(parts) != set(range(count)):
        found = ", ".join(key for key, _ in parts.values())
        raise CheckpointError(f"{found}: {len(parts)} of the {count} tensors fused into "
                              f"{vitkit_key}; the others are missing")  # fmt: skip
    ordered = [parts[index] for index in range(count)]
    alike = {(tuple(tensor.shape), tensor.dtype) for _, tensor in ordered}
    if len(alike) != 1 or not ordered[0][1].ndim:
        shapes = ", ".join(f"{key} {tuple(tensor.shape)} {tensor.dtype}" for key, tensor in ordered)
        raise CheckpointError(f"tensors fused into {vitkit_key} differ or are scalars: {shapes}")
    return torch.cat([tensor for _, tensor in ordered])
