"""Hostile and faulty data: shard indexes, shards, image-folder archives, images, CIFAR batches.

Every bad input must be refused with a DataError whose message names the file (and the entry,
member or field), without running anything, opening files outside the dataset's folder or
exhausting memory. Hand-made cases come first, grouped by cause; then hypothesis generates a few
hundred more of each kind, read in one child process whose memory is capped (tests/hostile.py),
where any exception other than a VitkitError counts as a crash. The child imports the `read_*`
functions below from this module.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pickletools
import socket
import struct
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from test_cifar import CIFAR10_CLASSES, pack, py2_pickle, write_cifar10

from vitkit.data.archives import MAX_HEADER_BYTES
from vitkit.data.cache import cached_dataset
from vitkit.data.cifar import load_cifar
from vitkit.data.fitting import WITHIN
from vitkit.data.folder import cached_image_folder, iter_decoded, scan
from vitkit.data.images import PIXEL_LIMIT_VARIABLE, load_rgb
from vitkit.data.shards import ShardDataset
from vitkit.data.sources import open_dataset
from vitkit.errors import DataError

from helpers import FileServer
from hostile import crashes, read_each_under_ceiling

TESTS = Path(__file__).resolve().parent
# numpy's array-rebuilding function, as numpy's own pickles name it.
NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]


# --- Readers the child process calls, one path each ------------------------------------------


def read_shards(path: str) -> None:
    """Every sample of the shards at `path` (an index, or a shard path), decoded."""
    for _ in ShardDataset(path):
        pass


def read_image_archive(path: str) -> None:
    """The train split of an image-folder archive, decoded and cached (under $VITKIT_HOME)."""
    open_dataset(path, split="train")


def decode_image_archive(path: str) -> None:
    """The train split of an image-folder archive, decoded and dropped (no cache)."""
    for _ in iter_decoded(scan(path, "train")):
        pass


def read_cifar_test_split(root: str) -> None:
    """The CIFAR-10 test split in `root` (a cifar-10-batches-py folder, or its archive)."""
    load_cifar("cifar10", split="test", root=Path(root))


# --- Building files ----------------------------------------------------------------------------


def png(size: tuple[int, int] = (4, 4), value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """The first bytes of a PNG whose header says width x height: a few dozen bytes that would
    decode to width * height * 3."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = b"IDAT" + zlib.compress(bytes(64))
    return (
        b"\x89PNG\r\n\x1a\n"
        + ihdr
        + struct.pack(">I", len(idat) - 4)
        + idat
        + struct.pack(">I", zlib.crc32(idat))
    )


