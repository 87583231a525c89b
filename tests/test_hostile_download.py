"""Hostile and faulty downloads: bad URLs and variables, lying, stalled, dripping or endless
servers, error pages served as files, malformed registry entries, hub ids and hub configs.

Every case must end in one line of a VitkitError that names the URL, file, variable or id, and
must leave nothing in the cache that would fail forever after: the next call either succeeds or
fails for the same, stated reason. Servers are real (helpers.FileServer on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import test_registry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_registry import NAME, SERVED

from vitkit.cli.main import main
from vitkit.download import download
from vitkit.errors import CheckpointError, DownloadError
from vitkit.weights import PretrainedWeights, load_model, register_pretrained, registry
from vitkit.weights.files import MAX_JSON_BYTES
from vitkit.weights.hub import _checkpoint_in

from helpers import FileServer, RangeHandler

PAYLOAD = bytes(range(256)) * 40  # 10 KiB, every byte value, so an offset error shows
pytestmark = pytest.mark.usefixtures("online")
# The registry tests' fixtures: Google's reference checkpoint served by a local mirror and
# registered as NAME (`entry`), in an empty $VITKIT_HOME (`home`); an offline hub cache.
entry, home, hub_cache, params = (
    test_registry.entry, test_registry.home, test_registry.hub_cache, test_registry.params
)  # fmt: skip


def _files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


# URLs that cannot be fetched: refused before any request, naming the URL.


@pytest.mark.parametrize(
    "url",
    [
        "notaurl",  # no scheme
        "ftp://127.0.0.1/data.bin",  # a scheme vitkit does not fetch
        "http:///data.bin",  # no host
        "http://[::1/data.bin",  # malformed IPv6 host
        "http://127.0.0.1:99999/data.bin",  # port out of range
        "file://fileserver/data.bin",  # a file:// URL that names another machine
        "file:data.bin",  # a file:// URL with a relative path
    ],
)
def test_a_url_that_cannot_be_fetched_is_named(url: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="cannot fetch it") as error:
        download(url, tmp_path / "cache" / "data.bin", progress=False)
    assert url in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "cache").exists()


# file:// sources: a mirror on a shared disk, for clusters without internet.


def test_a_file_url_is_copied_and_checked(tmp_path: Path) -> None:
    source = tmp_path / "shared disk" / "data.bin"  # a space: the URL is percent-encoded
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    destination = tmp_path / "cache" / "data.bin"
    sha256 = hashlib.sha256(PAYLOAD).hexdigest()
    assert download(source.as_uri(), destination, sha256=sha256, progress=False) == destination
    assert destination.read_bytes() == PAYLOAD
    assert _files_under(tmp_path / "cache") == ["data.bin"]


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("/nonexistent/vitkit-mirror/data.bin", "does not exist"),
        ("/dev/zero", "not a regular file"),  # endless: must not be read
        ("/tmp", "not a regular file"),
    ],
)
def test_a_file_url_that_is_no_regular_file_is_refused(
    source: str, reason: str, tmp_path: Path
) -> None:
    url = Path(source).as_uri()
    with pytest.raises(DownloadError, match=reason) as error:
        download(url, tmp_path / "data.bin", progress=False)
    assert url in str(error.value) and "resume" not in str(error.value)
    assert _files_under(tmp_path) == []


# Servers that cannot resume a .part: the download starts over in the same call.


# What a server that cannot resume sends instead: (Content-Range, body) for the whole content.
Misrange = Callable[[bytes], tuple[str | None, bytes]]


class _MisrangingHandler(RangeHandler):
    """Answers a Range request (and, with `misrange_whole`, any request) with 206 and the
    server's `misrange(content)`, which disagrees with what was asked."""

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        if range_header is None and not self.server.misrange_whole:  # type: ignore[attr-defined]
            super().do_GET()
            return
        self.server.requests.append((self.path, range_header))
        content = (self.server.root / self.path.lstrip("/")).read_bytes()
        content_range, body = self.server.misrange(content)  # type: ignore[attr-defined]
        self.send_response(206)
        if content_range is not None:
            self.send_header("Content-Range", content_range)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _misranging(server: FileServer, misrange: Misrange, *, whole: bool = False) -> None:
    server.RequestHandlerClass = _MisrangingHandler
    server.misrange = misrange  # type: ignore[attr-defined]
    server.misrange_whole = whole  # type: ignore[attr-defined]


