"""Reading a NumPy .npz archive of weights from a stranger, within bounds.

numpy's own reader allocates whatever a member's .npy header claims and unpickles object arrays,
so a few bytes can ask for gigabytes or run code. Here nothing is inflated before the archive's
declared sizes are held to its own (`check_inflation`) and each member's header is read alone:
its dtype must be floating point (so no pickles) and the data its shape describes exactly what
the archive declares. The caller's layout check then sees every key and shape, and only after it
passes is each member read, into an array of exactly its checked size. Any failure is a
CheckpointError naming the file and the key. The format of the arrays (which keys, which shapes)
is the caller's: google.py reads Google's ViT checkpoints through this.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

from vitkit.errors import CheckpointError
from vitkit.weights.files import check_inflation, one_line
from vitkit.weights.state_dict import check_float_dtypes

T = TypeVar("T")

# Bytes read at a time from an archive member into its array (a chunk is copied once).
_CHUNK_BYTES = 1 << 20


class NpyHeader(NamedTuple):
    """An .npy member's header, read without its data: all that the layout checks need."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int  # bytes of the member before the data

    @property
    def ndim(self) -> int:
        return len(self.shape)


def read_npz(
    path: str | Path,
    *,
    check: Callable[[Mapping[str, NpyHeader]], object],
    prefixes: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Every array of the .npz file `path`, by key. `check` sees every member's header before a
    byte of data is inflated and raises a CheckpointError when the keys or shapes are not the
    format's. `prefixes` are the scopes some writers put every key under: the first one found is
    taken off, and members outside it are left out."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not an .npz archive (not a zip file); it may be truncated or another format"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            check_inflation(archive, path)
            members = _without_prefix(archive.infolist(), prefixes)
            headers = {
                key: _member(path, key, partial(_read_header, archive, info, path, key))
                for key, info in members.items()
            }
            check(headers)
            return {
                key: _member(path, key, partial(_read_data, archive, info, headers[key]))
                for key, info in members.items()
            }
    except (CheckpointError, MemoryError):  # a MemoryError is never mistaken for a bad file
        raise
    except Exception as error:  # zipfile.BadZipFile, OSError, ...
        raise CheckpointError(f"{path}: cannot read the .npz archive: {one_line(error)}") from None


def _without_prefix(
    infos: list[zipfile.ZipInfo], prefixes: tuple[str, ...]
) -> dict[str, zipfile.ZipInfo]:
    """The members by key (np.savez adds ".npy" to each), without the first of `prefixes` that
    any key has (members outside it are left out)."""
    members = {info.filename.removesuffix(".npy"): info for info in infos}
    for prefix in prefixes:
        if any(key.startswith(prefix) for key in members):
            return {key.removeprefix(prefix): info for key, info in members.items()
                    if key.startswith(prefix)}  # fmt: skip
    return members


def _member(path: Path, key: str, read: Callable[[], T]) -> T:
    """What `read` returns for member `key`, any failure a CheckpointError naming it."""
    try:
        return read()
    except (CheckpointError, MemoryError):
        raise
    except Exception as error:  # zlib, EOF, CRC, encryption, a malformed .npy header, ...
        raise CheckpointError(f"{path}: cannot read array {key!r}: {one_line(error)}") from None


def _read_header(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, key: str
) -> NpyHeader:
    """A member's .npy header (inflating only its first bytes), held to the member's declared
    size: the data the header describes must be exactly what the archive declares."""
    with archive.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise CheckpointError(f"{path}: {key}: unsupported .npy format version {version}")
        data_offset = stream.tell()
    check_float_dtypes({key: dtype}, source=str(path))
    if any(size < 0 for size in shape):
        raise CheckpointError(f"{path}: {key}: negative size in shape {shape}")
    data_bytes = math.prod(shape) * dtype.itemsize
    if data_offset + data_bytes != info.file_size:
        raise CheckpointError(
            f"{path}: {key}: its header declares shape {shape} of {dtype} ({data_bytes} bytes), "
            f"but the archive declares {info.file_size - data_offset} bytes of data"
        )
    return NpyHeader(tuple(shape), dtype, fortran_order, data_offset)


def _read_data(archive: zipfile.ZipFile, info: zipfile.ZipInfo, header: NpyHeader) -> np.ndarray:
    """A member's array, read into memory of exactly its checked size, a chunk at a time."""
    array = np.empty(math.prod(header.shape), dtype=header.dtype)
    buffer = array.view(np.uint8)
    with archive.open(info) as stream:
        stream.read(header.data_offset)
        filled = 0
        while filled < buffer.size:
            chunk = stream.read(min(_CHUNK_BYTES, buffer.size - filled))
            if not chunk:
                raise EOFError(f"the data ends after {filled} of {buffer.size} bytes")
            buffer[filled : filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            filled += len(chunk)
    if header.fortran_order:
        return array.reshape(header.shape[::-1]).T
    return array.reshape(header.shape)