def member(name: str, data: bytes = b"", **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    """A tar member; `fields` (size, type, linkname, pax_headers) may lie about `data`."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def tar_bytes(
    members: list[tuple[tarfile.TarInfo, bytes]], *, tar_format: int = tarfile.PAX_FORMAT
) -> bytes:
    """A tar written header by header, so that a header may claim more or less than follows."""
    parts = []
    for info, data in members:
        parts.append(info.tobuf(tar_format, "utf-8", "surrogateescape"))
        parts.append(data + bytes(-len(data) % tarfile.BLOCKSIZE))
    return b"".join(parts) + bytes(2 * tarfile.BLOCKSIZE)


def gzipped(data: bytes) -> bytes:
    return zlib.compress(data, wbits=31)


def gzip_of_zeros_after(prefix: bytes, zeros: int) -> bytes:
    """A gzip of `prefix` then `zeros` (a multiple of 16 MiB) zero bytes, made without
    compressing gigabytes: after a full flush deflate does not look back, so one block of zeros
    compresses the same wherever it comes and is repeated."""
    block = 16 << 20
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(1, zlib.DEFLATED, -15).flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + head + repeated * (zeros // block) + end + bytes(8)  # trailer not checked


def shard(samples: dict[str, int]) -> bytes:
    """A WebDataset shard of key -> label, each sample a PNG and a .cls."""
    members = []
    for key, label in samples.items():
        members += [member(f"{key}.png", png()), member(f"{key}.cls", str(label).encode())]
    return tar_bytes(members)


def index(entries: list[tuple[str, int]]) -> bytes:
    """An index.json of (shard name, samples) entries and the classes a and b."""
    shards = [{"name": name, "samples": samples} for name, samples in entries]
    total = sum(samples for _, samples in entries)
    return json.dumps({"shards": shards, "total": total, "classes": ["a", "b"]}).encode()


def assert_names(error: pytest.ExceptionInfo[DataError], *parts: object) -> None:
    """The error is a one-line DataError whose message holds each of `parts`."""
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, (part, message)


@pytest.fixture
def child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers in a child process import this module, and cache (if at all) under tmp_path."""
    paths = [str(TESTS), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
    monkeypatch.setenv("VITKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(PIXEL_LIMIT_VARIABLE, raising=False)


def not_refused_naming_their_file(records: list[dict]) -> list[dict]:
    """The records that are not a DataError whose message names the path read."""
    return [
        record
        for record in records
        if record["outcome"] != "refused"
        or record["type"] != "DataError"
        or record["path"] not in record["message"]
    ]


# --- 1. A shard index chooses no scheme, no host and no file outside its folder ----------------

LOCAL_ESCAPES = {
    "pipe": "pipe:touch {marker}",
    "absolute": "{outside}",
    "parent": "../outside.tar",
    "parent-below": "sub/../../outside.tar",
    "file-url": "file://{outside}",
    "http-url": "http://127.0.0.1:9/outside.tar",
    "scheme-relative": "//other-host.invalid/outside.tar",
}


@pytest.mark.parametrize("kind", LOCAL_ESCAPES)
def test_a_local_index_only_names_shards_in_its_folder(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside.tar"
    outside.write_bytes(shard({"x": 0}))  # readable: only the check can keep it out
    marker = tmp_path / "executed"
    name = LOCAL_ESCAPES[kind].format(outside=outside, marker=marker)
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "shard-0.tar").write_bytes(shard({"y": 1}))
    (folder / "index.json").write_bytes(index([("shard-0.tar", 1), (name, 1)]))
    with pytest.raises(DataError) as error:
        list(ShardDataset(folder))
    assert_names(error, folder / "index.json", "shards[1]", repr(name))
    assert not marker.exists()


REMOTE_ESCAPES = {
    "pipe": "pipe:touch {marker}",
    "absolute-path": "/abs/path.tar",
    "parent": "../outside.tar",
    "parent-encoded": "%2e%2e/outside.tar",
    "parent-encoded-slash": "sub/..%2F..%2Foutside.tar",
    "file-url": "file://{outside}",
    "other-host": "http://other-host.invalid/set/shard-1.tar",
    "scheme-relative": "//other-host.invalid/set/shard-1.tar",
    "other-port": "http://127.0.0.1:{other_port}/set/shard-1.tar",
    "other-scheme": "https://127.0.0.1:{port}/set/shard-1.tar",
}


@pytest.mark.usefixtures("online")
@pytest.mark.parametrize("kind", REMOTE_ESCAPES)
def test_a_served_index_only_names_shards_under_its_url(
    tmp_path: Path, server: FileServer, kind: str
) -> None:
    outside = tmp_path / "outside.tar"
    outside.write_bytes(shard({"x": 0}))
    marker = tmp_path / "executed"
    port = server.server_port
    name = REMOTE_ESCAPES[kind].format(
        outside=outside, marker=marker, port=port, other_port=port + 1
    )
    for path in ("abs/path.tar", "outside.tar", "set/shard-0.tar", "set/shard-1.tar"):
        server.serve(path, shard({"x": 0}))
    url = server.serve("set/index.json", index([("shard-0.tar", 1), (name, 1)]))
    with pytest.raises(DataError) as error:
        list(ShardDataset(url))
    assert_names(error, url, "shards[1]", repr(name))
    assert not marker.exists()
    assert [path for path, _ in server.requests] == ["/set/index.json"]


@pytest.mark.usefixtures("online")
def test_an_index_may_name_shards_below_it_by_relative_path_or_url(
    tmp_path: Path, server: FileServer
) -> None:
    folder = tmp_path / "set"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "shard-0.tar").write_bytes(shard({"a": 0, "b": 1}))
    (folder / "index.json").write_bytes(index([("./sub/shard-0.tar", 2)]))
    assert sorted(label for _, label in ShardDataset(folder)) == [0, 1]

    server.serve("set/sub/shard-0.tar", shard({"a": 0}))
    server.serve("set/shard-1.tar", shard({"b": 1}))
    entries = [("sub/shard-0.tar", 1), (server.url("set/shard-1.tar"), 1)]
    url = server.serve("set/index.json", index(entries))
    assert sorted(label for _, label in ShardDataset(url)) == [0, 1]


# --- 1b. Every field of an index is checked ------------------------------------------------------

BAD_INDEXES = {
    "not-json": (b"{'shards': []}", "not a readable shard index"),
    "not-utf8": (b'{"shards": "\xff"}', "not a readable shard index"),
    "a-list": (b"[]", "holds a JSON list"),
    "no-shards": (b'{"classes": [], "total": 0}', "shards must be a list"),
    "shards-a-dict": (b'{"shards": {}, "classes": [], "total": 0}', "shards must be a list"),
    "entry-a-string": (b'{"shards": ["x.tar"], "classes": [], "total": 0}', "shards[0]"),
    "name-a-number": (b'{"shards": [{"name": 7, "samples": 1}], "classes": [], "total": 1}',
                      "shards[0]: needs a name"),
    "samples-a-float": (b'{"shards": [{"name": "s.tar", "samples": 2.5}], "classes": [],'
                        b' "total": 2.5}', "total: must be a count"),
    "samples-true": (b'{"shards": [{"name": "s.tar", "samples": true}], "classes": [],'
                     b' "total": 1}', "shards[0]: samples: must be a count"),
    "samples-negative": (b'{"shards": [{"name": "s.tar", "samples": -1}], "classes": [],'
                         b' "total": -1}', "total: must be a count"),
    "samples-infinite": (b'{"shards": [{"name": "s.tar", "samples": 1e999}], "classes": [],'
                         b' "total": 1}', "shards[0]: samples: must be a count"),
    "total-text": (b'{"shards": [], "classes": [], "total": "0"}', "total: must be a count"),
    "classes-numbers": (b'{"shards": [], "classes": [1, 2], "total": 0}', "classes must be"),
    "listed-twice": (b'{"shards": [{"name": "s.tar", "samples": 1}, {"name": "./s.tar",'
                     b' "samples": 1}], "classes": [], "total": 2}', "shards[1]: './s.tar' is "
                     "listed twice"),
    "counts-differ": (b'{"shards": [{"name": "s.tar", "samples": 1}], "classes": [],'
                      b' "total": 5}', "add up to 1, not 5"),
    "nested-deep": (b"[" * 100_000 + b"]" * 100_000, "RecursionError"),
}  # fmt: skip


@pytest.mark.parametrize("kind", BAD_INDEXES)
def test_bad_index_fields_are_named(tmp_path: Path, kind: str) -> None:
    content, expected = BAD_INDEXES[kind]
    path = tmp_path / "index.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        ShardDataset(path)
    assert_names(error, path, expected)


def test_an_oversized_index_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "index.json"
    with path.open("wb") as file:  # sparse: no 64 MiB written
        file.truncate((64 << 20) + 1)
    with pytest.raises(DataError) as error:
        ShardDataset(path)
    assert_names(error, path, "larger than the 67,108,864 bytes")


# --- 8. A silent server fails the reader after VITKIT_HTTP_TIMEOUT -------------------------------


@pytest.mark.usefixtures("online")
@pytest.mark.parametrize("stalls", ["index", "shard-from-index", "shard-from-pattern"])
def test_a_stalled_server_fails_within_the_timeout(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, stalls: str
) -> None:
    monkeypatch.setenv("VITKIT_HTTP_TIMEOUT", "1")
    shard_url = server.serve("set/shard-0.tar", shard({f"{n:03d}": 0 for n in range(4)}))
    index_content = index([("shard-0.tar", 4)])
    index_url = server.serve("set/index.json", index_content)
    # Responses stop after this many bytes: the whole index, or the first few of it.
    server.stall_after = 10 if stalls == "index" else len(index_content)
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        list(ShardDataset(shard_url if stalls == "shard-from-pattern" else index_url))
    assert time.monotonic() - start < 10
    assert_names(error, index_url if stalls == "index" else shard_url, "timed out")


@pytest.mark.usefixtures("online")
def test_a_server_dripping_its_headers_fails_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Never silent for a whole second, never done: the headers' deadline, not the silence
    timeout, ends the request (a byte every 0.1 s would otherwise hold it for ever)."""
    monkeypatch.setenv("VITKIT_HTTP_TIMEOUT", "1")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(b"HTTP/1.0 200 OK\r\nX-Drip: ")
            while not stop.wait(0.1):
                try:
                    connection.sendall(b".")
                except OSError:  # the reader gave up and closed
                    return

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/index.json"
    start = time.monotonic()
    try:
        with pytest.raises(DataError) as error:
            ShardDataset(url)
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
    assert time.monotonic() - start < 5
    assert_names(error, url, "headers within 1 s")


def test_a_shard_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    path = tmp_path / "shard-0.tar"
    os.mkfifo(path)
    with pytest.raises(DataError) as error:
        list(ShardDataset(str(path)))
    assert_names(error, path, "is a FIFO, not a regular file")


# --- 9. Shards: keys, members and labels ---------------------------------------------------------


def test_a_key_that_comes_back_after_other_samples_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shard-0.tar"
    members = [member("a.png", png()), member("a.cls", b"0"), member("b.png", png()),
               member("b.cls", b"1"), member("a.jpg", png()), member("a.cls", b"1")]  # fmt: skip
    path.write_bytes(tar_bytes(members))
    with pytest.raises(DataError) as error:
        list(ShardDataset(str(path)))
    assert_names(error, path, "key 'a' comes again", "a.jpg")


def test_a_file_twice_in_one_sample_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shard-0.tar"
    path.write_bytes(tar_bytes([member("a.png", png()), member("a.png", png(value=9))]))
    with pytest.raises(DataError) as error:
        list(ShardDataset(str(path)))
    assert_names(error, path, "sample 'a' holds 'png' twice")


@pytest.mark.parametrize("label", [b"-1", b"1.5", b"one", b"9" * 5000, b"", b"\x00"])
def test_a_label_that_is_no_class_number_is_named(tmp_path: Path, label: bytes) -> None:
    path = tmp_path / "shard-0.tar"
    path.write_bytes(tar_bytes([member("a.png", png()), member("a.cls", label)]))
    with pytest.raises(DataError) as error:
        list(ShardDataset(str(path)))
    assert_names(error, path, "sample a: cls is no class number")


def test_a_member_claiming_more_than_an_image_may_take_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "shard-0.tar"
    path.write_bytes(
        tar_bytes([member("a.png", png(), size=1 << 40)], tar_format=tarfile.GNU_FORMAT)
    )
    with pytest.raises(DataError) as error:
        list(ShardDataset(str(path)))
    assert_names(error, path, "a.png", "1,099,511,627,776 bytes", PIXEL_LIMIT_VARIABLE)


def hangs_without_end_guard(name: str) -> bytes:
    """A tar whose first member claims 10**15 bytes in a PAX header but holds 3: tarfile skips
    towards its end one empty read at a time, for ever, unless the reader stops it."""
    claiming = member(name, b"abc", pax_headers={"size": str(10**15)})
    return tar_bytes([claiming, member("train/cat/b.png", png())])


@pytest.mark.parametrize("reader", ["shards", "image-archive"])
def test_a_member_claiming_more_than_the_archive_holds_ends_promptly(
    tmp_path: Path, reader: str
) -> None:
    path = tmp_path / "data.tar"
    path.write_bytes(hangs_without_end_guard("train/cat/README"))  # a name neither reads
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        read_shards(str(path)) if reader == "shards" else decode_image_archive(str(path))
    assert time.monotonic() - start < 10
    assert_names(error, path, "ends inside a member")


@pytest.mark.parametrize("reader", ["shards", "image-archive"])
def test_a_malformed_sparse_map_is_named(tmp_path: Path, reader: str) -> None:
    """tarfile raises a bare ValueError on a GNU sparse 1.0 map that is not numbers."""
    sparse = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "10"}
    path = tmp_path / "data.tar"
    path.write_bytes(tar_bytes([member("train/cat/a.png", b"zz", pax_headers=sparse)]))
    with pytest.raises(DataError) as error:
        read_shards(str(path)) if reader == "shards" else decode_image_archive(str(path))
    assert_names(error, path, "not enough values to unpack")


# --- 9. Image-folder archives: member names, links and sizes -------------------------------------

CLIMBING_NAMES = ["train/../x.jpg", "train/cat/../../../x.png", "/train/cat/a.png",
                  "./train/cat/../../../etc/a.png"]  # fmt: skip


@pytest.mark.parametrize("name", CLIMBING_NAMES)
def test_archive_members_that_climb_out_are_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "data.tar"
    path.write_bytes(tar_bytes([member("train/dog/a.png", png()), member(name, png())]))
    with pytest.raises(DataError) as error:
        scan(path, "train")
    assert_names(error, path, repr(name), "outside the archive")


def test_links_in_an_archive_are_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "secret.png"
    target.write_bytes(png(value=200))
    path = tmp_path / "data.tar"
    links = [
        member("train/cat/link.png", type=tarfile.SYMTYPE, linkname=str(target)),
        member("train/cat/hard.png", type=tarfile.LNKTYPE, linkname="train/cat/a.png"),
    ]
    path.write_bytes(tar_bytes([member("train/cat/a.png", png()), *links]))
    source = scan(path, "train")
    assert [name for name, _ in source.entries] == ["train/cat/a.png"]
    assert [int(image[0, 0, 0]) for image, _ in iter_decoded(source)] == [0]


def test_a_member_too_large_is_one_bad_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PIXEL_LIMIT_VARIABLE, "1")  # members of up to 16 MiB + 8 bytes
    path = tmp_path / "data.tar"
    large = member("train/cat/b.png", bytes((16 << 20) + 9))
    path.write_bytes(tar_bytes([member("train/cat/a.png", png((1, 1))), large]))
    with pytest.raises(DataError) as error:
        list(iter_decoded(scan(path, "train")))
    assert_names(error, path, "train/cat/b.png: 16,777,225 bytes", PIXEL_LIMIT_VARIABLE)
    with pytest.warns(UserWarning, match="skipped 1 unreadable images"):
        assert len(list(iter_decoded(scan(path, "train"), skip_bad=True))) == 1


def test_an_oversized_extended_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.tar"
    pax = member("././@PaxHeader", b"", type=tarfile.XHDTYPE, size=MAX_HEADER_BYTES + 1)
    path.write_bytes(tar_bytes([member("train/cat/a.png", png()), pax]))
    with pytest.raises(DataError) as error:
        scan(path, "train")
    assert_names(error, path, "extended header claims 1,048,577 bytes")


# --- 9. Images: one pixel limit, checked before decoding, for every reader -----------------------


def image_in(reader: str, tmp_path: Path, image: bytes) -> tuple[Callable[[], object], Path]:
    """A call that reads `image` through `reader`, and the file its errors must name."""
    if reader == "file":
        path = tmp_path / "image.png"
        path.write_bytes(image)
        return lambda: load_rgb(path), path
    if reader == "image-archive":
        path = tmp_path / "data.tar"
        path.write_bytes(tar_bytes([member("train/cat/image.png", image)]))
        return lambda: list(iter_decoded(scan(path, "train"))), path
    path = tmp_path / "shard-0.tar"
    path.write_bytes(tar_bytes([member("image.png", image), member("image.cls", b"0")]))
    return lambda: list(ShardDataset(str(path))), path


READERS = ["file", "image-archive", "shard"]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("size", [(9000, 9000), (100_000, 100_000)])
def test_an_image_claiming_too_many_pixels_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str, size: tuple[int, int]
) -> None:
    monkeypatch.delenv(PIXEL_LIMIT_VARIABLE, raising=False)
    read, path = image_in(reader, tmp_path, png_claiming(*size))
    with pytest.raises(DataError) as error:
        read()
    # Above Pillow's own limit (about 179 million pixels) Pillow refuses first, on opening.
    assert_names(error, path, f"{size[0] * size[1]:,}" if size[0] < 10_000 else "10000000000")
    assert_names(error, "limit", PIXEL_LIMIT_VARIABLE)


@pytest.mark.parametrize("reader", READERS)
def test_the_pixel_limit_is_set_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    read, path = image_in(reader, tmp_path, png((20, 10)))
    monkeypatch.setenv(PIXEL_LIMIT_VARIABLE, "199")
    with pytest.raises(DataError) as error:
        read()
    assert_names(error, path, "20x10 is 200 pixels, above the limit of 199")
    monkeypatch.setenv(PIXEL_LIMIT_VARIABLE, "200")
    read()


@pytest.mark.parametrize("value", ["0", "-5", "1e6", "lots", "²"])
def test_a_bad_pixel_limit_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    read, _ = image_in("file", tmp_path, png())
    monkeypatch.setenv(PIXEL_LIMIT_VARIABLE, value)
    with pytest.raises(DataError) as error:
        read()
    assert_names(error, PIXEL_LIMIT_VARIABLE, repr(value))


@pytest.mark.parametrize("shape_known", [True, False], ids=["before-decoding", "at-first-image"])
def test_a_cache_larger_than_the_disk_is_refused_before_writing(
    tmp_path: Path, shape_known: bool
) -> None:
    decoded: list[int] = []

    class Boastful:
        """Claims more 64x64 images than any disk holds, and holds two (so that a cache without
        the check fails this test instead of filling the disk)."""

        classes = ("a",)
        skipped: dict[str, str] = {}
        sizes = None
        image_shape = (64, 64, 3) if shape_known else None

        def __len__(self) -> int:
            return 1 << 40

        def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
            for _ in range(2):
                decoded.append(1)
                yield np.zeros((64, 64, 3), np.uint8), 0

    with pytest.raises(DataError) as error:
        cached_dataset({"source": "boastful"}, Boastful, tmp_path / "cache")
    assert_names(error, tmp_path / "cache", "12582912.0 GiB but the disk of", "smaller image_size")
    assert [path.suffix for path in (tmp_path / "cache").iterdir()] == [".lock"]
    assert len(decoded) == (0 if shape_known else 1)


# --- 10. Image folders: a split is a folder name, and nothing outside the folder is read --------


def image_tree(root: Path, classes: tuple[str, ...] = ("cat",)) -> Path:
    """`root/train/<class>/a.png` for each class; the root."""
    for name in classes:
        (root / "train" / name).mkdir(parents=True)
        (root / "train" / name / "a.png").write_bytes(png())
    return root


@pytest.mark.parametrize("split", ["/etc", "..", "../tree", "train/..", "", "a\0b"])
@pytest.mark.parametrize("form", ["folder", "cached-folder", "tar"])
def test_a_split_must_be_a_folder_name(tmp_path: Path, split: str, form: str) -> None:
    root = image_tree(tmp_path / "tree")
    if form == "tar":
        root = tmp_path / "data.tar"
        root.write_bytes(tar_bytes([member("train/cat/a.png", png())]))
    with pytest.raises(DataError) as error:
        if form == "cached-folder":
            cached_image_folder(root, split, cache_dir=tmp_path / "cache")
        else:
            scan(root, split)
    assert_names(error, root, repr(split), "not a folder name")


def test_the_whole_tree_split_reads_the_folder_itself_and_no_archive(tmp_path: Path) -> None:
    """Split "." names the folder's own class folders (a tree without splits): what lies
    within it, as any split; an archive, read as a stream, is refused in one line."""
    root = image_tree(tmp_path / "tree")
    assert scan(root, ".").classes == ("train",)
    archive = tmp_path / "data.tar"
    archive.write_bytes(tar_bytes([member("cat/a.png", png())]))
    with pytest.raises(DataError) as error:
        scan(archive, ".")
    assert_names(error, archive, "without splits is read from a folder")


@pytest.mark.parametrize("link", ["class-folder", "split-folder", "image"])
def test_links_out_of_an_image_folder_are_refused(tmp_path: Path, link: str) -> None:
    """A class folder, split folder or image linked outside the root (here a folder beside it,
    as it could be /usr/share) is refused, naming the link; links within the root are read."""
    root = image_tree(tmp_path / "tree")
    outside = image_tree(tmp_path / "elsewhere") / "train" / "cat"
    (root / "train" / "inner").symlink_to(root / "train" / "cat")  # within: fine
    (root / "train" / "cat" / "inner.png").symlink_to(root / "train" / "cat" / "a.png")
    assert len(scan(root, "train").entries) == 4
    named = {
        "class-folder": root / "train" / "dog",
        "split-folder": root / "train",
        "image": root / "train" / "cat" / "b.png",
    }[link]
    if link == "split-folder":
        (root / "train").rename(tmp_path / "moved")
        named = root / "train" / "cat"
        (root / "train").symlink_to(tmp_path / "moved")
    else:
        named.symlink_to(outside if link == "class-folder" else outside / "a.png")
    with pytest.raises(DataError) as error:
        scan(root, "train")
    assert_names(error, named, "outside the dataset's folder")


def test_a_dangling_link_is_one_unreadable_image(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "tree")
    link = root / "train" / "cat" / "gone.png"
    link.symlink_to(root / "train" / "deleted.png")
    with pytest.raises(DataError) as error:
        cached_image_folder(root, "train", cache_dir=tmp_path / "cache")
    assert_names(error, link, "no such file")
    with pytest.warns(UserWarning, match="skipped 1 unreadable images"):
        dataset = cached_image_folder(root, "train", cache_dir=tmp_path / "cache", skip_bad=True)
    assert len(dataset) == 1


LATIN_1 = os.fsdecode(b"caf\xe9")  # "café" in Latin-1: not UTF-8, so Python holds a surrogate


@pytest.mark.parametrize("form", ["folder", "tar"])
def test_a_class_folder_named_in_latin_1_is_refused(tmp_path: Path, form: str) -> None:
    root = image_tree(tmp_path / "tree", ("cat", LATIN_1))
    if form == "tar":
        root = tmp_path / "data.tar"
        images = [member(f"train/{name}/a.png", png()) for name in ("cat", LATIN_1)]
        root.write_bytes(tar_bytes(images, tar_format=tarfile.GNU_FORMAT))
    with pytest.raises(DataError) as error:
        cached_image_folder(root, "train", cache_dir=tmp_path / "cache")
    assert_names(error, root, r"class folder b'caf\xe9' is not UTF-8")
    str(error.value).encode()  # printable as it is


def test_an_image_named_in_latin_1_is_read(tmp_path: Path) -> None:
    root = image_tree(tmp_path / "tree")
    (root / "train" / "cat" / f"{LATIN_1}.png").write_bytes(png(value=9))
    dataset = cached_image_folder(root, "train", cache_dir=tmp_path / "cache")
    assert sorted(int(image[0, 0, 0]) for image in dataset.images) == [0, 9]


def test_an_extreme_aspect_ratio_keeps_a_pixel_on_its_short_side(tmp_path: Path) -> None:
    """A 1x100000 strip fitted within 32x32 (data_size=32 with max_tokens) is 1x32, not 0x32."""
    root = tmp_path / "tree"
    for name, size in (("wide", (100_000, 1)), ("tall", (1, 100_000))):
        (root / "train" / name).mkdir(parents=True)
        Image.new("RGB", size, (200, 100, 50)).save(root / "train" / name / "a.png")
    decoded = iter_decoded(scan(root, "train"), image_size=(32, 32), fit=WITHIN)
    images = [image for image, _ in decoded]
    assert decoded.sizes == [(32, 1), (1, 32)]  # tall, wide: classes in sorted order
    for image in images:
        assert image.shape == (32, 32, 3)
        np.testing.assert_array_equal(image, np.full((32, 32, 3), (200, 100, 50), np.uint8))


def test_a_cache_of_canvases_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three 4x4 images on 2048x2048 canvases take 36 MiB: with 10 MiB free the cache is refused
    before any image is decoded or a byte written (200 on 8192x8192 canvases took 37.5 GiB)."""
    root = image_tree(tmp_path / "tree", ("a", "b", "c"))
    monkeypatch.setattr("vitkit.resources.free_disk_bytes", lambda path: 10 << 20)
    decoded = []
    monkeypatch.setattr("vitkit.data.folder._decode_chunk", lambda *args: decoded.append(args))
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as error:
        cached_image_folder(root, "train", cache_dir=cache, image_size=(2048, 2048),
                            fit=WITHIN)  # fmt: skip
    assert_names(error, cache, "caching 3 images of 2048x2048x3 takes 36.0 MiB", "10.0 MiB free")
    assert decoded == []
    assert [path.suffix for path in cache.iterdir()] == [".lock"]


# --- 11. Images are decoded as their files mean them, whatever the reader -----------------------


def decoded_by(reader: str, tmp_path: Path, data: bytes, suffix: str) -> np.ndarray:
    """The (H, W, 3) pixels `reader` decodes from an image file holding `data`."""
    if reader == "file":
        path = tmp_path / f"image{suffix}"
        path.write_bytes(data)
        return np.asarray(load_rgb(path))
    if reader == "folder":
        path = tmp_path / "tree" / "train" / "cat" / f"image{suffix}"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        source = scan(tmp_path / "tree", "train")
    else:
        path = tmp_path / "data.tar"
        path.write_bytes(tar_bytes([member(f"train/cat/image{suffix}", data)]))
        source = scan(path, "train")
    [(image, _)] = list(iter_decoded(source))
    return image


def encoded(image: Image.Image, suffix: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=Image.registered_extensions()[suffix], **options)
    return buffer.getvalue()


def gray_as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


DECODING_READERS = ["file", "folder", "image-archive"]


@pytest.mark.parametrize("reader", DECODING_READERS)
def test_16_bit_grayscale_keeps_its_top_8_bits(tmp_path: Path, reader: str) -> None:
    samples = np.random.default_rng(0).integers(0, 1 << 16, (12, 10), dtype=np.uint16)
    samples[0, :4] = [0, 255, 256, 65535]
    data = encoded(Image.fromarray(samples), ".png")  # a 16-bit grayscale PNG
    expected = gray_as_rgb((samples >> 8).astype(np.uint8))
    np.testing.assert_array_equal(decoded_by(reader, tmp_path, data, ".png"), expected)


@pytest.mark.parametrize("reader", DECODING_READERS)
def test_float_samples_are_intensities_in_0_1(tmp_path: Path, reader: str) -> None:
    samples = np.random.default_rng(0).random((12, 10), dtype=np.float32)
    samples[0, :6] = [0.0, 1.0, 0.5, -0.25, 7.0, np.nan]  # out of range: clipped; NaN: 0
    data = encoded(Image.fromarray(samples), ".tif")  # a float32 TIFF, Pillow's mode F
    scaled = np.clip(np.rint(np.nan_to_num(samples) * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(decoded_by(reader, tmp_path, data, ".tif"), gray_as_rgb(scaled))
    assert scaled[0, :6].tolist() == [0, 255, 128, 0, 255, 0]


# EXIF orientation -> what turns the stored pixels upright (the EXIF 2.3 tag 0x0112, as numpy).
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # a phone held upright: stored sideways, turned clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("reader", DECODING_READERS)
@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_turns_the_image_upright(
    tmp_path: Path, reader: str, orientation: int, suffix: str
) -> None:
    stored = np.random.default_rng(orientation).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(Image.fromarray(stored), suffix, exif=exif)
    with Image.open(io.BytesIO(data)) as image:  # Pillow does not turn on opening
        stored = np.asarray(image.convert("RGB"))  # the JPEG's own decoding of the pixels
    expected = UPRIGHT[orientation](stored)
    np.testing.assert_array_equal(decoded_by(reader, tmp_path, data, suffix), expected)


# --- 9. CIFAR batches: every field's type, shape and range ---------------------------------------

BAD_BATCHES = {
    "float-labels": ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1.7, 2.2]},
                     "b'labels'[0] is 1.7, not a class number"),
    "bool-labels": ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [True, False]},
                    "b'labels'[0] is True, not a class number"),
    "float-array-labels": ({b"data": np.zeros((2, 3072), np.uint8),
                            b"labels": np.array([1.0, 2.0])}, "but a float64 array"),
    "2d-labels": ({b"data": np.zeros((2, 3072), np.uint8), b"labels": np.zeros((2, 1), np.int64)},
                  "b'labels' is not a list of class numbers but a int64 array"),
    "text-labels": ({b"data": np.zeros((2, 3072), np.uint8), b"labels": b"01"},
                    "b'labels' is not a list of class numbers but a bytes"),
    "huge-label": ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [2**70]},
                   "b'labels'[0] is 1180591620717411303424"),
    "negative-label": ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [-1]},
                       "b'labels'[0] is -1"),
    "label-10": ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "b'labels'[0] is 10"),
    "no-labels": ({b"data": np.zeros((1, 3072), np.uint8)}, "b'labels' is not a list of class "
                  "numbers but missing"),
    "no-data": ({b"labels": [0]}, "b'data' is not a 2-d uint8 array but missing"),
    "float-data": ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]},
                   "b'data' is not a 2-d uint8 array but a float32 array"),
    "flat-data": ({b"data": np.zeros(3072, np.uint8), b"labels": [0]}, "of shape (3072,)"),
    "count-differs": ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]},
                      "3 images but 2 b'labels'"),
    "not-a-dict": ([np.zeros((1, 3072), np.uint8), [0]], "holds a list, not a CIFAR batch dict"),
    "object-array": ({b"data": np.array([None] * 3072, dtype=object), b"labels": [0]},
                     "refusing dtype object"),
    "structured-array": ({b"data": np.zeros(2, dtype=[("r", "u1"), ("g", "u1")]),
                          b"labels": [0]}, "refusing dtype"),
}  # fmt: skip


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    root = tmp_path / "cifar"
    write_cifar10(root)
    return root


