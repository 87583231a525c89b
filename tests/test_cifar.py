"""`load_cifar` on small synthetic archives written byte for byte in the released layout."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from vitkit.data.cifar import load_cifar
from vitkit.data.images import DataError

from helpers import FileServer

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
PER_BATCH = 20  # images per synthetic batch; the released batches hold 10,000
KNOWN_PIXEL = (255, 10, 20)  # R, G, B at pixel (0, 0) of the first training image


def py2_pickle(value: object) -> bytes:
    """`value` pickled the way Python 2 wrote the released files: protocol 2, byte strings as
    (SHORT_)BINSTRING, arrays rebuilt by numpy.core.multiarray._reconstruct.

    Python 3's pickle.dump cannot write this: at protocol 2 it turns every bytes object into a
    `_codecs.encode` call (which also hides the keys from torchvision's reader) and names numpy
    2's private module.
    """
    return pickle.PROTO + b"\x02" + _opcodes(value) + pickle.STOP


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _opcodes(value: object) -> bytes:
    if value is None:
        return pickle.NONE
    if isinstance(value, bool):
        return pickle.NEWTRUE if value else pickle.NEWFALSE
    if isinstance(value, int):
        return pickle.BININT + struct.pack("<i", value)
    if isinstance(value, bytes):
        if len(value) < 256:
            return pickle.SHORT_BINSTRING + bytes([len(value)]) + value
        return pickle.BINSTRING + struct.pack("<i", len(value)) + value
    if isinstance(value, tuple):
        return pickle.MARK + b"".join(map(_opcodes, value)) + pickle.TUPLE
    if isinstance(value, list):
        return pickle.EMPTY_LIST + pickle.MARK + b"".join(map(_opcodes, value)) + pickle.APPENDS
    if isinstance(value, dict):
        items = b"".join(_opcodes(key) + _opcodes(item) for key, item in value.items())
        return pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        # numpy's ndarray.__reduce__: _reconstruct(ndarray, (0,), 'b'), then __setstate__ with
        # (version, shape, dtype, is_fortran, raw bytes); the dtype is itself reduced and built.
        dtype = (
            _global("numpy", "dtype")
            + _opcodes((b"u1", 0, 1))
            + pickle.REDUCE
            + _opcodes((3, b"|", None, None, None, -1, -1, 0))
            + pickle.BUILD
        )
        state = _opcodes(1) + _opcodes(value.shape) + dtype + _opcodes(False)
        return (
            _global("numpy.core.multiarray", "_reconstruct")
            + pickle.MARK
            + _global("numpy", "ndarray")
            + _opcodes((0,))
            + _opcodes(b"b")
            + pickle.TUPLE
            + pickle.REDUCE
            + pickle.MARK
            + state
            + _opcodes(np.ascontiguousarray(value).tobytes())
            + pickle.TUPLE
            + pickle.BUILD
        )
    raise TypeError(f"py2_pickle cannot write {type(value).__name__}")


def random_batch(rng: np.random.Generator, num_classes: int) -> tuple[np.ndarray, list[int]]:
    rows = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
    return rows, rng.integers(0, num_classes, PER_BATCH).tolist()


def write_cifar10(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A cifar-10-batches-py folder under `root`; the rows and labels of each split."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {"train": [f"data_batch_{index}" for index in range(1, 6)], "test": ["test_batch"]}
    written = {}
    for split, names in files.items():
        batches = [random_batch(rng, len(CIFAR10_CLASSES)) for _ in names]
        if split == "train":  # one image whose first pixel has a known colour, plane by plane
            batches[0][0][0, [0, 1024, 2048]] = KNOWN_PIXEL
        for name, (rows, labels) in zip(names, batches):
            batch = {
                b"batch_label": f"{name} of 5".encode(),
                b"labels": labels,
                b"data": rows,
                b"filenames": [f"image_{index}.png".encode() for index in range(PER_BATCH)],
            }
            (folder / name).write_bytes(py2_pickle(batch))
        written[split] = (
            np.concatenate([rows for rows, _ in batches]),
            np.concatenate([labels for _, labels in batches]),
        )
    meta = {
        b"num_cases_per_batch": PER_BATCH,
        b"label_names": [name.encode() for name in CIFAR10_CLASSES],
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return written


def write_cifar100(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A cifar-100-python folder under `root`; the rows and fine labels of each split."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for split in ("train", "test"):
        rows, fine = random_batch(rng, 100)
        batch = {
            b"filenames": [f"image_{index}.png".encode() for index in range(PER_BATCH)],
            b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [label // 5 for label in fine],
            b"data": rows,
        }
        (folder / split).write_bytes(py2_pickle(batch))
        written[split] = (rows, np.array(fine))
    meta = {
        b"fine_label_names": [f"fine_{index}".encode() for index in range(100)],
        b"coarse_label_names": [f"coarse_{index}".encode() for index in range(20)],
    }
    (folder / "meta").write_bytes(py2_pickle(meta))
    return written


def pack(root: Path, folder: str, archive: str) -> Path:
    """The folder as the released .tar.gz next to it, and the folder removed."""
    path = root / archive
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root / folder, arcname=folder)
    shutil.rmtree(root / folder)
    return path


@pytest.fixture
def cifar10(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    root = tmp_path / "cifar"
    return root, write_cifar10(root)


@pytest.mark.parametrize("split", ["train", "test"])
def test_loads_the_extracted_folder(cifar10, split: str) -> None:
    root, written = cifar10
    rows, labels = written[split]
    dataset = load_cifar("cifar10", split=split, root=root)
    assert dataset.classes == CIFAR10_CLASSES
    assert dataset.images.shape == (len(rows), 32, 32, 3) and dataset.images.dtype == np.uint8
    assert dataset.labels.dtype == np.int64
    np.testing.assert_array_equal(dataset.labels, labels)
    # Channel c of pixel (y, x) is byte c*1024 + y*32 + x of the row: planes of row-major pixels.
    index, y, x, channel = np.meshgrid(
        np.arange(len(rows)), np.arange(32), np.arange(32), np.arange(3), indexing="ij"
    )
    np.testing.assert_array_equal(
        dataset.images[index, y, x, channel], rows[index, channel * 1024 + y * 32 + x]
    )


def test_a_known_red_pixel_lands_in_the_red_channel(cifar10) -> None:
    root, _ = cifar10
    dataset = load_cifar("cifar10", split="train", root=root)
    assert dataset.images[0, 0, 0].tolist() == list(KNOWN_PIXEL)


def test_cifar100_uses_the_fine_labels_and_names(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path)
    dataset = load_cifar("cifar100", split="test", root=tmp_path)
    np.testing.assert_array_equal(dataset.labels, written["test"][1])
    assert dataset.classes == tuple(f"fine_{index}" for index in range(100))
    assert len(dataset) == PER_BATCH


def torchvision_reader(base: type, folder: Path) -> type:
    """`base` (torchvision's CIFAR10 or CIFAR100) with the md5s of our synthetic files in place of
    the released ones it checks before reading."""

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    return type(
        f"Synthetic{base.__name__}",
        (base,),
        {
            "train_list": [[name, md5(name)] for name, _ in base.train_list],
            "test_list": [[name, md5(name)] for name, _ in base.test_list],
            "meta": {**base.meta, "md5": md5(base.meta["filename"])},
        },
    )


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_agrees_with_torchvision(tmp_path: Path, name: str, split: str) -> None:
    datasets = pytest.importorskip("torchvision.datasets")
    if name == "cifar10":
        write_cifar10(tmp_path)
        reader = torchvision_reader(datasets.CIFAR10, tmp_path / "cifar-10-batches-py")
    else:
        write_cifar100(tmp_path)
        reader = torchvision_reader(datasets.CIFAR100, tmp_path / "cifar-100-python")
    reference = reader(tmp_path, train=split == "train", download=False)
    dataset = load_cifar(name, split=split, root=tmp_path)
    np.testing.assert_array_equal(dataset.images, reference.data)
    np.testing.assert_array_equal(dataset.labels, reference.targets)
    assert list(dataset.classes) == reference.classes


def test_extracts_the_archive_when_only_it_is_there(cifar10) -> None:
    root, written = cifar10
    pack(root, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    dataset = load_cifar("cifar10", split="test", root=root)
    np.testing.assert_array_equal(dataset.labels, written["test"][1])
    assert sorted(path.name for path in root.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]


@pytest.mark.usefixtures("online")
def test_downloads_the_archive_from_a_mirror(cifar10, server: FileServer, tmp_path: Path) -> None:
    root, written = cifar10
    archive = pack(root, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    url = server.serve(archive.name, archive.read_bytes())
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()

    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="checksum mismatch"):
        load_cifar("cifar10", split="train", root=cache, download=True, url=url, md5="0" * 32)
    dataset = load_cifar("cifar10", split="train", root=cache, download=True, url=url, md5=md5)
    np.testing.assert_array_equal(dataset.labels, written["train"][1])
    assert (cache / "cifar-10-python.tar.gz").is_file()


def test_nothing_there_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download=True") as error:
        load_cifar("cifar100", split="train", root=tmp_path)
    assert str(tmp_path) in str(error.value)


def test_a_pickle_that_runs_code_is_refused_and_not_run(cifar10, tmp_path: Path) -> None:
    root, _ = cifar10
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to unpickle .*system") as error:
        load_cifar("cifar10", split="train", root=root)
    assert str(batch) in str(error.value)
    assert not marker.exists()


def test_a_truncated_batch_is_named(cifar10) -> None:
    root, _ = cifar10
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[: batch.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as error:
        load_cifar("cifar10", split="train", root=root)
    assert str(batch) in str(error.value)


def test_a_missing_batch_is_named(cifar10) -> None:
    root, _ = cifar10
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch: missing"):
        load_cifar("cifar10", split="test", root=root)


@pytest.mark.parametrize(
    ("rows", "labels", "message"),
    [
        (np.zeros((PER_BATCH, 3000), np.uint8), [0] * PER_BATCH, "rows of 3000 bytes"),
        (np.zeros((PER_BATCH, 3072), np.uint8), [0] * (PER_BATCH - 1), "20 images but 19"),
        (np.zeros((PER_BATCH, 3072), np.uint8), [10] * PER_BATCH, r"\[0\] is 10, not a class"),
    ],
)
def test_wrong_sizes_are_named(cifar10, rows: np.ndarray, labels: list[int], message: str) -> None:
    root, _ = cifar10
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(py2_pickle({b"data": rows, b"labels": labels}))
    with pytest.raises(DataError, match=message) as error:
        load_cifar("cifar10", split="test", root=root)
    assert str(batch) in str(error.value)


def test_files_pickled_by_python3_and_numpy2_load_too(cifar10) -> None:
    """Re-saved batches (bytes as BINBYTES, numpy._core names) are read like the released ones."""
    root, written = cifar10
    rows, labels = written["test"]
    batch = {b"data": rows, b"labels": labels.tolist()}
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    np.testing.assert_array_equal(load_cifar("cifar10", split="test", root=root).labels, labels)


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_archives_cannot_write_outside_the_root(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "cifar"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        names = {"parent": "../escaped", "absolute": str(tmp_path / "escaped")}
        member = tarfile.TarInfo(names.get(kind, "cifar-10-batches-py"))
        if kind == "symlink":
            member.type, member.linkname = tarfile.SYMTYPE, str(tmp_path)
            tar.addfile(member)
        else:
            member.size = 4
            tar.addfile(member, io.BytesIO(b"evil"))
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_cifar("cifar10", split="train", root=root)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cifar"]
    assert [path.name for path in root.iterdir()] == ["cifar-10-python.tar.gz"]


def test_a_corrupt_archive_is_named(tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"not a gzip file")
    with pytest.raises(DataError, match=r"cifar-100-python.tar.gz: cannot extract \(truncated"):
        load_cifar("cifar100", split="test", root=tmp_path)


def test_unknown_names_and_splits_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar10"):
        load_cifar("cifar1000", split="train", root=tmp_path)
    with pytest.raises(ValueError, match="validation"):
        load_cifar("cifar10", split="validation", root=tmp_path)
