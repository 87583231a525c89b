"""Tar archives from strangers, read as streams with every size they claim kept in bounds.

A tar header says how many bytes follow it, and tarfile believes it: a PAX or GNU long-name header
that claims gigabytes is read into memory whole (in a .tar.gz, gigabytes of zeros cost a few
megabytes), and a member that claims more bytes than the stream holds makes a stream reader skip
towards its end one empty read at a time, for ever. Image-folder archives, WebDataset shards and
the CIFAR release are all read through `open_tar` and `read_member` here, so one set of checks
covers them: headers are bounded, a stream that ends inside a member is an error, members are
read into memory only below a limit, names that climb out of the archive are refused, and the
members already seen are not kept (tarfile lists each one, gigabytes for millions of images).
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import BinaryIO

from vitkit.data.images import PIXEL_LIMIT_VARIABLE, max_image_file_bytes
from vitkit.errors import DataError

# Bytes of a PAX or GNU long-name header: they hold a path and a few attributes, kilobytes at most.
MAX_HEADER_BYTES = 1 << 20
_HEADER_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                 tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)  # fmt: skip
# Empty reads a stream may answer before reading on is taken for skipping a member that claims
# more bytes than the archive holds; a well-formed archive ends after one.
_EMPTY_READS = 4
# What tarfile and its decompressor raise on a broken archive: tarfile.ReadError, EOFError on
# truncation, zlib.error from a damaged deflate stream, ValueError from some malformed headers (a
# GNU sparse map that is not numbers); network and disk errors are OSErrors. DataError is a
# ValueError too: callers let their own pass before catching these.
ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)


class _OversizedHeader(tarfile.TarError):
    """A header that claims more bytes than any header needs."""


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized PAX and GNU long-name headers before tarfile reads them."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _HEADER_TYPES and info.size > MAX_HEADER_BYTES:
            raise _OversizedHeader(
                f"an extended header claims {info.size:,} bytes (at most {MAX_HEADER_BYTES:,})"
            )
        return info


class _EndGuard:
    """A binary stream that raises once read on well past its end, which is what tarfile does
    when it skips a member whose claimed size runs beyond the archive."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._empty_reads = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if not data and size:
            self._empty_reads += 1
            if self._empty_reads > _EMPTY_READS:
                raise tarfile.ReadError("the archive ends inside a member")
        return data


def open_tar(stream: BinaryIO, *, gzipped: bool) -> tarfile.TarFile:
    """`stream` read as a (gzipped) tar, forward only, with oversized headers refused.

    The compression is given, not sniffed: tarfile's detection would also accept xz, whose
    decoder allocates whatever dictionary the file asks for.
    """
    mode = "r|gz" if gzipped else "r|"
    return tarfile.open(fileobj=_EndGuard(stream), mode=mode, tarinfo=_BoundedTarInfo)


def is_gzipped(name: str) -> bool:
    """Whether an archive's name says gzip (.tar.gz, .tgz)."""
    return name.lower().endswith((".gz", ".tgz"))


def members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members of a stream-opened archive, in order, without tarfile keeping each one."""
    for member in tar:
        yield member
        tar.members = []


def member_parts(name: str, archive: object) -> tuple[str, ...]:
    """The path components of a member name ("./a//b" gives ("a", "b")); names that are absolute
    or hold a `..` component could land outside the archive's tree and are refused."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"{archive}: member {name!r} points outside the archive (absolute or ..)")
    return path.parts


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, *, where: str) -> bytes:
    """The bytes of a regular member (an image or a label), refused before reading when it claims
    more than an image within the pixel limit can take (`max_image_file_bytes`)."""
    limit = max_image_file_bytes()
    if member.size > limit:
        raise DataError(
            f"{where}: {member.size:,} bytes, more than the {limit:,} an image file may take; "
            f"set {PIXEL_LIMIT_VARIABLE} to raise the limit"
        )
    file = tar.extractfile(member)
    if file is None:
        raise DataError(f"{where}: not a regular file")
    return file.read()