@pytest.mark.parametrize("kind", BAD_BATCHES)
def test_bad_cifar_batch_fields_are_named(cifar_root: Path, kind: str) -> None:
    content, expected = BAD_BATCHES[kind]
    batch = cifar_root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(DataError) as error:
        load_cifar("cifar10", split="test", root=cifar_root)
    assert_names(error, batch, expected)


def test_integer_array_labels_are_read(cifar_root: Path) -> None:
    batch = cifar_root / "cifar-10-batches-py" / "test_batch"
    labels = np.array([3, 9], np.uint8)
    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}))
    np.testing.assert_array_equal(
        load_cifar("cifar10", split="test", root=cifar_root).labels, labels
    )


BAD_METAS = {
    "nine-names": ({b"label_names": [b"n"] * 9}, "lists 9 class names, not 10"),
    "not-utf8": ({b"label_names": [b"\xff"] * 10}, "not UTF-8"),
    "text-names": ({b"label_names": ["airplane"] * 10}, "no list of class names"),
    "no-names": ({b"num_vis": 3072}, "no list of class names"),
}


@pytest.mark.parametrize("kind", BAD_METAS)
def test_bad_cifar_meta_fields_are_named(cifar_root: Path, kind: str) -> None:
    content, expected = BAD_METAS[kind]
    meta = cifar_root / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(DataError) as error:
        load_cifar("cifar10", split="test", root=cifar_root)
    assert_names(error, meta, "b'label_names'", expected)


