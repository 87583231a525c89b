"""CIFAR-10 and CIFAR-100 from the archives their authors release, as `ArrayDataset`s.

The paper fine-tunes on both (Table 2), and the "python version" archives are the canonical form:
pickled dicts of uint8 rows. Pickles can run code, so they are read by an unpickler that builds
numpy arrays and nothing else; a tampered archive fails with a `DataError`, it never executes.
"""

from __future__ import annotations

import gzip
import pickle
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from vitkit.data.arrays import ArrayDataset
from vitkit.data.images import DataError
from vitkit.download import DownloadError, default_cache_dir
from vitkit.download import download as download_file

# Each row is one 32x32 image as three colour planes: R (1024 bytes), G, then B, row-major.
IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class _Release:
    """Where one official archive lives and how its extracted folder is laid out."""

    url: str
    md5: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes  # the batch field holding labels
    names_key: bytes  # the meta field holding the class names those labels index


_RELEASES = {
    "cifar10": _Release(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{index}" for index in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": _Release(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        label_key=b"fine_labels",  # the 100 classes; the 20 coarse superclasses are not used
        names_key=b"fine_label_names",
    ),
}


def load_cifar(
    name: Literal["cifar10", "cifar100"],
    *,
    split: Literal["train", "test"],
    root: Path | None = None,
    download: bool = False,
    url: str | None = None,
    md5: str | None = None,
) -> ArrayDataset:
    """One split as images (N, 32, 32, 3) uint8, int64 labels and the class names.

    `root` (default: the cache dir's `cifar/`) holds the extracted folder or the `.tar.gz`; the
    archive is extracted on first use, and fetched there first when `download` is set. `url` and
    `md5` replace the official ones, for mirrors.
    """
    if name not in _RELEASES:
        raise ValueError(f"unknown CIFAR dataset {name!r}; choose one of {sorted(_RELEASES)}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    release = _RELEASES[name]
    root = Path(root) if root is not None else default_cache_dir() / "cifar"
    folder = _find_folder(release, root, fetch=download, url=url or release.url, md5=md5)
    classes = _class_names(folder / release.meta, release.names_key)
    batches = [
        _read_batch(folder / batch, release.label_key, len(classes))
        for batch in (release.train if split == "train" else release.test)
    ]
    rows = np.concatenate([rows for rows, _ in batches])
    images = np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels = np.concatenate([labels for _, labels in batches])
    return ArrayDataset(images=images, labels=labels, classes=classes)


def _find_folder(release: _Release, root: Path, *, fetch: bool, url: str, md5: str | None) -> Path:
    """The extracted folder in `root`, extracting (and first fetching) the archive if needed."""
    folder = root / release.folder
    if folder.is_dir():
        return folder
    archive = root / PurePosixPath(release.url).name
    if not archive.is_file():
        if not fetch:
            raise DataError(
                f"{root}: holds neither {folder.name}/ nor {archive.name}; pass download=True, "
                f"or put the archive or its extracted folder there"
            )
        # The official checksum also holds for a mirror's copy, unless told otherwise.
        try:
            download_file(url, archive, md5=md5 or release.md5)
        except DownloadError as error:
            raise DataError(str(error)) from error
    _extract(archive, release.folder)
    return folder


def _extract(archive: Path, folder: str) -> None:
    """Unpack `folder` from `archive` next to it, refusing members that would land elsewhere.

    Files are unpacked into a temporary folder and moved into place at the end, so an interrupted
    extraction never leaves a folder that passes for a complete one.
    """
    staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=archive.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if path.is_absolute() or ".." in path.parts:
                    raise DataError(f"{archive}: refusing to extract {member.name!r}")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise DataError(f"{archive}: {member.name!r} is not a regular file")
                target = staging.joinpath(*path.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, target.open("wb") as file:
                    shutil.copyfileobj(source, file)
        if not (staging / folder).is_dir():
            raise DataError(f"{archive}: has no {folder}/ folder; is it the right archive?")
        try:
            (staging / folder).rename(archive.parent / folder)
        except OSError:
            # Another process (a training rank) moved its complete copy into place first.
            if not (archive.parent / folder).is_dir():
                raise
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataError(f"{archive}: truncated or not a .tar.gz archive: {error}") from error
    finally:
        shutil.rmtree(staging)


def _class_names(path: Path, key: bytes) -> tuple[str, ...]:
    """The class names in a meta file, in label order."""
    names = _unpickle(path).get(key)
    if not isinstance(names, list) or not all(isinstance(name, bytes) for name in names):
        raise DataError(f"{path}: no list of class names under {key!r}")
    return tuple(name.decode() for name in names)


def _read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (N, 3072) uint8 and labels (N,) int64 of one batch file, checked for shape and range."""
    batch = _unpickle(path)
    rows = batch.get(b"data")
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2:
        raise DataError(f"{path}: b'data' is not a 2-d uint8 array")
    if rows.shape[1] != IMAGE_BYTES:
        raise DataError(f"{path}: rows of {rows.shape[1]} bytes, expected {IMAGE_BYTES} (32x32x3)")
    try:
        labels = np.asarray(batch.get(label_key), dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: {label_key!r} is not a list of integers") from error
    if labels.shape != (len(rows),):
        raise DataError(f"{path}: {len(rows)} images but {label_key!r} of shape {labels.shape}")
    if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
        raise DataError(f"{path}: labels outside [0, {num_classes}), the class list's range")
    return rows, labels


def _unpickle(path: Path) -> dict[bytes, Any]:
    """The dict in a batch or meta file, read without letting the file run code."""
    try:
        with path.open("rb") as file:
            content = _BatchUnpickler(file, encoding="bytes").load()
    except FileNotFoundError as error:
        raise DataError(f"{path}: missing; the extracted folder is incomplete") from error
    except DataError as error:
        raise DataError(f"{path}: {error}") from error
    # The pickle docs warn that broken input raises many types beyond UnpicklingError.
    except (
        pickle.UnpicklingError,
        EOFError,
        AttributeError,
        IndexError,
        KeyError,
        TypeError,
        ValueError,
        OverflowError,
    ) as error:
        raise DataError(f"{path}: truncated or corrupt file: {error!r}") from error
    if not isinstance(content, dict):
        raise DataError(f"{path}: holds a {type(content).__name__}, not a CIFAR batch dict")
    return content


# The function numpy reduces arrays to; its module is numpy.core.multiarray before numpy 2 (the
# released files, written by Python 2) and numpy._core.multiarray since.
_reconstruct = np.empty(0).__reduce__()[0]


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR file needs to rebuild its numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[module, name]
        except KeyError:
            raise DataError(f"refusing to unpickle {module}.{name}") from None
