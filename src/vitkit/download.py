"""Fetching files over HTTP: resumable, checksummed, and atomic; and where they are kept.

Dataset archives (CIFAR on a university server) and pretrained checkpoints (Google's bucket) are
large single files. A transfer that dies halfway should continue where it stopped, a corrupt file
must never be taken for the real one, and a cluster without internet should say which file to
copy where instead of hanging on a socket. `vitkit.data` and `vitkit.weights` both fetch through
this one module, which is why it sits beside them rather than in either.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from vitkit.errors import DownloadError

# Seconds a connection may stay silent before a download or a streamed shard fails (a download
# can then be resumed); VITKIT_HTTP_TIMEOUT overrides it.
DEFAULT_TIMEOUT_S = 60.0
# Bytes read per network call: large enough to be cheap, small enough for a smooth progress bar.
CHUNK_BYTES = 1 << 20


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
        raise DownloadError(f"VITKIT_HTTP_TIMEOUT must be a positive number of seconds, got {text!r}")
    return seconds


def is_offline() -> bool:
    """Whether VITKIT_OFFLINE forbids network access (any value but empty or 0)."""
    return os.environ.get("VITKIT_OFFLINE", "") not in ("", "0")


def download(
    url: str,
    destination: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Fetch `url` to `destination` and return it; a file already there that passes the checksums
    (or any file there, when none is given) is returned without touching the network.

    Bytes go to `<destination>.part` first, so a killed transfer never leaves a file that looks
    finished; the next call resumes the .part with an HTTP Range request when the server allows.
    """
    destination = Path(destination)
    expected = {
        name: digest.lower() for name, digest in (("sha256", sha256), ("md5", md5)) if digest
    }
    if destination.is_file() and not _mismatches(destination, expected):
        return destination
    if is_offline():
        state = "fails its checksum" if destination.is_file() else "is missing"
        raise DownloadError(
            f"{destination} {state} and VITKIT_OFFLINE is set, so it is not downloaded; "
            f"fetch {url} elsewhere and put the file at {destination}"
        )
    part = destination.with_name(destination.name + ".part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(url, part, progress=progress)
    # URLError (refused, DNS, HTTP status) and resets, timeouts, disk errors are OSErrors.
    except (OSError, http.client.HTTPException) as error:
        kept = f" ({part} is kept: run again to resume)" if part.is_file() else ""
        raise DownloadError(f"{url}: download failed: {error}{kept}") from error
    if mismatches := _mismatches(part, expected):
        part.unlink()
        details = "; ".join(
            f"expected {name} {expected[name]}, found {found}" for name, found in mismatches.items()
        )
        raise DownloadError(f"{url}: checksum mismatch, download deleted: {details}")
    os.replace(part, destination)
    return destination


def _fetch(url: str, part: Path, *, progress: bool) -> None:
    """Stream `url` into `part`, appending when the server resumes, rewriting it otherwise."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=http_timeout()
        )
    except urllib.error.HTTPError as error:
        if error.code != 416 or not offset:
            raise
        # 416 Range Not Satisfiable: the .part is as long as the file or longer; start over.
        error.close()
        part.unlink()
        _fetch(url, part, progress=progress)
        return
    with response:
        if response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise http.client.HTTPException(
                    f"asked for bytes {offset}- but got Content-Range {content_range!r}"
                )
            mode = "ab"
        else:  # the server sent the whole file: it ignores Range, or there was no .part
            mode, offset = "wb", 0
        remaining = response.length  # None when the server sends no Content-Length
        total = None if remaining is None else offset + remaining
        with (
            part.open(mode) as file,
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
            while chunk := response.read(CHUNK_BYTES):
                file.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # http.client returns a short body without complaint when the connection drops early.
    if remaining is not None and received < remaining:
        raise ConnectionError(f"connection closed after {offset + received} of {total} bytes")


def _mismatches(path: Path, expected: dict[str, str]) -> dict[str, str]:
    """The digests of `path` that differ from `expected`, by algorithm name."""
    found: dict[str, str] = {}
    for name, digest in expected.items():
        with path.open("rb") as file:
            actual = hashlib.file_digest(file, name).hexdigest()
        if actual != digest:
            found[name] = actual
    return found