class Reduce:
    """Pickles as `function(*arguments)`, then `state` handed to the result (BUILD)."""

    def __init__(self, function: object, arguments: tuple, state: object = None) -> None:
        self.reduced = (function, arguments) if state is None else (function, arguments, state)

    def __reduce__(self) -> tuple:
        return self.reduced


def batch_claiming(value: object) -> bytes:
    return pickle.dumps({b"data": value, b"labels": []}, protocol=4)


# Pickles of a few dozen bytes that ask the unpickler or numpy for gigabytes.
MEMORY_CLAIMS = {
    "memo-slot": b"\x80\x02}r" + struct.pack("<I", 0x7FFFFFFF) + b".",
    "bytes-length": b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"x.",
    "array-shape": batch_claiming(Reduce(NUMPY_RECONSTRUCT, (np.ndarray, (1 << 40,), b"b"))),
    "ndarray-call": batch_claiming(Reduce(np.ndarray, ((1 << 40,), "u1"))),
    "object-array-state": batch_claiming(
        Reduce(
            NUMPY_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1 << 32,), np.dtype("O"), False, [])
        )
    ),
}


@pytest.mark.usefixtures("child")
def test_pickles_claiming_memory_are_refused_under_a_ceiling(tmp_path: Path) -> None:
    roots = []
    for kind, content in MEMORY_CLAIMS.items():
        root = tmp_path / kind
        write_cifar10(root)
        (root / "cifar-10-batches-py" / "test_batch").write_bytes(content)
        roots.append(root)
    records = read_each_under_ceiling("test_hostile_data:read_cifar_test_split", roots)
    assert not not_refused_naming_their_file(records)


