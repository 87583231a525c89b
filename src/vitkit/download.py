"""Fetching files over HTTP or from a shared disk: resumable, checked, and atomic; and where they
are kept.

Dataset archives (CIFAR on a university server) and pretrained checkpoints (Google's bucket) are
large single files. A transfer that dies halfway should continue where it stopped, a corrupt file
(or a mirror's error page served as the file) must never enter the cache, a silent or dripping
server must fail within a bounded time, a server that lies about the length (or never ends) must
not fill the disk, and a cluster without internet should say which file to copy where instead of
hanging on a socket. `vitkit.data` and `vitkit.weights` both fetch through this one module, which
is why it sits beside them rather than in either.

Three variables bound a transfer; each is read when a download starts, and a value out of range is
refused in one line naming it:
- VITKIT_HTTP_TIMEOUT (seconds, default 60, at most a day): the longest a server may stay silent,
  the longest it may take to send its response headers, and the span over which the rate below is
  averaged.
- VITKIT_HTTP_MIN_RATE (bytes per second, default 4096; 0 turns it off): a server that sends less,
  averaged over VITKIT_HTTP_TIMEOUT, is given up on, though never silent for long (a drip). The
  bytes received are kept, to resume from, as after a silence.
- VITKIT_MAX_DOWNLOAD_BYTES (default 16 GiB): the most a response that declares no length may
  bring. A declared length must fit the free disk; a response without one must also leave
  DISK_MARGIN_BYTES free. A transfer refused for its size is deleted, since resuming it would fill
  the disk again.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from vitkit.errors import DownloadError
from vitkit.http_deadline import open_url
from vitkit.resources import check_disk, free_disk_bytes, gib

# Seconds a connection may stay silent before a download or a streamed shard fails (a download
# can then be resumed); VITKIT_HTTP_TIMEOUT overrides it.
DEFAULT_TIMEOUT_S = 60.0
# The longest VITKIT_HTTP_TIMEOUT accepted, a day: longer is no timeout, and 1e300 would overflow
# the socket's time_t.
MAX_TIMEOUT_S = 86400.0
# Bytes per second a transfer must average (VITKIT_HTTP_MIN_RATE): a 330 MB ViT-B/16 at this rate
# takes a day, so no real mirror is this slow, but a drip of a byte a second is refused.
DEFAULT_MIN_RATE = 4096.0
# The most a response without Content-Length may bring (VITKIT_MAX_DOWNLOAD_BYTES): the largest
# checkpoint, ViT-H/14, is about 2.5 GB.
DEFAULT_MAX_DOWNLOAD_BYTES = 16 << 30
# Disk left free by a response without Content-Length, for the logs and checkpoints of the runs
# beside it.
DISK_MARGIN_BYTES = 256 << 20
# Bytes read per network call at most: large enough to be cheap, small enough for a smooth
# progress bar.
CHUNK_BYTES = 1 << 20
# What a resumed response must say it holds: "bytes START-END/TOTAL", TOTAL "*" when unknown.
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

# Says why a fetched file is not what was asked for ("got an HTML page"), or None when it may be.
Validator = Callable[[Path], str | None]


def default_cache_dir() -> Path:
    """Where downloads and decoded data go: $VITKIT_HOME, else $VITKIT_CACHE (its older name, still
    honoured), else $XDG_CACHE_HOME/vitkit, else ~/.cache/vitkit."""
    for variable in ("VITKIT_HOME", "VITKIT_CACHE"):
        if cache := os.environ.get(variable):
            return Path(cache)
    if xdg_cache := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg_cache) / "vitkit"
    return Path.home() / ".cache" / "vitkit"


def http_timeout() -> float:
    """Seconds an HTTP connection may stay silent, or take for its headers: $VITKIT_HTTP_TIMEOUT,
    else DEFAULT_TIMEOUT_S."""
    return _setting("VITKIT_HTTP_TIMEOUT", DEFAULT_TIMEOUT_S, lowest=1e-3, highest=MAX_TIMEOUT_S)


def http_min_rate() -> float:
    """Bytes per second a transfer must average: $VITKIT_HTTP_MIN_RATE, else DEFAULT_MIN_RATE."""
    return _setting("VITKIT_HTTP_MIN_RATE", DEFAULT_MIN_RATE, lowest=0, highest=2.0**40)


def max_download_bytes() -> int:
    """The most a response without Content-Length may bring: $VITKIT_MAX_DOWNLOAD_BYTES, else
    DEFAULT_MAX_DOWNLOAD_BYTES."""
    limit = DEFAULT_MAX_DOWNLOAD_BYTES
    return int(_setting("VITKIT_MAX_DOWNLOAD_BYTES", limit, lowest=1, highest=2.0**60))


def _setting(variable: str, default: float, *, lowest: float, highest: float) -> float:
    """$`variable` as a number from `lowest` to `highest`, else `default` when unset or empty."""
    text = os.environ.get(variable, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not lowest <= value <= highest:  # NaN too
        raise DownloadError(
            f"{variable} must be a number from {lowest:g} to {highest:g}, got {text!r}"
        )
    return value


def is_offline() -> bool:
    """Whether VITKIT_OFFLINE forbids network access (any value but empty or 0)."""
    return os.environ.get("VITKIT_OFFLINE", "") not in ("", "0")


def url_problem(url: str) -> str | None:
    """Why `download` cannot fetch `url`, or None when it can: http(s)://HOST/..., or
    file:///ABSOLUTE/PATH (a mirror on a shared disk, for clusters without internet)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # parsed on access: a port that is no number in 0-65535 raises here
    except ValueError as error:  # also "Invalid IPv6 URL"
        return f"not a valid URL ({error})"
    if parts.scheme in ("http", "https"):
        return None if parts.hostname else "no host after http(s)://"
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            return f"a file:// URL names a host ({parts.netloc!r}); use file:///ABSOLUTE/PATH"
        return None if parts.path.startswith("/") else "a file:// URL needs an absolute path"
    if not parts.scheme:
        return "it has no scheme (http://, https:// or file:///)"
    return f"scheme {parts.scheme!r} is not http, https or file"


