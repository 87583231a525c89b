"""`download` against a real HTTP server on 127.0.0.1 that can cut transfers and ignore Range."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from vitkit.download import DownloadError, default_cache_dir, download

from helpers import FileServer

PAYLOAD = bytes(range(256)) * 40  # 10 KiB, every byte value, so an offset error shows
pytestmark = pytest.mark.usefixtures("online")


def test_download_checks_both_digests_and_leaves_no_part(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.serve("data.bin", PAYLOAD)
    destination = tmp_path / "cache" / "data.bin"
    result = download(
        url,
        destination,
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        md5=hashlib.md5(PAYLOAD).hexdigest().upper(),  # digests compare case-insensitively
        progress=False,
    )
    assert result == destination
    assert destination.read_bytes() == PAYLOAD
    assert list(destination.parent.iterdir()) == [destination]


def test_wrong_checksum_deletes_the_download_and_names_both_digests(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.serve("data.bin", PAYLOAD)
    destination = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="checksum mismatch") as error:
        download(url, destination, sha256="0" * 64, progress=False)
    message = str(error.value)
    assert url in message and "0" * 64 in message
    assert hashlib.sha256(PAYLOAD).hexdigest() in message
    assert not destination.exists()
    assert not destination.with_name("data.bin.part").exists()


def test_interrupted_download_resumes_from_the_part_with_a_range_request(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.serve("data.bin", PAYLOAD)
    destination = tmp_path / "data.bin"
    part = tmp_path / "data.bin.part"
    server.drop_after = 3000
    with pytest.raises(DownloadError, match="run again to resume") as error:
        download(url, destination, md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False)
    assert url in str(error.value)
    assert part.read_bytes() == PAYLOAD[:3000]
    assert not destination.exists()

    download(url, destination, md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False)
    assert server.requests == [("/data.bin", None), ("/data.bin", "bytes=3000-")]
    assert destination.read_bytes() == PAYLOAD
    assert not part.exists()


def test_server_without_range_support_restarts_from_the_beginning(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.serve("data.bin", PAYLOAD)
    destination = tmp_path / "data.bin"
    server.supports_range = False
    server.drop_after = 3000
    with pytest.raises(DownloadError):
        download(url, destination, progress=False)
    download(url, destination, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert server.requests[-1] == ("/data.bin", "bytes=3000-")  # asked, answered with 200
    assert destination.read_bytes() == PAYLOAD


def test_a_part_as_long_as_the_file_is_fetched_again(server: FileServer, tmp_path: Path) -> None:
    url = server.serve("data.bin", PAYLOAD)
    destination = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(b"x" * len(PAYLOAD))  # 416 for its Range
    download(url, destination, md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False)
    assert destination.read_bytes() == PAYLOAD


def test_a_file_with_the_right_checksum_is_not_downloaded_again(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.serve("data.bin", PAYLOAD)
    destination = tmp_path / "data.bin"
    sha256 = hashlib.sha256(PAYLOAD).hexdigest()
    download(url, destination, sha256=sha256, progress=False)
    download(url, destination, sha256=sha256, progress=False)
    assert len(server.requests) == 1

    destination.write_bytes(b"corrupted")  # a wrong file is replaced
    download(url, destination, sha256=sha256, progress=False)
    assert len(server.requests) == 2
    assert destination.read_bytes() == PAYLOAD


def test_offline_mode_names_the_missing_file_and_stays_off_the_network(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.serve("data.bin", PAYLOAD)
    monkeypatch.setenv("VITKIT_OFFLINE", "1")
    destination = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="missing") as error:
        download(url, destination, progress=False)
    assert str(destination) in str(error.value) and url in str(error.value)

    destination.write_bytes(PAYLOAD)  # put there by hand: used as it is
    assert download(url, destination, md5=hashlib.md5(PAYLOAD).hexdigest()) == destination
    assert server.requests == []


def test_http_errors_name_the_url(server: FileServer, tmp_path: Path) -> None:
    url = server.url("absent.bin")
    with pytest.raises(DownloadError, match="404") as error:
        download(url, tmp_path / "absent.bin", progress=False)
    assert url in str(error.value)
    assert not (tmp_path / "absent.bin.part").exists()


def test_an_unreachable_server_names_the_url(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.bin"
    with pytest.raises(DownloadError, match="download failed") as error:
        download(url, tmp_path / "data.bin", progress=False)
    assert url in str(error.value)


def test_progress_bar_goes_to_stderr_only_when_asked(
    server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = server.serve("data.bin", PAYLOAD)
    download(url, tmp_path / "quiet.bin", progress=False)
    assert capsys.readouterr().err == ""
    download(url, tmp_path / "shown.bin")
    captured = capsys.readouterr()
    assert "shown.bin" in captured.err and "10.0k" in captured.err
    assert captured.out == ""


def test_default_cache_dir_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VITKIT_HOME", raising=False)
    monkeypatch.delenv("VITKIT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "vitkit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "vitkit"
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "old"))  # the older name still works
    assert default_cache_dir() == tmp_path / "old"
    monkeypatch.setenv("VITKIT_HOME", str(tmp_path / "home"))  # and yields to the new one
    assert default_cache_dir() == tmp_path / "home"