def cifar_archive(tmp_path: Path, extra: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """The released archive of a synthetic CIFAR-10, with `extra` members appended."""
    root = tmp_path / "cifar"
    write_cifar10(root)
    archive = pack(root, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    with tarfile.open(archive) as tar:
        members = [(info, tar.extractfile(info).read() if info.isfile() else b"") for info in tar]
    archive.write_bytes(gzipped(tar_bytes(members + extra, tar_format=tarfile.GNU_FORMAT)))
    return archive


def test_only_the_cifar_files_are_extracted(tmp_path: Path) -> None:
    extra = [member("cifar-10-batches-py/run.sh", b"rm -rf ~"), member("elsewhere/x", b"x"),
             member("cifar-10-batches-py/sub/deep", b"x")]  # fmt: skip
    archive = cifar_archive(tmp_path, extra)
    assert load_cifar("cifar10", split="test", root=archive.parent).classes == CIFAR10_CLASSES
    assert sorted(path.name for path in archive.parent.iterdir()) == [
        "cifar-10-batches-py", "cifar-10-python.tar.gz"
    ]  # fmt: skip
    assert sorted(path.name for path in (archive.parent / "cifar-10-batches-py").iterdir()) == [
        "batches.meta", *(f"data_batch_{n}" for n in range(1, 6)), "test_batch"
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["too-large", "link"])
def test_a_cifar_file_too_large_or_linked_is_refused(tmp_path: Path, kind: str) -> None:
    name = "cifar-10-batches-py/test_batch"
    if kind == "too-large":
        extra = [member(name, b"", size=1 << 40)]
    else:
        extra = [member(name, type=tarfile.SYMTYPE, linkname="/etc/passwd")]
    archive = cifar_archive(tmp_path, extra)
    with pytest.raises(DataError) as error:
        load_cifar("cifar10", split="test", root=archive.parent)
    assert_names(error, archive, repr(name))
    assert sorted(path.name for path in archive.parent.iterdir()) == ["cifar-10-python.tar.gz"]


# --- Memory under a ceiling: bombs that cost megabytes on disk ----------------------------------


@pytest.mark.usefixtures("child")
@pytest.mark.slow
def test_archive_bombs_are_refused_under_a_ceiling(tmp_path: Path) -> None:
    """A PAX header that claims (and decompresses to) 3 GiB, which tarfile would read whole, and
    20 images of 64 megapixels, 192 MiB each decoded, that a chunk of decoding held all at once."""
    header = member("././@PaxHeader", type=tarfile.XHDTYPE, size=3 << 30)[0]
    bomb = header.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    (tmp_path / "header.tar.gz").write_bytes(gzip_of_zeros_after(bomb, 3 << 30))
    paths = [tmp_path / "header.tar.gz"]
    big = io.BytesIO()
    Image.new("RGB", (8192, 8192)).save(big, format="PNG", compress_level=1)
    images = [member(f"train/cat/{n:02d}.png", big.getvalue()) for n in range(20)]
    (tmp_path / "pixels.tar").write_bytes(tar_bytes(images))
    paths.append(tmp_path / "pixels.tar")
    records = read_each_under_ceiling("test_hostile_data:decode_image_archive", paths)
    assert not crashes(records)
    outcomes = {Path(record["path"]).name: record["outcome"] for record in records}
    assert outcomes == {"header.tar.gz": "refused", "pixels.tar": "ok"}
    assert "extended header claims 3,221,225,472 bytes" in records[0]["message"]


# --- Fuzzing: hypothesis writes the files, one child process reads them all ---------------------

EXAMPLES = 200  # per kind of file; the same ones on every run (derandomized)


def examples(strategy: st.SearchStrategy, count: int = EXAMPLES) -> list:
    """`count` examples of `strategy`, generated without running any test on them."""
    found = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def collect(example: object) -> None:
        found.append(example)

    collect()
    return found


def write_distinct(folder: Path, contents: list[tuple[str, bytes]]) -> list[Path]:
    """Each distinct (file name, content) once, in a folder of its own under `folder`."""
    paths = {}
    for name, content in contents:
        digest = hashlib.sha256(name.encode() + b"\0" + content).hexdigest()[:16]
        path = folder / digest / name
        if path not in paths:
            path.parent.mkdir(parents=True)
            path.write_bytes(content)
            paths[path] = None
    return list(paths)


def assert_no_crash(records: list[dict]) -> None:
    """No reader raised anything but a VitkitError, and both outcomes occurred (the corpus holds
    readable files as well as bad ones, so the reader was really exercised)."""
    assert not crashes(records), crashes(records)[:3]
    assert {record["outcome"] for record in records} == {"ok", "refused"}


JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
                | st.text(max_size=12))  # fmt: skip
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children)
    ),
    max_leaves=10,
)
SHARD_NAMES = [
    "shard-0.tar",
    "./shard-0.tar",
    "sub/../shard-0.tar",
    "pipe:touch MARKER",
    "/etc/passwd",
    "../shard-0.tar",
    "file:///etc/passwd",
    "http://127.0.0.1:9/x.tar",
    "//host/x.tar",
    "",
    ".",
    "shard-0.tar\x00",
    "%2e%2e/x.tar",
    "shard-{0..1}.tar",
]
COUNTS = (st.sampled_from([0, 1, 2, -1, 1.0, True, "1", 2**63, float("inf"), float("nan")])
          | JSON_SCALARS)  # fmt: skip