def download(
    url: str,
    destination: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    validate: Validator | None = None,
    progress: bool = True,
) -> Path:
    """Fetch `url` to `destination` and return it; a file already there that passes the checks
    (checksums, `size` and `validate`; any file there, when none is given) is returned without
    fetching.

    Bytes go to `<destination>.part` first, and enter the cache only once they pass the checks,
    so neither a killed transfer nor a server's error page ever leaves a file that looks finished.
    The next call resumes a .part that holds bytes with an HTTP Range request when the server
    allows. `size`, the file's length in bytes where known, is also the most a transfer may write.
    `validate` is a cheap format check (e.g. "is a zip archive"), run before the digests. With
    VITKIT_OFFLINE set, only file:// URLs are read.
    """
    destination = Path(destination)
    expected = {
        name: digest.lower() for name, digest in (("sha256", sha256), ("md5", md5)) if digest
    }
    if destination.is_file() and not _defect(destination, expected, size, validate):
        return destination
    if problem := url_problem(url):
        raise DownloadError(f"{url}: cannot fetch it: {problem}")
    if is_offline() and urlsplit(url).scheme != "file":  # a shared disk is no network
        state = "is missing"
        if destination.is_file():
            state = f"is unusable ({_defect(destination, expected, size, validate)})"
        raise DownloadError(
            f"{destination} {state} and VITKIT_OFFLINE is set, so it is not downloaded; fetch "
            f"{url} elsewhere and put the file at {destination}"
        )
    part = destination.with_name(destination.name + ".part")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        _transfer(url, part, size=size, progress=progress)
    except _TooLarge as error:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: {error}; nothing is kept") from None
    # URLError (refused, DNS, HTTP status) and resets, timeouts, disk errors are OSErrors.
    except (OSError, http.client.HTTPException) as error:
        reason = " ".join(str(error).split())  # urllib's redirect-loop error spans three lines
        kept = _keep_if_resumable(part)
        raise DownloadError(f"{url}: download failed: {reason}{kept}") from error
    if defect := _defect(part, expected, size, validate):
        part.unlink()
        raise DownloadError(f"{url}: {defect}; the download is deleted")
    try:
        os.replace(part, destination)
    except OSError as error:
        raise DownloadError(f"{url}: cannot move the download to {destination}: {error}") from None
    return destination


def _transfer(url: str, part: Path, *, size: int | None, progress: bool) -> None:
    """Fill `part` with the file at `url`: a copy for file://, a (resumed) stream otherwise."""
    if urlsplit(url).scheme != "file":
        _fetch(url, part, size=size, progress=progress)
        return
    source = Path(urllib.request.url2pathname(urlsplit(url).path))
    # A device (/dev/zero) or a FIFO would be read without end: only regular files are copied.
    if not source.is_file():
        state = "is not a regular file" if source.exists() else "does not exist"
        raise FileNotFoundError(f"{source} {state}")
    try:
        shutil.copyfile(source, part)
    except OSError:
        part.unlink(missing_ok=True)  # a copy always starts over: nothing to resume
        raise


def _fetch(url: str, part: Path, *, size: int | None, progress: bool) -> None:
    """Stream `url` into `part`, appending when the server resumes it; a .part the server cannot
    resume (416, or a 206 for other bytes than asked) is deleted and fetched anew in this call."""
    timeout, min_rate, maximum = http_timeout(), http_min_rate(), max_download_bytes()
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _request(url, offset, timeout)
    except _CannotResume:
        part.unlink()
        offset, response = 0, _request(url, 0, timeout)
    with response:
        if response.status != 206:  # the whole file: the server ignores Range, or no .part
            offset = 0
        remaining = response.length  # None when the server sends no Content-Length
        total = None if remaining is None else offset + remaining
        limit, beyond_limit = _ceiling(part, offset, total, size, maximum)
        with (
            part.open("ab" if offset else "wb") as file,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                file=sys.stderr,
                disable=not progress,
            ) as bar,
        ):
            received = 0
            pace = _Pace(window=timeout, min_rate=min_rate)
            # read1 returns what has arrived, so the bytes before a stall are kept to resume from.
            while chunk := response.read1(CHUNK_BYTES):
                if offset + received + len(chunk) > limit:
                    raise _TooLarge(f"more than {limit:,} bytes arrived; {beyond_limit}")
                file.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                pace.check(received)
    # http.client returns a short body without complaint when the connection drops early.
    if remaining is not None and received < remaining:
        raise ConnectionError(f"connection closed after {offset + received} of {total} bytes")


