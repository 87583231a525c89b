"""File helpers shared by every layer: atomic writes, and the SHA-256 of a file.

Atomic writes: a reader sees a file's old contents or its complete new ones, never a mix.

A run killed mid-write (preemption, out of memory, Ctrl-C) must not leave a half-written
checkpoint, summary or weight file in place of a good one. Each write goes to a temporary file in
the same directory (so the rename stays on one file system), is flushed to disk, and only then
renamed over the target; the directory is synced so that the rename itself survives a power loss.
`vitkit.data`, `vitkit.training` and `vitkit.weights` write through these, which is why they live
here; `atomic_open` is the one implementation, the others are shorthands over it.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

_TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """A binary file whose contents replace `path`'s when the `with` block ends, all or nothing.

    If the block raises (or the process dies), `path` keeps its old contents; the temporary file is
    removed on an exception, and left behind only when the process is killed (see `temp_files`).
    Its name is hidden (a leading dot), so globs for the targets (`shard-*.tar`) never match it.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{_TEMP_SUFFIX}")
    # O_EXCL: never write into someone else's file; mode 0o666 lets the umask decide, as for open().
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace `path` by what `write` writes into the binary file it is given, all or nothing
    (see `atomic_open`)."""
    with atomic_open(path) as file:
        write(file)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` by `text` (UTF-8), all or nothing."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Replace `path` by `obj` as indented JSON, all or nothing."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def temp_files(directory: Path, name_glob: str) -> list[Path]:
    """Temporary files that killed atomic writes left in `directory` for targets matching
    `name_glob`, so that a caller that owns those targets can delete them."""
    return sorted(Path(directory).glob(f".{name_glob}.*{_TEMP_SUFFIX}"))


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of the file at `path`, as 64 lowercase hex digits (what `sha256sum` prints);
    read in blocks, so a file larger than memory is fine."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable. Windows cannot open directories; it skips this."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