# Answers to "Range: bytes=3000-" for a .part of 3000 bytes.
MISRANGED_RESUMES: dict[str, Misrange] = {
    # Says 206 but sends the file from byte 0: appending it would corrupt the .part.
    "from byte 0": lambda content: (f"bytes 0-{len(content) - 1}/{len(content)}", content),
    "no Content-Range": lambda content: (None, content[3000:]),
    "a slice short of the end": lambda content: (
        f"bytes 3000-3999/{len(content)}",
        content[3000:4000],
    ),
    "a malformed Content-Range": lambda content: ("bytes=3000-", content[3000:]),
    "a body short of its Content-Range": lambda content: (
        f"bytes 3000-{len(content) - 1}/{len(content)}",
        content[3000:-10],
    ),
}


@pytest.mark.parametrize("case", list(MISRANGED_RESUMES))
def test_a_part_the_server_cannot_resume_is_fetched_anew_in_the_same_call(
    case: str, server: FileServer, tmp_path: Path
) -> None:
    url = server.serve("data.bin", PAYLOAD)
    destination = tmp_path / "cache" / "data.bin"
    destination.parent.mkdir()
    # left by an interrupted transfer:
    (tmp_path / "cache" / "data.bin.part").write_bytes(PAYLOAD[:3000])
    _misranging(server, MISRANGED_RESUMES[case])
    download(url, destination, progress=False)
    assert destination.read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", "bytes=3000-"), ("/data.bin", None)]
    assert _files_under(tmp_path / "cache") == ["data.bin"]