class _TooLarge(DownloadError):
    """A transfer would pass its size limit: its .part is deleted, since resuming it could only
    fill the disk again."""


def _ceiling(
    part: Path, offset: int, total: int | None, size: int | None, maximum: int
) -> tuple[int, str]:
    """The most bytes `part` may hold, and what a transfer past it breaks, for the error.

    A length known before writing (`size`, else the server's declared `total`; they must agree
    when both are given) must fit the free disk. Without one, the transfer may fill the disk up to
    DISK_MARGIN_BYTES, and bring `maximum` bytes at most. Raises _TooLarge.
    """
    if size is not None and total is not None and total != size:
        raise _TooLarge(f"the server declares {total:,} bytes where {size:,} are expected")
    if (known := size if size is not None else total) is not None:
        check_disk(part.parent, known - offset, "the download", error=_TooLarge)
        return known, f"{known:,} were expected"
    room = offset + free_disk_bytes(part.parent) - DISK_MARGIN_BYTES
    if room < maximum:
        return room, f"the disk of {part.parent} must keep {gib(DISK_MARGIN_BYTES)} free"
    return maximum, "VITKIT_MAX_DOWNLOAD_BYTES is the most a response without a length may bring"


class _Pace:
    """Refuses a transfer that averages less than `min_rate` bytes/s over a `window` of seconds:
    the socket timeout catches a server that falls silent, this one that drips."""

    def __init__(self, *, window: float, min_rate: float) -> None:
        self.window, self.min_rate = window, min_rate
        self.since, self.received = time.monotonic(), 0

    def check(self, received: int) -> None:
        """Raise a TimeoutError (so the .part is kept, to resume from) when the window that ends
        now, with `received` bytes in all, fell short of the rate."""
        elapsed = time.monotonic() - self.since
        if elapsed < self.window:
            return
        rate = (received - self.received) / elapsed
        if rate < self.min_rate:
            raise TimeoutError(
                f"the server sent {rate:,.0f} bytes/s over {elapsed:.1f} s, less than the "
                f"{self.min_rate:,.0f} bytes/s of VITKIT_HTTP_MIN_RATE"
            )
        self.since, self.received = time.monotonic(), received


class _CannotResume(Exception):
    """The server cannot continue a .part where it ends; the caller starts from byte 0."""


def _request(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """The response to a request for `url` from byte `offset` on (the whole file when 0), whose
    headers came within `timeout` seconds and no silence lasted longer.

    Raises _CannotResume for a resumed request that gets 416 Range Not Satisfiable (the .part is
    as long as the file or longer) or a Content-Range for other bytes than asked.
    """
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = open_url(url, headers=headers, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not offset:
            raise
        error.close()
        raise _CannotResume from None
    if response.status == 206 and not (offset and _resumes_at(response, offset)):
        content_range = response.headers.get("Content-Range")
        response.close()
        if offset:
            raise _CannotResume
        raise http.client.HTTPException(
            f"the server sent part of the file (Content-Range {content_range!r}) to a request for "
            "all of it"
        )
    return response


def _resumes_at(response: http.client.HTTPResponse, offset: int) -> bool:
    """Whether a 206 response holds the bytes from `offset` to the end of the file, as asked."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None or int(match[1]) != offset:
        return False
    start, end, total = int(match[1]), int(match[2]), match[3]
    to_the_end = total == "*" or end + 1 == int(total)
    return to_the_end and response.length in (None, end - start + 1)


def _keep_if_resumable(part: Path) -> str:
    """What a failure message says of the .part: kept when it holds bytes to resume from, else
    deleted (an empty .part saves nothing)."""
    size = part.stat().st_size if part.is_file() else 0
    if not size:
        part.unlink(missing_ok=True)
        return ""
    return f" ({size} bytes kept in {part}: run again to resume)"


def _defect(
    path: Path, expected: dict[str, str], size: int | None, validate: Validator | None
) -> str | None:
    """Why the file at `path` is not the one asked for: what `validate` finds, else a length other
    than `size`, else the digests that differ from `expected`; None when it passes."""
    if validate is not None and (problem := validate(path)):
        return problem
    if size is not None and (found := path.stat().st_size) != size:
        return f"expected {size:,} bytes, found {found:,}"
    mismatches = []
    for name, digest in expected.items():
        with path.open("rb") as file:
            actual = hashlib.file_digest(file, name).hexdigest()
        if actual != digest:
            mismatches.append(f"expected {name} {digest}, found {actual}")
    return f"checksum mismatch: {'; '.join(mismatches)}" if mismatches else None