def index_shaped(shards: object, classes: object, total: object) -> dict:
    """An index; total None stands for the sum of the counts, so that some pass that check."""
    if total is None and isinstance(shards, list):
        counts = [entry.get("samples") for entry in shards if isinstance(entry, dict)]
        total = sum(count for count in counts if type(count) is int)
    return {"shards": shards, "classes": classes, "total": total}


INDEX_SHAPED = st.builds(
    index_shaped,
    st.lists(
        st.fixed_dictionaries({"name": st.sampled_from(SHARD_NAMES), "samples": COUNTS})
        | st.fixed_dictionaries({"name": st.text(max_size=20), "samples": COUNTS})
        | JSON_VALUES,
        max_size=4,
    )
    | JSON_VALUES,
    st.lists(st.sampled_from(["a", "b"]) | JSON_SCALARS, max_size=3) | JSON_VALUES,
    st.none() | COUNTS,
)


@pytest.mark.usefixtures("child")
def test_fuzzed_shard_indexes_are_refused_or_read(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    contents = []
    deep = st.integers(1, 200_000).map(lambda depth: b"[" * depth + b"]" * depth)
    for example in examples(INDEX_SHAPED | JSON_VALUES | st.binary(max_size=200) | deep):
        if isinstance(example, bytes):
            contents.append(("index.json", example))
        else:
            text = json.dumps(example).replace("MARKER", str(marker))
            contents.append(("index.json", text.encode()))
    contents.append(("index.json", index([("shard-0.tar", 1)])))  # one that reads
    paths = write_distinct(tmp_path / "corpus", contents)
    for path in paths:
        (path.parent / "shard-0.tar").write_bytes(shard({"a": 0}))
    records = read_each_under_ceiling("test_hostile_data:read_shards", paths)
    assert_no_crash(records)
    assert not marker.exists()


MEMBER_NAMES = ["train/cat/a.png", "train/dog/b.png", "train/../x.jpg", "/train/cat/c.png",
                "train/cat/../../d.png", "./train/cat/e.png", "train", "train/cat", "..", "/", "",
                "k.png", "k.cls", "j.png", "j.cls", "train/cat/" + "x" * 200 + ".png",
                "train/cat/.png", "train/cat/a", "a.b.c"]  # fmt: skip
MEMBER_TYPES = [
    tarfile.REGTYPE,
    tarfile.AREGTYPE,
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.CHRTYPE,
    tarfile.FIFOTYPE,
    tarfile.CONTTYPE,
    tarfile.GNUTYPE_SPARSE,
    tarfile.XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    b"Z",
]
MEMBER_CONTENTS = [png(), png()[:40], png_claiming(9000, 9000), png_claiming(1, 1), b"0", b"-1",
                   b"1.5", b"", b"path=../../x\n", b"30 size=99999999999999999999\n"]  # fmt: skip
MEMBERS = st.tuples(
    st.sampled_from(MEMBER_NAMES)
    | st.tuples(st.sampled_from(["train", "test", "..", ".", "", "/train"]),
                st.sampled_from(["cat", "dog", "..", "", "cat/sub"]),
                st.text(alphabet="k.", max_size=3),
                st.sampled_from([".png", ".cls", ".jpg", ".PNG", ""]))
    .map(lambda parts: "/".join(parts[:3]) + parts[3])
    | st.text(max_size=12),
    st.sampled_from(MEMBER_TYPES),
    st.sampled_from(MEMBER_CONTENTS) | st.binary(max_size=300),
    st.none() | st.sampled_from([0, 511, 513, 1 << 33, 10**15]) | st.integers(0, 5000),
    st.sampled_from(MEMBER_NAMES),
)  # fmt: skip
VALID_TREE = tar_bytes([member("train/cat/a.png", png()), member("train/dog/b.png", png((4, 4), 9)),
                        member("k.png", png()), member("k.cls", b"1")])  # fmt: skip


def header_offsets(archive: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return [info.offset for info in tar]


def with_checksums(archive: bytearray, offsets: list[int]) -> bytearray:
    """`archive` with the checksum of each header at `offsets` recomputed, so that an edited
    header is parsed rather than refused at its checksum."""
    for offset in offsets:
        block = archive[offset : offset + 512]
        checksum = 256 + sum(block[:148]) + sum(block[156:])
        archive[offset + 148 : offset + 156] = b"%06o\0 " % checksum
    return archive


def build_archive(example: tuple) -> tuple[str, bytes]:
    """(file name, bytes) of a generated archive: members, a mutated valid one, or noise."""
    kind, *rest = example
    if kind == "members":
        members, tar_format, gzip, cut = rest
        parts = []
        for name, member_type, content, claim, linkname in members:
            fields = {"type": member_type, "linkname": linkname}
            if claim is not None:
                fields["size"] = claim
            info, data = member(name, content, **fields)
            try:
                parts.append(tar_bytes([(info, data)], tar_format=tar_format)[: -2 * 512])
            except ValueError:  # a field the format cannot hold
                continue
        data = (b"".join(parts) + bytes(1024))[:cut]
    elif kind == "mutated":
        edits, cut, gzip = rest
        mutable = bytearray(VALID_TREE)
        for position, value in edits:
            mutable[position % len(mutable)] = value
        data = bytes(with_checksums(mutable, header_offsets(VALID_TREE))[:cut])
    else:
        data, gzip = rest[0], False
    return ("data.tar.gz", gzipped(data)) if gzip else ("data.tar", data)


ARCHIVES = (
    st.tuples(st.just("members"), st.lists(MEMBERS, max_size=6),
              st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]), st.booleans(),
              st.none() | st.integers(0, 4096))
    | st.tuples(st.just("mutated"), st.lists(st.tuples(st.integers(0, len(VALID_TREE)),
                                                        st.integers(0, 255)), max_size=8),
                st.none() | st.integers(0, len(VALID_TREE)), st.booleans())
    | st.tuples(st.just("noise"), st.binary(max_size=2048))
)  # fmt: skip


