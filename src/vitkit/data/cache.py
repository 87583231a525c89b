"""Decode once, memory-map after: a dataset's pixels cached on disk as one raw uint8 array.

Decoding 50,000 JPEGs takes seconds and ImageNet's 1.3 million takes an hour, every epoch, on
every rank; reading a memory map takes nothing. A cache lives in `<cache_dir>/<key>/`:
    images.u8   raw (N, H, W, 3) uint8, C order, read back with np.memmap(mode="r")
    labels.npy  (N,) int64
    sizes.npy   (N, 2) int64, only for images kept at their aspect ratio on a canvas: each
                image's own (H, W) at the canvas's top left
    meta.json   shape, classes, sha256 of both files, the key it was built for, skipped images
It is built in a hidden partial folder `.<key>-*` and renamed into place, so a killed build never
leaves a cache that looks finished, and it is checked on every open: a damaged cache is rebuilt,
never used. What a killed build leaves is removed by the next build of any key in the cache dir.
Pixels take far more room than the files they come from (a 7 MB archive of PNGs can decode to
gigabytes, 200 CIFAR images on 8192x8192 canvases to 37.5 GiB), so a build that would not fit on
the cache's disk is refused before it writes: before it decodes, when the stream knows its size.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from vitkit.data.arrays import ArrayDataset
from vitkit.errors import DataError
from vitkit.io import read_capped, sha256_file, write_failure
from vitkit.resources import check_disk

# Bump when the layout changes: every key hashes it, so old caches are simply not found.
FORMAT_VERSION = 1
# meta.json holds the key, the class names and the skipped images' reasons: megabytes at most.
MOST_META_BYTES = 64 << 20
# A partial folder's name: "." + its key's folder name (`cache_path`) + "-" + mkdtemp's suffix.
_PARTIAL = re.compile(r"\.([0-9a-f]{24})-\w+")


class ImageStream(Protocol):
    """What a builder hands the cache: labelled images of one size, what it had to skip and,
    for images fitted within that size at their own aspect ratio, their sizes."""

    @property
    def classes(self) -> tuple[str, ...]: ...

    @property
    def skipped(self) -> Mapping[str, str]: ...  # image -> why; complete once iterated

    @property
    def sizes(self) -> Sequence[tuple[int, int]] | None: ...  # (H, W) on the canvas, or None

    @property
    def image_shape(self) -> tuple[int, ...] | None: ...  # of every image if known undecoded

    def __len__(self) -> int: ...  # images it will try, for the progress bar

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]: ...  # (H, W, 3) uint8, label


def cache_path(key: Mapping[str, object], cache_dir: str | Path) -> Path:
    """The folder that holds the cache for `key` (a JSON-serialisable description of the
    source, split and decoding options)."""
    text = json.dumps({"format": FORMAT_VERSION, **key}, sort_keys=True)
    return Path(cache_dir) / hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_dataset(
    key: Mapping[str, object],
    build: Callable[[], ImageStream],
    cache_dir: str | Path,
    *,
    verify: bool = True,
) -> ArrayDataset:
    """The dataset cached for `key`, calling `build` only when there is no valid cache yet.

    verify: checksum images.u8 on every open (about 1 s per GB); off, only its size is checked,
    for datasets too large to re-read at each start.
    One process builds a given key at a time (a lock file); the others wait and then open it.
    """
    directory = cache_path(key, cache_dir)
    if directory.is_dir():  # the common case, without taking the lock
        try:
            return _open(directory, key, verify=verify)
        except _Corrupt:
            pass  # decided again under the lock: another process may be replacing it
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        with _locked(directory.with_name(directory.name + ".lock")):
            if directory.is_dir():
                try:
                    return _open(directory, key, verify=verify)
                except _Corrupt as error:
                    warnings.warn(f"{directory}: cache corrupt ({error}), rebuilding", stacklevel=2)
                    shutil.rmtree(directory)
            _remove_stale_partials(directory)
            _build(directory, key, build())
            return _open(directory, key, verify=False)  # checksummed while it was written
    except OSError as error:  # a full disk, a file-size limit, a read-only cache folder
        raise DataError(
            f"{directory.parent}: cannot write the decoded-image cache: {write_failure(error)}; "
            "nothing was kept. Free space, or set VITKIT_HOME to a folder with room"
        ) from None


class _Corrupt(Exception):
    """A cache folder that must not be used; the message says what is wrong."""


def _open(directory: Path, key: Mapping[str, object], *, verify: bool) -> ArrayDataset:
    try:
        meta = json.loads(read_capped(directory / "meta.json", MOST_META_BYTES, error=DataError))
        if meta["key"] != json.loads(json.dumps({"format": FORMAT_VERSION, **key})):
            raise _Corrupt("it was built for another source")
        shape = tuple(meta["shape"])
        images_path = directory / "images.u8"
        if images_path.stat().st_size != int(np.prod(shape)):
            raise _Corrupt(f"images.u8 is not {shape} uint8")
        if sha256_file(directory / "labels.npy") != meta["labels_sha256"]:
            raise _Corrupt("labels.npy does not match its checksum")
        if verify and sha256_file(images_path) != meta["images_sha256"]:
            raise _Corrupt("images.u8 does not match its checksum")
        labels = np.load(directory / "labels.npy", allow_pickle=False)
        sizes = None
        if "sizes_sha256" in meta:
            if sha256_file(directory / "sizes.npy") != meta["sizes_sha256"]:
                raise _Corrupt("sizes.npy does not match its checksum")
            sizes = np.load(directory / "sizes.npy", allow_pickle=False)
        images = np.memmap(images_path, dtype=np.uint8, mode="r", shape=shape)
        return ArrayDataset(
            images=images, labels=labels, classes=tuple(meta["classes"]), sizes=sizes
        )
    except _Corrupt:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:  # missing or garbled files
        raise _Corrupt(f"{type(error).__name__}: {error}") from error


def _remove_stale_partials(directory: Path) -> None:
    """Delete the partial folders that killed builds left in the cache dir, of every key.

    A build holds its key's lock from before it makes its partial folder until that folder is
    renamed or removed, so a partial whose key's lock is free is stale, and the caller, building
    `directory`, holds that key's lock. A pid in the name could not tell as much: a cache dir may
    be shared by machines or containers that do not see each other's processes.
    """
    for partial in directory.parent.glob(".*-*"):
        match = _PARTIAL.fullmatch(partial.name)
        if match is None or not partial.is_dir():
            continue  # not a partial folder of this cache
        lock = directory.with_name(f"{match[1]}.lock")
        if match[1] == directory.name:
            shutil.rmtree(partial, ignore_errors=True)
        elif lock.is_file():
            with _locked(lock, wait=False) as held:
                if held:
                    shutil.rmtree(partial, ignore_errors=True)


def _build(directory: Path, key: Mapping[str, object], stream: ImageStream) -> None:
    """Write the cache into a temporary sibling folder, then rename it into place."""
    partial = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        shape, images_sha256, labels = _write_images(partial / "images.u8", stream, directory)
        np.save(partial / "labels.npy", np.asarray(labels, dtype=np.int64))
        meta = {
            "key": {"format": FORMAT_VERSION, **key},
            "shape": list(shape),
            "classes": list(stream.classes),
            "images_sha256": images_sha256,
            "labels_sha256": sha256_file(partial / "labels.npy"),
            "skipped": dict(stream.skipped),
        }
        written = ["labels.npy", "meta.json"]
        if stream.sizes is not None:
            np.save(partial / "sizes.npy", np.asarray(stream.sizes, dtype=np.int64).reshape(-1, 2))
            meta["sizes_sha256"] = sha256_file(partial / "sizes.npy")
            written.append("sizes.npy")
        (partial / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        for name in written:
            _fsync(partial / name)
        os.replace(partial, directory)  # atomic: the folder appears complete or not at all
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _write_images(
    path: Path, stream: ImageStream, directory: Path
) -> tuple[tuple[int, ...], str, list[int]]:
    """Append each image's bytes to `path`, hashing as it goes: (N, H, W, 3), sha256, labels.
    The disk is checked for all of them once their shape is known: before decoding when the
    stream knows it, else at the first image."""
    digest = hashlib.sha256()
    labels: list[int] = []
    size = stream.image_shape
    if size is not None:
        _check_room(directory, len(stream), size)
    with path.open("wb") as file:
        progress = tqdm(stream, total=len(stream), desc=f"caching {directory.name}", unit=" img")
        for image, label in progress:
            if size is None:
                size = image.shape
                _check_room(directory, len(stream), size)
            if image.shape != size or image.dtype != np.uint8:
                raise ValueError(f"image {len(labels)} is {image.dtype} {image.shape}, not {size}")
            data = np.ascontiguousarray(image).data
            digest.update(data)
            file.write(data)
            labels.append(label)
        file.flush()
        os.fsync(file.fileno())
    if size is None or not labels:
        raise DataError(f"{directory}: nothing to cache, no image could be decoded")
    return (len(labels), *size), digest.hexdigest(), labels


def _check_room(directory: Path, count: int, shape: tuple[int, ...]) -> None:
    """Refuse a cache of `count` uint8 images of `shape` that would fill the cache dir's disk."""
    check_disk(
        directory.parent,
        count * math.prod(shape),
        f"caching {count:,} images of {'x'.join(map(str, shape))}",
        error=DataError,
        hint="pass a smaller image_size (vitkit train: data_size), or a cache_dir with room",
    )


def _fsync(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())


@contextmanager
def _locked(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on `path` and yield True; the OS releases it if the process dies.
    wait=False: yield False at once when another process holds it."""
    with path.open("a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
