"""CIFAR-10 and CIFAR-100 from the archives their authors release, as `ArrayDataset`s.

The paper fine-tunes on both (Table 2), and the "python version" archives are the canonical form:
pickled dicts of uint8 rows. Pickles can run code, so they are read by an unpickler that builds
numpy arrays and nothing else; a tampered archive fails with a `DataError`, it never executes.
Pickles can also claim sizes: a ten-byte file can ask the unpickler for gigabytes, so every length
and memo slot is checked against the file before unpickling, and arrays are built by vitkit from
their checked state, never by numpy's unpickling code from what the file says.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from vitkit.data.archives import ARCHIVE_ERRORS, member_parts, members, open_tar
from vitkit.data.arrays import ArrayDataset
from vitkit.download import default_cache_dir
from vitkit.download import download as download_file
from vitkit.errors import DataError, DownloadError

# Each row is one 32x32 image as three colour planes: R (1024 bytes), G, then B, row-major.
IMAGE_BYTES = 3 * 32 * 32
# Bytes a batch or meta file may take: CIFAR-100's training batch, the largest, takes 155 MB.
MAX_FILE_BYTES = 512 << 20


@dataclass(frozen=True)
class _Release:
    """Where one official archive lives and how its extracted folder is laid out."""

    url: str
    md5: str
    classes: int
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
        classes=10,
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
        classes=100,
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
    classes = _class_names(folder / release.meta, release.names_key, release.classes)
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
    _extract(archive, release)
    return folder


def _extract(archive: Path, release: _Release) -> None:
    """Unpack the files `release` reads from `archive` into its folder next to the archive.

    Nothing else is written (a hostile archive cannot fill the disk with other files), names
    that climb out of the archive and links among the wanted files are refused, and each file is
    held to MAX_FILE_BYTES. Files go to a temporary folder moved into place at the end, so an
    interrupted extraction never leaves a folder that passes for a complete one.
    """
    wanted = {(release.folder, name) for name in (release.meta, *release.train, *release.test)}
    staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=archive.parent))
    try:
        with archive.open("rb") as file, open_tar(file, gzipped=True) as tar:
            for member in members(tar):
                parts = member_parts(member.name, archive)
                if parts not in wanted:
                    continue
                if not member.isfile():
                    raise DataError(f"{archive}: {member.name!r} is not a regular file")
                if member.size > MAX_FILE_BYTES:
                    raise DataError(f"{archive}: {member.name!r} is larger than a CIFAR file")
                target = staging.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, target.open("wb") as copy:
                    shutil.copyfileobj(source, copy)
        if not (staging / release.folder).is_dir():
            raise DataError(f"{archive}: has no {release.folder}/ folder; is it the right archive?")
        try:
            (staging / release.folder).rename(archive.parent / release.folder)
        except OSError:
            # Another process (a training rank) moved its complete copy into place first.
            if not (archive.parent / release.folder).is_dir():
                raise
    except DataError:
        raise
    except ARCHIVE_ERRORS as error:  # a damaged archive, or a full disk
        raise DataError(
            f"{archive}: cannot extract (truncated or not a .tar.gz?): {error}"
        ) from error
    finally:
        shutil.rmtree(staging)


def _class_names(path: Path, key: bytes, count: int) -> tuple[str, ...]:
    """The `count` class names in a meta file, in label order."""
    names = _unpickle(path).get(key)
    if not isinstance(names, list) or not all(isinstance(name, bytes) for name in names):
        raise DataError(f"{path}: no list of class names (byte strings) under {key!r}")
    if len(names) != count:
        raise DataError(f"{path}: {key!r} lists {len(names)} class names, not {count}")
    try:
        return tuple(name.decode() for name in names)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: {key!r} holds a name that is not UTF-8: {error}") from error


def _read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (N, 3072) uint8 and labels (N,) int64 of one batch file, checked for shape and range."""
    batch = _unpickle(path)
    rows = batch.get(b"data")
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2:
        raise DataError(f"{path}: b'data' is not a 2-d uint8 array but {_describe(rows)}")
    if rows.shape[1] != IMAGE_BYTES:
        raise DataError(f"{path}: rows of {rows.shape[1]} bytes, expected {IMAGE_BYTES} (32x32x3)")
    labels = _labels(path, batch.get(label_key), label_key, num_classes)
    if len(labels) != len(rows):
        raise DataError(f"{path}: {len(rows)} images but {len(labels)} {label_key!r}")
    return rows, labels