@pytest.mark.usefixtures("child")
@pytest.mark.parametrize("reader", ["read_image_archive", "read_shards"])
def test_fuzzed_archives_are_refused_or_read(tmp_path: Path, reader: str) -> None:
    contents = [build_archive(example) for example in examples(ARCHIVES)]
    contents.append(("data.tar", VALID_TREE))
    paths = write_distinct(tmp_path / "corpus", contents)
    records = read_each_under_ceiling(f"test_hostile_data:{reader}", paths)
    assert_no_crash(records)
    # Nothing was written beside the corpus but the cache, nor added to the corpus.
    assert {path.name for path in tmp_path.iterdir()} <= {"corpus", "home"}
    assert sorted((tmp_path / "corpus").rglob("*.tar*")) == sorted(paths)


def minimal_cifar(test_batch: bytes, meta: bytes | None = None) -> list[tuple[str, bytes]]:
    names = [name.encode() for name in CIFAR10_CLASSES]
    meta = meta if meta is not None else py2_pickle({b"label_names": names})
    folder = "cifar-10-batches-py"
    return [(f"{folder}/test_batch", test_batch), (f"{folder}/batches.meta", meta)]


VALID_BATCH = py2_pickle({b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072),
                          b"labels": [3, 9], b"batch_label": b"test"})  # fmt: skip