def test_a_partial_answer_to_a_whole_file_request_is_refused(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.serve("data.bin", PAYLOAD)
    _misranging(server, lambda content: (f"bytes 0-99/{len(content)}", content[:100]), whole=True)
    with pytest.raises(DownloadError, match="Content-Range") as error:
        download(url, tmp_path / "cache" / "data.bin", progress=False)
    assert url in str(error.value) and "resume" not in str(error.value)
    assert _files_under(tmp_path / "cache") == []  # no truncated file passes for the real one


# Stalled servers: the download fails within VITKIT_HTTP_TIMEOUT, keeping what it received.


def test_a_stalled_transfer_fails_in_time_and_resumes_from_what_arrived(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VITKIT_HTTP_TIMEOUT", "1")
    url = server.serve("data.bin", PAYLOAD)
    destination = tmp_path / "cache" / "data.bin"
    server.stall_after = 3000
    started = time.monotonic()
    with pytest.raises(DownloadError, match="timed out") as error:
        download(url, destination, progress=False)
    assert time.monotonic() - started < 5
    assert url in str(error.value) and "3000 bytes kept" in str(error.value)
    assert (tmp_path / "cache" / "data.bin.part").read_bytes() == PAYLOAD[:3000]

    server.stall_after = None
    download(url, destination, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert server.requests[-1] == ("/data.bin", "bytes=3000-")
    assert _files_under(tmp_path / "cache") == ["data.bin"]


def test_a_server_silent_after_its_headers_fails_in_time_and_keeps_nothing(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VITKIT_HTTP_TIMEOUT", "1")
    url = server.serve("data.bin", PAYLOAD)
    server.stall_after = 0
    started = time.monotonic()
    with pytest.raises(DownloadError, match="timed out") as error:
        download(url, tmp_path / "cache" / "data.bin", progress=False)
    assert time.monotonic() - started < 5
    assert url in str(error.value) and "resume" not in str(error.value)
    assert _files_under(tmp_path / "cache") == []  # an empty .part promises nothing


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        *(("VITKIT_HTTP_TIMEOUT", value) for value in ["soon", "0", "-5", "nan", "inf", " "]),
        ("VITKIT_HTTP_TIMEOUT", "1e300"),  # W09: finite, but past what a socket timeout can hold
        ("VITKIT_HTTP_TIMEOUT", "86401"),  # more than a day
        ("VITKIT_HTTP_MIN_RATE", "-1"),
        ("VITKIT_HTTP_MIN_RATE", "fast"),
        ("VITKIT_MAX_DOWNLOAD_BYTES", "0"),
        ("VITKIT_MAX_DOWNLOAD_BYTES", "inf"),
    ],
)
def test_a_bad_download_setting_is_named(
    variable: str,
    value: str,
    server: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(variable, value)
    url = server.serve("data.bin", PAYLOAD)
    with pytest.raises(DownloadError, match=variable) as error:
        download(url, tmp_path / "cache" / "data.bin", progress=False)
    assert repr(value) in str(error.value) and "\n" not in str(error.value)
    assert server.requests == [] and _files_under(tmp_path / "cache") == []


# Servers that script their own answer: drips, lies about the length, endless bodies, loops.

Script = Callable[[BaseHTTPRequestHandler], None]


class _ScriptedHandler(RangeHandler):
    """Answers every request with the server's `script`; a client that hangs up ends it."""

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))
        try:
            self.server.script(self)  # type: ignore[attr-defined]
        except (BrokenPipeError, ConnectionResetError):
            pass


def _scripted(server: FileServer, script: Script) -> str:
    """The URL of a file that `script` answers for."""
    server.RequestHandlerClass = _ScriptedHandler
    server.script = script  # type: ignore[attr-defined]
    return server.url("data.bin")


def _drip(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    """Send `data` a byte every 0.1 s: a server that is never silent, and never done."""
    for byte in data:
        handler.wfile.write(bytes([byte]))
        time.sleep(0.1)


def _drip_body(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(PAYLOAD)))
    handler.end_headers()
    _drip(handler, PAYLOAD[:50])  # 5 s, then the connection closes


def _drip_headers(handler: BaseHTTPRequestHandler) -> None:
    handler.wfile.write(b"HTTP/1.0 200 OK\r\n")
    _drip(handler, b"X-Drip: " + b"." * 42)  # 5 s, then a complete, empty answer
    handler.wfile.write(b"\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def impatient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give a server 1 s of silence, 1 s for its headers, and 1,000 bytes/s at least."""
    monkeypatch.setenv("VITKIT_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("VITKIT_HTTP_MIN_RATE", "1000")


@pytest.mark.usefixtures("impatient")
def test_a_body_dripped_too_slowly_fails_in_time_and_resumes(
    server: FileServer, tmp_path: Path
) -> None:
    """W08: a byte every 0.1 s is never a silence of 1 s; it is 10 bytes/s for a minimum of 1000."""
    url = _scripted(server, _drip_body)
    destination = tmp_path / "cache" / "data.bin"
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"bytes/s.*VITKIT_HTTP_MIN_RATE") as error:
        download(url, destination, progress=False)
    assert time.monotonic() - started < 3
    message = str(error.value)
    assert url in message and "run again to resume" in message and "\n" not in message
    kept = (tmp_path / "cache" / "data.bin.part").read_bytes()
    assert kept and kept == PAYLOAD[: len(kept)]  # what arrived is resumed from


@pytest.mark.usefixtures("impatient")
def test_headers_dripped_too_slowly_fail_in_time_and_keep_nothing(
    server: FileServer, tmp_path: Path
) -> None:
    """W08: the headers must all be in within VITKIT_HTTP_TIMEOUT, however steadily they come."""
    url = _scripted(server, _drip_headers)
    started = time.monotonic()
    with pytest.raises(DownloadError, match="headers") as error:
        download(url, tmp_path / "cache" / "data.bin", progress=False)
    assert time.monotonic() - started < 3
    assert url in str(error.value) and "\n" not in str(error.value)
    assert _files_under(tmp_path / "cache") == []


def _claim_a_petabyte(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(10**15))
    handler.end_headers()
    handler.wfile.write(PAYLOAD)


def _stream_without_end(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)  # HTTP/1.0 without Content-Length: the body ends when it closes
    handler.end_headers()
    for _ in range(16):  # 16 MiB, then it gives up: before the fix, a file in the cache
        handler.wfile.write(bytes(1 << 20))


@pytest.mark.parametrize("part", [b"", PAYLOAD[:3000]], ids=["fresh", "resumed"])
def test_a_length_larger_than_the_disk_is_refused_before_writing(
    part: bytes, server: FileServer, tmp_path: Path
) -> None:
    """W10: a declared Content-Length is checked against the free disk; a .part is not kept, as
    resuming it would fill the disk again."""
    url = _scripted(server, _claim_a_petabyte)
    destination = tmp_path / "cache" / "data.bin"
    destination.parent.mkdir()
    if part:
        (tmp_path / "cache" / "data.bin.part").write_bytes(part)
    with pytest.raises(DownloadError, match="free") as error:
        download(url, destination, progress=False)
    message = str(error.value)
    assert url in message and "resume" not in message and "\n" not in message
    assert _files_under(tmp_path / "cache") == []


def test_a_body_without_length_stops_at_the_ceiling(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W10: with no length to check, what arrives is counted against VITKIT_MAX_DOWNLOAD_BYTES
    (and the free disk), and a transfer past it is deleted."""
    monkeypatch.setenv("VITKIT_MAX_DOWNLOAD_BYTES", "100000")
    url = _scripted(server, _stream_without_end)
    with pytest.raises(DownloadError, match="VITKIT_MAX_DOWNLOAD_BYTES") as error:
        download(url, tmp_path / "cache" / "data.bin", progress=False)
    assert url in str(error.value) and "\n" not in str(error.value)
    assert _files_under(tmp_path / "cache") == []


def test_a_redirect_loop_is_one_line(server: FileServer, tmp_path: Path) -> None:
    def redirect_to_itself(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(301)
        handler.send_header("Location", handler.path)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    url = _scripted(server, redirect_to_itself)
    with pytest.raises(DownloadError, match="redirect") as error:
        download(url, tmp_path / "cache" / "data.bin", progress=False)
    assert url in str(error.value) and "\n" not in str(error.value)
    assert _files_under(tmp_path / "cache") == []


# Mirrors ($VITKIT_WEIGHTS_URL): checked when used; http(s) and file:// both work.


@pytest.mark.parametrize(
    "mirror",
    [
        "notaurl",
        "ftp://mirror.example/vit_models",
        "http://",
        "https://mirror.example/vit_models?token=1",  # the file path would follow the query
        "http://[::1/vit_models",
    ],
)
def test_a_bad_mirror_variable_is_named_before_any_request(
    mirror: str,
    entry: PretrainedWeights,
    server: FileServer,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(registry.MIRROR_VARIABLE, mirror)
    with pytest.raises(DownloadError, match=registry.MIRROR_VARIABLE) as error:
        load_model(NAME)
    assert repr(mirror) in str(error.value) and NAME in str(error.value)
    assert server.requests == [] and not (home / "weights").exists()


def test_the_pretrained_command_names_a_bad_mirror_in_one_line(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(registry.MIRROR_VARIABLE, "notaurl")
    assert main(["pretrained"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "VITKIT_WEIGHTS_URL='notaurl'" in err


def test_a_mirror_on_a_shared_disk_serves_the_weights(
    entry: PretrainedWeights,
    params: bytes,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mirror = tmp_path / "shared" / "vit_models"
    (mirror / SERVED).parent.mkdir(parents=True)
    (mirror / SERVED).write_bytes(params)
    monkeypatch.setenv(registry.MIRROR_VARIABLE, mirror.as_uri() + "/")
    monkeypatch.setenv("VITKIT_OFFLINE", "1")  # what such a mirror is for: no network
    model = load_model(NAME)
    assert model.config.num_classes == entry.num_classes
    assert (home / "weights" / "ViT-Tiny_8@fixture.npz").read_bytes() == params


# A mirror's error page served with status 200 never enters the cache.


@pytest.fixture
def unchecked(entry: PretrainedWeights) -> PretrainedWeights:
    """The served fixture without a SHA-256, as Google's release is registered (it has none)."""
    weights = PretrainedWeights(**{**vars(entry), "sha256": None})
    register_pretrained(weights, replace=True)
    return weights


NOT_WEIGHTS = {
    "an HTML page": b"<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>\n",
    "an XML document": b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code></Error>",
    "an empty file": b"",
    "not a .npz file": b"PK\x03\x04" + bytes(5000),  # a zip's first bytes, but no directory
    "an empty zip archive": b"PK\x05\x06" + bytes(18),  # a zip, but no arrays in it
}


@pytest.mark.parametrize("received", list(NOT_WEIGHTS))
def test_a_page_served_as_weights_is_refused_and_fetched_again_next_time(
    received: str,
    unchecked: PretrainedWeights,
    server: FileServer,
    home: Path,
    params: bytes,
) -> None:
    server.serve(SERVED, NOT_WEIGHTS[received])
    with pytest.raises(DownloadError) as error:
        load_model(NAME)
    message = str(error.value)
    assert NAME in message and server.url(SERVED) in message
    assert received in message and "\n" not in message
    assert _files_under(home) == []

    server.serve(SERVED, params)  # the mirror is repaired: the next call downloads again
    load_model(NAME)
    assert len(server.requests) == 2
    assert _files_under(home) == ["weights/ViT-Tiny_8@fixture.npz"]


@pytest.mark.parametrize("received", ["an HTML page", "an empty zip archive"])
def test_an_error_page_already_in_the_cache_is_fetched_again(
    received: str,
    unchecked: PretrainedWeights,
    server: FileServer,
    home: Path,
    params: bytes,
) -> None:
    cached = home / "weights" / "ViT-Tiny_8@fixture.npz"  # left by a vitkit without the check
    cached.parent.mkdir(parents=True)
    cached.write_bytes(NOT_WEIGHTS[received])
    load_model(NAME)
    assert cached.read_bytes() == params and len(server.requests) == 1


def test_weights_longer_than_registered_are_refused_and_not_kept(
    unchecked: PretrainedWeights, server: FileServer, home: Path, params: bytes
) -> None:
    """W10: an entry's size_bytes is the ceiling of its download, and the length it must have."""
    register_pretrained(PretrainedWeights(**{**vars(unchecked), "size_bytes": len(params)}),
                        replace=True)  # fmt: skip
    server.serve(SERVED, params + bytes(1000))  # still a zip: trailing bytes hide behind it
    with pytest.raises(DownloadError, match=f"{len(params):,} are expected") as error:
        load_model(NAME)
    assert NAME in str(error.value) and server.url(SERVED) in str(error.value)
    assert _files_under(home) == []

    server.serve(SERVED, params)
    load_model(NAME)
    assert _files_under(home) == ["weights/ViT-Tiny_8@fixture.npz"]


# Registry entries: a field that could only fail later is refused when the entry is made.


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", "notaurl"),
        ("url", "ftp://mirror.example/x.npz"),
        ("sha256", "xyz"),
        ("resolution", 0),
        ("num_classes", -1),
        ("name", ""),
        ("name", "ViT-B/16@i21k\x00"),
        ("size_bytes", 0),
        ("size_bytes", 1.5),
    ],
)
def test_a_malformed_registry_entry_is_refused_naming_the_field(
    field: str, value: object, home: Path
) -> None:
    fields = {**vars(registry.get_pretrained("ViT-B/16@i21k")), "name": "ViT-B/16@test"}
    known = registry.list_pretrained()
    with pytest.raises(CheckpointError, match=field) as error:
        register_pretrained(PretrainedWeights(**{**fields, field: value}))
    assert repr(value) in str(error.value)
    assert registry.list_pretrained() == known


@pytest.mark.parametrize("length", [300, 5000])
def test_a_path_too_long_for_the_file_system_is_named(length: int, home: Path) -> None:
    text = "a" * length + "/b"  # shaped like a hub id, too long for one
    with pytest.raises(CheckpointError, match="not a usable path") as error:
        load_model(text)
    assert text in str(error.value)


# Hub ids: a malformed id is named as such, and the hub client's failures are one line.


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("hf:", "not a Hugging Face hub id"),
        ("hf:@main", "not a Hugging Face hub id"),
        ("hf:a/b/c", "not a Hugging Face hub id"),
        ("hf:../x", "not a Hugging Face hub id"),
        ("hf:org/na me", "not a Hugging Face hub id"),
        ("hf:org/name@", "no revision after '@'"),
        ("a..b/c", "not a Hugging Face hub id"),  # a bare id, no local path
    ],
)
def test_a_malformed_hub_id_is_named_not_reported_missing(
    spec: str, reason: str, hub_cache: Path
) -> None:
    with pytest.raises(CheckpointError, match=reason) as error:
        load_model(spec)
    message = str(error.value)
    assert message.startswith(f"{spec}: ") and "\n" not in message
    assert "offline" not in message