def _labels(path: Path, value: object, key: bytes, num_classes: int) -> np.ndarray:
    """`value` as int64 labels, if it is a list (or 1-d integer array) of class numbers: a float
    such as 3.7 is refused, not truncated to class 3."""
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iu":
        labels = value.tolist()
    elif isinstance(value, list):
        labels = value
    else:
        raise DataError(f"{path}: {key!r} is not a list of class numbers but {_describe(value)}")
    for position, label in enumerate(labels):
        if type(label) is not int or not 0 <= label < num_classes:
            raise DataError(
                f"{path}: {key!r}[{position}] is {label!r:.40}, not a class number (an integer "
                f"in [0, {num_classes}))"
            )
    return np.array(labels, dtype=np.int64)


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return "missing" if value is None else f"a {type(value).__name__}"


def _unpickle(path: Path) -> dict[bytes, Any]:
    """The dict in a batch or meta file, read without letting the file run code or claim memory."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError as error:
        raise DataError(f"{path}: missing; the extracted folder is incomplete") from error
    except OSError as error:
        raise DataError(f"{path}: cannot read the file: {error}") from error
    if len(data) > MAX_FILE_BYTES:
        raise DataError(f"{path}: larger than the {MAX_FILE_BYTES:,} bytes of a CIFAR file")
    try:
        _check_claims(data)
        content = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
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
    return {key: _built(value, path) for key, value in content.items()}


def _check_claims(pickled: bytes) -> None:
    """Refuse a pickle whose opcodes claim what it does not hold, before the unpickler acts on
    the claim: a length past the end of the data (pickletools fails on it), which the unpickler
    would allocate first, or a memo slot beyond the opcodes before it, to reach which the
    unpickler would grow its memo table to gigabytes."""
    try:
        for position, (opcode, argument, _) in enumerate(pickletools.genops(pickled)):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and argument > position:
                break
        else:
            return
    except ValueError as error:
        raise DataError(f"truncated or corrupt file: {error}") from error
    raise DataError(f"corrupt file: memo slot {argument} at opcode {position}")


class _Array:
    """An array being unpickled: numpy's pickles create it empty, `_reconstruct(ndarray, (0,),
    b'b')`, then hand it its state (BUILD), from which this builds it once checked."""

    array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        # (version, shape, dtype, Fortran order, raw bytes); numpy before 1.0 left out the version.
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise DataError("an array's state is not (shape, dtype, order, bytes)")
        shape, dtype, fortran, raw = state
        if not isinstance(dtype, _Dtype) or not isinstance(raw, bytes):
            raise DataError("an array's state has no dtype or no bytes")
        if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
            raise DataError(f"an array's shape is {shape!r:.60}")
        if math.prod(shape) * dtype.dtype.itemsize != len(raw):
            raise DataError(f"an array of shape {shape} and {dtype.dtype} holds {len(raw)} bytes")
        order = "F" if fortran else "C"
        self.array = np.frombuffer(raw, dtype=dtype.dtype).reshape(shape, order=order)


class _Dtype:
    """A plain numeric dtype being unpickled (`numpy.dtype(code, align, copy)`, then its state):
    no structured, object or sub-array dtype, whose sizes the file would choose."""

    def __init__(self, code: object, align: object = False, copy: object = True) -> None:
        text = code.decode("ascii", "replace") if isinstance(code, bytes) else code
        if not isinstance(text, str) or len(text) > 4:
            raise DataError(f"refusing dtype {code!r:.40}")
        try:
            self.dtype = np.dtype(text)
        except TypeError as error:
            raise DataError(f"refusing dtype {code!r:.40}") from error
        if self.dtype.kind not in "biuf":  # structured and sub-array dtypes are of kind V
            raise DataError(f"refusing dtype {self.dtype}")

    def __setstate__(self, state: object) -> None:
        # (3, byte order, sub-array, names, fields, item size, alignment, flags) of a plain dtype.
        if not isinstance(state, tuple) or len(state) != 8:
            raise DataError(f"refusing dtype state {state!r:.60}")
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        if state[0] != 3 or order not in ("<", ">", "|", "=") or state[2:] != _PLAIN_DTYPE_STATE:
            raise DataError(f"refusing dtype state {state!r:.60}")
        if order != "|":
            self.dtype = self.dtype.newbyteorder(order)


_PLAIN_DTYPE_STATE = (None, None, None, -1, -1, 0)
# What the file's `numpy.ndarray` resolves to: a token `_reconstruct` checks, nothing callable.
_NDARRAY = object()


def _reconstruct(cls: object, shape: object, typecode: object) -> _Array:
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise DataError("refusing an array not created the way numpy pickles arrays")
    return _Array()


def _built(value: object, path: Path) -> object:
    """A top-level value of the file, its arrays as built numpy arrays."""
    if not isinstance(value, _Array):
        return value
    if value.array is None:
        raise DataError(f"{path}: an array without its contents")
    return value.array


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR file needs to rebuild its numpy arrays, to vitkit's
    checked stand-ins; the released files (Python 2, numpy.core) and re-saved ones (numpy._core)
    name them differently."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _Dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[module, name]
        except KeyError:
            raise DataError(f"refusing to unpickle {module}.{name}") from None
