"""File helpers shared by every layer: atomic writes, and the SHA-256 of a file.

Atomic writes: a reader sees a file's old contents or its complete new ones, never a mix.

A run killed mid-write (preemption, out of memory, Ctrl-C) must not leave a half-written
checkpoint, summary or weight file in place of a good one. Each write goes to a temporary file in
the same directory (so the rename stays on one file system), is flushed to disk, and only then
renamed over the target; the directory is synced so that the rename itself survives a power loss.
`vitkit.data`, `vitkit.training` and `vitkit.weights` write through these, which is why they live
here; `atomic_open` is the one implementation, the others are shorthands over it. A write never
follows a link: a target that is a symbolic link, a folder or a device is refused, not replaced or
written through. A temporary file carries its writer's pid, so the next write to the same target
removes what a killed writer left.

Reads of a path a user gave go through `regular_file` or `read_capped`: a FIFO would block the read
forever and `/dev/zero` would fill memory, so anything but a regular file is refused first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from vitkit.errors import VitkitError

_TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """A binary file whose contents replace `path`'s when the `with` block ends, all or nothing.

    If the block raises (or the process dies), `path` keeps its old contents; the temporary file is
    removed on an exception, and left behind only when the process is killed (see `temp_files`).
    Its name is hidden (a leading dot), so globs for the targets (`shard-*.tar`) never match it.
    """
    path = Path(path)
    check_writable_target(path)
    remove_stale_temp_files(path.parent, path.name)
    temp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}{_TEMP_SUFFIX}")
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


@contextmanager
def staged_writes(destination: Path, *, folder: bool) -> Iterator[Path]:
    """A hidden, empty folder beside `destination` for a result of several files, which take
    their places together when the block ends, or not at all.

    With `folder`, the staged folder becomes `destination`: a new one is renamed into place, an
    existing one is exchanged for it in one atomic step (`renameat2`), with the entries the block
    did not write carried over as hard links, so a killed in-place conversion leaves the old
    folder whole. Without it, each staged file replaces its namesake beside `destination` (the
    weights and their labels file, an ONNX graph and its weights), all checked first, then renamed
    back to back with `destination` last. Whatever the
    block raises, or a kill leaves (removed by the next write to the same destination), never
    reaches `destination`.
    """
    destination = Path(destination)
    parent = destination.parent
    parent.mkdir(parents=True, exist_ok=True)
    check_writable_target(destination, folder=folder)
    remove_stale_temp_files(parent, destination.name)
    stage = parent / f".{destination.name}.{os.getpid()}-{uuid.uuid4().hex}{_TEMP_SUFFIX}"
    stage.mkdir()
    try:
        yield stage
        if folder:
            _swap_in_folder(stage, destination)
        else:
            # `destination` itself last: files it names (an ONNX graph's weights) land first.
            staged = sorted(stage.iterdir(), key=lambda file: (file.name == destination.name, file))
            for file in staged:
                check_writable_target(parent / file.name)
                with open(file, "rb") as handle:  # on disk before it is renamed into place
                    os.fsync(handle.fileno())
            for file in staged:
                os.replace(file, parent / file.name)
        _fsync_directory(parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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


def remove_stale_temp_files(directory: Path, name_glob: str) -> None:
    """Delete the temporary files (and staged folders) in `directory` for targets matching
    `name_glob` whose writer is no longer alive (killed mid-write); live writers' are left alone."""
    for temp in temp_files(directory, name_glob):
        pid = temp.name[: -len(_TEMP_SUFFIX)].rsplit(".", 1)[-1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if temp.is_dir() and not temp.is_symlink():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)


def check_writable_target(path: Path, *, folder: bool = False) -> None:
    """Refuse to write `path` when it exists as anything but what the write makes (a regular
    file, or with `folder` a folder): a symbolic link, even a dangling one, a device or a FIFO.
    A write replaces what is there; it never goes through a link to wherever it points."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    is_wanted, noun = (stat.S_ISDIR, "a folder") if folder else (stat.S_ISREG, "a file")
    if not is_wanted(mode):
        raise VitkitError(f"{path} is {_kind(mode)}, not {noun}; refusing to write over it")


def regular_file(path: str | Path, *, error: type[VitkitError] = VitkitError) -> Path:
    """`path`, after checking it names a regular file (a link to one is fine): a missing path,
    folder, FIFO or device is refused in one line of type `error`."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as failure:
        raise error(f"{path}: cannot read it ({failure.strerror or failure})") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path} is {_kind(mode)}, not a regular file")
    return path


def read_capped(
    path: str | Path, limit: int, *, what: str = "file", error: type[VitkitError] = VitkitError
) -> bytes:
    """The bytes of the regular file `path`, refused in one line when it holds more than `limit`
    (read up to one byte past the limit, never the whole of an endless or huge file)."""
    path = regular_file(path, error=error)
    with open(path, "rb") as file:
        # The size it has now bounds the buffer; one byte more shows a file that grew past it.
        data = file.read(min(os.fstat(file.fileno()).st_size, limit) + 1)
    if len(data) > limit:
        size = max(len(data), os.stat(path).st_size)
        raise error(f"{path}: {size} bytes, larger than a {what} may be ({limit})")
    return data


def write_failure(error: OSError) -> str:
    """A failed write in words, with the file it was on: 'No space left on device (path)'."""
    where = f" ({error.filename})" if error.filename else ""
    return f"{error.strerror or error}{where}"


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of the file at `path`, as 64 lowercase hex digits (what `sha256sum` prints);
    read in blocks, so a file larger than memory is fine."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _swap_in_folder(stage: Path, destination: Path) -> None:
    """Put the complete folder `stage` at `destination` in one step; `stage` then holds the old
    folder (or nothing), for the caller to remove."""
    if not destination.exists():
        os.rename(stage, destination)
        return
    for entry in destination.iterdir():  # what this write does not replace is kept
        target = stage / entry.name
        if target.exists() or target.is_symlink():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, target)
    _exchange(stage, destination)


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    """A hard link (no bytes copied), or a copy where the file system has none."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


_RENAME_EXCHANGE = 2  # renameat2 flag (linux/fs.h): swap two paths atomically
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> None:
    """Swap two paths atomically with Linux's renameat2; where that call is missing (another OS,
    an old kernel or file system), two renames do it with a moment in which `second` is absent."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        if (
            renameat2(
                _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
            )
            == 0
        ):
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(code, os.strerror(code), str(second))
    aside = first.with_name(f"{first.name[: -len(_TEMP_SUFFIX)]}-old{_TEMP_SUFFIX}")
    os.rename(second, aside)
    os.rename(first, second)
    os.rename(aside, first)


def _kind(mode: int) -> str:
    """What a file of `mode` is, in words."""
    kinds = [
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable. Windows cannot open directories; it skips this."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