@pytest.fixture
def hub_endpoint(server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileServer:
    """The hub client pointed at the local server, online, with an empty cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", server.url("").rstrip("/"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return server


@pytest.mark.parametrize(
    "reply",
    [
        None,  # no such repository: 404, which the client reports over several lines
        b'{"siblings": []}',  # an API reply without the fields the client reads
        b"<html><body>Sign in</body></html>",  # a login page for the API
    ],
)
def test_a_failing_hub_endpoint_is_one_line_naming_the_id(
    reply: bytes | None, hub_endpoint: FileServer
) -> None:
    if reply is not None:
        hub_endpoint.serve("api/models/org/name/revision/main", reply)
    with pytest.raises(CheckpointError, match="cannot fetch it from the hub") as error:
        load_model("hf:org/name")
    assert str(error.value).startswith("hf:org/name: ") and "\n" not in str(error.value)
    assert hub_endpoint.requests  # the failure came from the endpoint, not before it


@pytest.mark.parametrize(
    "config", [b"[" * 100_000, b"\xff\xfe not UTF-8"], ids=["nested too deep", "not UTF-8"]
)
def test_a_hub_config_that_cannot_be_parsed_is_left_to_the_reader(
    config: bytes, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_bytes(config)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert _checkpoint_in(tmp_path) == tmp_path


@pytest.mark.parametrize("sparse", [False, True], ids=["past the cap", "3 GiB"])
def test_a_hub_config_too_large_is_not_read_and_left_to_the_reader(
    sparse: bool, tmp_path: Path
) -> None:
    """W07: a hub repository's config.json is capped as a local one is, not read whole."""
    config = tmp_path / "config.json"
    if sparse:
        with config.open("wb") as file:
            file.truncate(3 << 30)  # a hole: costs no disk, and would cost 3 GiB of memory
    else:  # timm's, padded: read whole, it would pass for a timm repository
        config.write_text(json.dumps({"architecture": "vit", "pad": "." * MAX_JSON_BYTES}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert _checkpoint_in(tmp_path) == tmp_path
    with pytest.raises(CheckpointError, match="config file") as error:
        load_model(tmp_path)
    assert str(config) in str(error.value)


# A hub config.json of any bytes: timm's (an object with "architecture", no "model_type") names
# its weights file, anything else the directory, for load_model to read or report.
HUB_CONFIGS = st.one_of(
    st.binary(max_size=64),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["architecture", "model_type", "num_classes", ""])
                          | st.text(max_size=4), inner, max_size=4),
        max_leaves=8,
    ).map(lambda value: json.dumps(value).encode()),
)  # fmt: skip


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(content=HUB_CONFIGS)
def test_the_hub_config_reader_takes_any_bytes(content: bytes, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(content)
    (tmp_path / "model.safetensors").touch()
    try:
        config = json.loads(content)
    except (ValueError, RecursionError):
        config = None
    timm = isinstance(config, dict) and "architecture" in config and "model_type" not in config
    assert _checkpoint_in(tmp_path) == (tmp_path / "model.safetensors" if timm else tmp_path)
