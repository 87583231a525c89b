"""Fetching files over HTTP or from a shared disk: resumable, checked, and atomic; and where they
are kept.

Dataset archives (CIFAR on a university server) and pretrained checkpoints (Google's bucket) are
large single files. A transfer that dies halfway should continue where it stopped, a corrupt file
(or a mirror's error page served as the file) must never enter the cache, a silent server must
fail within a bounded time, and a cluster without internet should say which file to copy where
instead of hanging on a socket. `vitkit.data` and `vitkit.weights` both fetch through this one
module, which is why it sits beside them rather than in either.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from vitkit.errors import DownloadError

# Seconds a connection may stay silent before a download or a streamed shard fails (a download
# can then be resumed); VITKIT_HTTP_TIMEOUT overrides it.
DEFAULT_TIMEOUT_S = 60.0
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
    """Seconds an HTTP connection may stay silent: $VITKIT_HTTP_TIMEOUT, else DEFAULT_TIMEOUT_S."""
    text = os.environ.get("VITKIT_HTTP_TIMEOUT", "")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise DownloadError(
            f"VITKIT_HTTP_TIMEOUT must be a positive number of seconds, got {text!r}"
        )
    return seconds


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
    validate: Validator | None = None,
    progress: bool = True,
) -> Path:
    """Fetch `url` to `destination` and return it; a file already there that passes the checksums
    and `validate` (or any file there, when neither is given) is returned without fetching.

    Bytes go to `<destination>.part` first, and enter the cache only once they pass the checks,
    so neither a killed transfer nor a server's error page ever leaves a file that looks finished.
    The next call resumes a .part that holds bytes with an HTTP Range request when the server
    allows. `validate` is a cheap format check (e.g. "is a zip archive"), run before the digests.
    With VITKIT_OFFLINE set, only file:// URLs are read.
    """
    destination = Path(destination)
    expected = {
        name: digest.lower() for name, digest in (("sha256", sha256), ("md5", md5)) if digest
    }
    if destination.is_file() and not _defect(destination, expected, validate):
        return destination
    if problem := url_problem(url):
        raise DownloadError(f"{url}: cannot fetch it: {problem}")
    if is_offline() and urlsplit(url).scheme != "file":  # a shared disk is no network
        state = "is missing"
        if destination.is_file():
            state = f"is unusable ({_defect(destination, expected, validate)})"
        raise DownloadError(
            f"{destination} {state} and VITKIT_OFFLINE is set, so it is not downloaded; fetch "
            f"{url} elsewhere and put the file at {destination}"
        )
    part = destination.with_name(destination.name + ".part")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        _transfer(url, part, progress=progress)
    # URLError (refused, DNS, HTTP status) and resets, timeouts, disk errors are OSErrors.
    except (OSError, http.client.HTTPException) as error:
        raise DownloadError(f"{url}: download failed: {error}{_keep_if_resumable(part)}") from error
    if defect := _defect(part, expected, validate):
        part.unlink()
        raise DownloadError(f"{url}: {defect}; the download is deleted")
    try:
        os.replace(part, destination)
    except OSError as error:
        raise DownloadError(f"{url}: cannot move the download to {destination}: {error}") from None
    return destination


def _transfer(url: str, part: Path, *, progress: bool) -> None:
    """Fill `part` with the file at `url`: a copy for file://, a (resumed) stream otherwise."""
    if urlsplit(url).scheme != "file":
        _fetch(url, part, progress=progress)
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


def _fetch(url: str, part: Path, *, progress: bool) -> None:
    """Stream `url` into `part`, appending when the server resumes it; a .part the server cannot
    resume (416, or a 206 for other bytes than asked) is deleted and fetched anew in this call."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _request(url, offset)
    except _CannotResume:
        part.unlink()
        offset, response = 0, _request(url, 0)
    with response:
        if response.status != 206:  # the whole file: the server ignores Range, or no .part
            offset = 0
        remaining = response.length  # None when the server sends no Content-Length
        total = None if remaining is None else offset + remaining
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
            # read1 returns what has arrived, so the bytes before a stall are kept to resume from.
            while chunk := response.read1(CHUNK_BYTES):
                file.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # http.client returns a short body without complaint when the connection drops early.
    if remaining is not None and received < remaining:
        raise ConnectionError(f"connection closed after {offset + received} of {total} bytes")


class _CannotResume(Exception):
    """The server cannot continue a .part where it ends; the caller starts from byte 0."""


def _request(url: str, offset: int) -> http.client.HTTPResponse:
    """The response to a request for `url` from byte `offset` on (the whole file when 0).

    Raises _CannotResume for a resumed request that gets 416 Range Not Satisfiable (the .part is
    as long as the file or longer) or a Content-Range for other bytes than asked.
    """
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=http_timeout()
        )
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


def _defect(path: Path, expected: dict[str, str], validate: Validator | None) -> str | None:
    """Why the file at `path` is not the one asked for: what `validate` finds, else the digests
    that differ from `expected`; None when it passes."""
    if validate is not None and (problem := validate(path)):
        return problem
    mismatches = []
    for name, digest in expected.items():
        with path.open("rb") as file:
            actual = hashlib.file_digest(file, name).hexdigest()
        if actual != digest:
            mismatches.append(f"expected {name} {digest}, found {actual}")
    return f"checksum mismatch: {'; '.join(mismatches)}" if mismatches else None