SCALARS = st.none() | st.booleans() | st.integers(-3, 2**70) | st.floats() | st.binary(max_size=4)
ARRAYS = hnp.arrays(
    st.sampled_from([np.uint8, np.int64, np.float32, np.bool_, np.int8, ">i4"]),
    hnp.array_shapes(min_dims=0, max_dims=2, max_side=6),
) | st.builds(lambda n, width: np.zeros((n, width), np.uint8), st.integers(0, 3),
              st.sampled_from([3072, 3071, 0]))  # fmt: skip
BATCH_VALUES = SCALARS | ARRAYS | st.lists(SCALARS | st.integers(0, 12), max_size=4)
BATCH_DICTS = st.dictionaries(
    st.sampled_from([b"data", b"labels", b"label_names", b"batch_label", "data", "labels", 1]),
    BATCH_VALUES,
    max_size=4,
)
# Where each opcode's argument starts in VALID_BATCH: overwriting one there changes a length, a
# memo slot or a value while leaving the pickle's structure in place.
ARGUMENTS = [position + 1 for _, _, position in pickletools.genops(VALID_BATCH)]
PICKLES = (
    st.tuples(BATCH_DICTS | BATCH_VALUES, st.integers(0, 5)).map(lambda p: pickle.dumps(*p))
    | st.tuples(st.sampled_from(ARGUMENTS), st.binary(min_size=1, max_size=8))
    .map(lambda p: VALID_BATCH[: p[0]] + p[1] + VALID_BATCH[p[0] + len(p[1]) :])
    | st.tuples(st.lists(st.tuples(st.integers(0, len(VALID_BATCH)), st.integers(0, 255)),
                         min_size=1, max_size=6), st.none() | st.integers(0, len(VALID_BATCH)))
    .map(lambda p: mutate(VALID_BATCH, *p))
    | st.binary(max_size=300).map(lambda noise: b"\x80\x02" + noise)
)  # fmt: skip


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    mutable = bytearray(data)
    for position, value in edits:
        mutable[position % len(mutable)] = value
    return bytes(mutable[:cut])


@pytest.mark.usefixtures("child")
def test_fuzzed_cifar_files_are_refused_or_read(tmp_path: Path) -> None:
    contents = []
    for fuzzed, into_meta in examples(st.tuples(PICKLES, st.booleans())):
        files = minimal_cifar(VALID_BATCH, fuzzed) if into_meta else minimal_cifar(fuzzed)
        contents.append(("files", json.dumps([(name, data.hex()) for name, data in files])))
    contents.append(("files", json.dumps([(n, d.hex()) for n, d in minimal_cifar(VALID_BATCH)])))
    roots = []
    for listing in dict.fromkeys(text for _, text in contents):
        root = tmp_path / "corpus" / hashlib.sha256(listing.encode()).hexdigest()[:16]
        for name, data in json.loads(listing):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(bytes.fromhex(data))
        roots.append(root)
    records = read_each_under_ceiling("test_hostile_data:read_cifar_test_split", roots)
    assert_no_crash(records)
