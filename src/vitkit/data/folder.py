"""Image-folder datasets, `root/<split>/<class>/<image>`, as a directory or a tar archive of one.

The class of an image is the folder it sits in and labels index the sorted class names, as in
torchvision's ImageFolder, so a model trained on one reads the other's labels. Archives are read
as a stream, never extracted: a .tar.gz cannot seek, and unpacking would take as much disk again.
`cached_image_folder` decodes a split once and memory-maps the pixels after (`vitkit.data.cache`).
A folder may come from a stranger too: a split is one folder name within it, and a class folder or
image that links outside it (to /usr/share, say) is refused, so that only what the folder holds is
read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import tarfile
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from vitkit.data.archives import (
    ARCHIVE_ERRORS,
    is_gzipped,
    member_parts,
    members,
    open_tar,
    read_member,
)
from vitkit.data.arrays import ArrayDataset
from vitkit.data.cache import cached_dataset
from vitkit.data.fitting import COVER, Fit, on_canvas
from vitkit.data.images import IMAGE_EXTENSIONS, list_images, load_rgb, max_image_pixels
from vitkit.errors import DataError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# Images handed to a decoding thread at once: enough to amortise the hand-off, small enough that
# the threads stay busy on a short split.
CHUNK = 64
# Bytes of images (encoded, and decoded as estimated) handed to the decoding threads and not yet
# taken by the consumer: room for every chunk in flight at ImageNet sizes, while images near the
# pixel limit (192 MiB each) go a few at a time instead of 64 to a chunk.
IN_FLIGHT_BYTES = 1 << 29
# What the reader hands a decoding thread: a file path, an archive member's bytes, or the error
# that reading the member gave.
Encoded = Path | bytes | DataError
# What decoding one image gives: its pixels, or the error that names it (raised or skipped later).
Decoded = np.ndarray | DataError


# The split of a folder that has none: its class folders themselves, `root/./<class>/<image>`.
WHOLE_TREE = "."


class MixedSizes(DataError):
    """A split's images differ in size where they were to be decoded as stored."""


@dataclass(frozen=True)
class ImageSource:
    """One split of an image folder or archive, listed but not yet decoded.

    `entries` are (name, label) in the order `iter_decoded` yields them: a file path for a folder
    (sorted), a member name for an archive (archive order, the only order a stream can read).
    """

    location: Path
    split: str
    classes: tuple[str, ...]
    entries: tuple[tuple[str, int], ...]
    archive: bool

    def describe(self, name: str) -> str:
        """Where the image `name` lives, as error messages should say it."""
        return f"{self.location}: member {name}" if self.archive else name


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def scan(path: str | Path, split: str) -> ImageSource:
    """List `split` of an image folder or of a .tar / .tar.gz / .tgz archive of one."""
    path = Path(path)
    if path.is_dir():
        return scan_folder(path, split)
    if is_archive(path):
        return scan_tar(path, split)
    if path.exists():
        raise DataError(f"{path}: neither a folder nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    raise DataError(f"{path}: no such folder or archive")


def scan_folder(root: str | Path, split: str) -> ImageSource:
    """List `root/<split>/<class>/...` (WHOLE_TREE: `root/<class>/...`); every class folder must
    hold an image (recursively), and class folders and linked images must lie within `root` once
    links are resolved."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    _check_split(split, root)
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(child.name for child in root.iterdir() if child.is_dir())
        hint = f"; its class folders are split {WHOLE_TREE!r}" if is_class_tree(root) else ""
        raise DataError(
            f"{root}: no split {split!r} in it (folders found: {found or 'none'}){hint}"
        )
    classes = tuple(sorted(child.name for child in split_dir.iterdir() if child.is_dir()))
    if not classes:
        raise DataError(f"{split_dir}: no class folders in it, so the dataset is empty")
    _check_class_names(classes, split_dir)
    within = root.resolve()
    entries = tuple(
        (str(path), label)
        for label, name in enumerate(classes)
        for path in _images_within(split_dir / name, within)
    )
    return ImageSource(root, split, classes, entries, archive=False)


def _images_within(folder: Path, root: Path) -> list[Path]:
    """`list_images(folder)` (which names an empty folder), after checking that the folder and
    each linked image resolve within `root` (resolved); `list_images` enters no linked
    subfolder, so nothing else can lead out."""
    _check_within(folder, root)
    images = list_images(folder)
    for image in filter(os.path.islink, images):
        _check_within(image, root)
    return images


def _check_within(path: Path, root: Path) -> None:
    """Refuse `path` when it resolves outside `root` (resolved), through a link on its way."""
    target = path.resolve()
    if not target.is_relative_to(root):
        raise DataError(f"{path}: links to {target}, outside the dataset's folder {root}")


def _check_split(split: str, where: Path) -> None:
    """A split is one folder name in the dataset, or "." (WHOLE_TREE): taken as a path, `/etc`
    or `..` would read folders outside it."""
    if split in ("", "..") or "/" in split or "\0" in split:
        raise DataError(f"{where}: split {split!r} is not a folder name (no / or ..)")


def is_class_tree(root: Path) -> bool:
    """Whether `root` is a folder of class folders holding images (`root/<class>/<image>`),
    with no splits: a class folder holds image files itself, where a split folder holds class
    folders."""
    if not root.is_dir():
        return False
    return any(
        child.is_dir() and not child.is_symlink()
        and any(os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
                for name in os.listdir(child))
        for child in root.iterdir()
    )  # fmt: skip


def _check_class_names(classes: Sequence[str], where: object) -> None:
    """Refuse a class folder whose name is not UTF-8 (Python holds its bytes as lone surrogates):
    class names are written to caches, checkpoints and terminals as text, and would fail there."""
    for name in classes:
        try:
            name.encode()
        except UnicodeEncodeError:
            raw = name.encode(errors="surrogateescape")
            raise DataError(f"{where}: class folder {raw!r} is not UTF-8; rename it") from None


def scan_tar(archive: str | Path, split: str) -> ImageSource:
    """List `split` of a tar archive of an image folder, optionally under one top-level folder.

    Reads the whole archive once (a .tar.gz: decompresses it), since its members come in any order.
    """
    archive = Path(archive)
    _check_split(split, archive)
    if split == WHOLE_TREE:
        raise DataError(
            f"{archive}: a tree of class folders without splits is read from a folder; "
            "extract the archive, or give it train/ (and test/) folders"
        )
    images: list[tuple[str, tuple[str, ...]]] = []  # (member name, its path parts)
    folders: set[tuple[str, ...]] = set()
    with _opened(archive) as tar:
        for member in tqdm(members(tar), desc=f"listing {archive.name}", unit=" files"):
            parts = member_parts(member.name, archive)
            if not parts:  # the archive's root, "./"
                continue
            if member.isdir():
                folders.add(parts)
            elif member.isfile() and os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS:
                images.append((member.name, parts))
                folders.update(parts[:end] for end in range(1, len(parts)))
    if not images:
        raise DataError(f"{archive}: no images in the archive, so the dataset is empty")
    split_parts = _split_folder(archive, folders, split)
    depth = len(split_parts)  # the class name sits at parts[depth]
    classes = tuple(sorted(parts[-1] for parts in folders if parts[:-1] == split_parts))
    if not classes:
        raise DataError(f"{archive}: no class folders in {'/'.join(split_parts)}, so it is empty")
    _check_class_names(classes, archive)
    label_of = {name: label for label, name in enumerate(classes)}
    entries = tuple(
        (name, label_of[parts[depth]])
        for name, parts in images
        if len(parts) > depth + 1 and parts[:depth] == split_parts
    )
    empty = sorted(set(classes) - {classes[label] for _, label in entries})
    if empty:
        raise DataError(f"{archive}: class folders with no images in {split!r}: {empty}")
    return ImageSource(archive, split, classes, entries, archive=True)


def _split_folder(archive: Path, folders: set[tuple[str, ...]], split: str) -> tuple[str, ...]:
    """The path parts of the split's folder: `split` at the top, or below the one top folder."""
    tops = sorted({parts[0] for parts in folders})
    if (split,) in folders:
        return (split,)
    if len(tops) == 1 and (tops[0], split) in folders:
        return (tops[0], split)
    found = tops
    if len(tops) == 1:
        found += sorted("/".join(parts) for parts in folders if len(parts) == 2)
    shown = ", ".join(found[:10]) + (", ..." if len(found) > 10 else "") if found else "none"
    raise DataError(f"{archive}: no split {split!r} in it (folders found: {shown})")


def check_same_classes(train: Sequence[str], test: Sequence[str], *, where: str | Path) -> None:
    """Fail unless both splits have the same classes: else label 3 means two different things."""
    if tuple(train) != tuple(test):
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        raise DataError(
            f"{where}: train and test have different classes "
            f"(only in train: {only_train}; only in test: {only_test})"
        )


@dataclass(eq=False)
class DecodedImages:
    """The images of a source as (H, W, 3) uint8 arrays with their labels, in `entries` order.

    Each iteration decodes again; after one, `skipped` maps each image left out (skip_bad=True)
    to why it could not be read.
    """

    source: ImageSource
    image_size: tuple[int, int] | None
    skip_bad: bool
    workers: int
    fit: Fit = COVER
    skipped: dict[str, str] = field(default_factory=dict)
    # A fit on a canvas (WITHIN): each image's (H, W) on it, in the order they come out; else None.
    sizes: list[tuple[int, int]] | None = field(default=None, init=False)
    # Bytes of one decoded image, once the first is decoded (all others must match it).
    _image_bytes: int | None = field(default=None, init=False)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.classes

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(H, W, 3) of every image it yields, known before decoding when they are resized to
        image_size (or set on a canvas of that size); else None."""
        return (*self.image_size, 3) if self.image_size is not None else None

    def __len__(self) -> int:
        """Images to decode; fewer come out when bad ones are skipped."""
        return len(self.source.entries)

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        first: tuple[str, tuple[int, ...]] | None = None  # without image_size all must match it
        self.sizes = [] if self.fit.on_canvas else None
        for (name, label), image in self._decode():
            if isinstance(image, DataError):
                if not self.skip_bad:
                    raise DataError(f"{image}; skip_bad leaves such images out") from None
                self.skipped[name] = str(image)
                continue
            if self.sizes is not None and self.image_size is not None:
                self.sizes.append((image.shape[0], image.shape[1]))
                image = on_canvas(image, self.image_size)
            if first is None:
                first = (name, image.shape[:2])
                self._image_bytes = image.nbytes
            elif image.shape[:2] != first[1]:
                raise MixedSizes(
                    f"{self.source.describe(name)}: image is {_hw(image.shape)} (H, W) but "
                    f"{self.source.describe(first[0])} is {_hw(first[1])}; pass image_size "
                    "to decode them all to one size (vitkit train: data_size=N), or read each "
                    "at its own size (vitkit eval: --max-tokens N)"
                )
            yield image, label
        if self.skipped:
            names = ", ".join(list(self.skipped)[:5]) + (", ..." if len(self.skipped) > 5 else "")
            warnings.warn(
                f"{self.source.location} ({self.source.split}): skipped {len(self.skipped)} "
                f"unreadable images: {names}",
                stacklevel=2,
            )

    def _decode(self) -> Iterator[tuple[tuple[str, int], Decoded]]:
        """Decode chunks on a thread pool (Pillow releases the GIL while decoding and resizing)
        while this thread reads the next files, keeping at most 2 x workers chunks and about
        IN_FLIGHT_BYTES in flight (always one chunk, so that an image above it still goes)."""
        pending: deque[tuple[list[tuple[str, int]], Future[list[Decoded]], int]] = deque()
        held = 0
        with ThreadPoolExecutor(self.workers) as pool:
            try:
                for chunk, cost in self._read():
                    entries = [(name, label) for name, label, _ in chunk]
                    work = [(self.source.describe(name), data) for name, _, data in chunk]
                    future = pool.submit(_decode_chunk, work, self.image_size, self.fit)
                    pending.append((entries, future, cost))
                    held += cost
                    while len(pending) > 2 * self.workers or (
                        len(pending) > 1 and held > IN_FLIGHT_BYTES
                    ):
                        entries, future, cost = pending.popleft()
                        held -= cost
                        yield from _ready(entries, future)
                while pending:
                    entries, future, _ = pending.popleft()
                    yield from _ready(entries, future)
            finally:
                pool.shutdown(cancel_futures=True)

    def _read(self) -> Iterator[tuple[list[tuple[str, int, Encoded]], int]]:
        """Chunks of (name, label, file path, bytes or error), in `entries` order, each with its
        estimated cost in bytes; a chunk ends at CHUNK images or at its share of IN_FLIGHT_BYTES."""
        entries = self.source.entries
        if self.source.archive:
            items = _read_members(self.source.location, entries)
        else:
            items = ((name, label, Path(name)) for name, label in entries)
        share = IN_FLIGHT_BYTES // (2 * self.workers)
        chunk: list[tuple[str, int, Encoded]] = []
        cost = 0
        for item in items:
            chunk.append(item)
            cost += self._decoded_bytes() + (len(item[2]) if isinstance(item[2], bytes) else 0)
            if len(chunk) == CHUNK or cost >= share:
                yield chunk, cost
                chunk, cost = [], 0
        if chunk:
            yield chunk, cost

    def _decoded_bytes(self) -> int:
        """Bytes one decoded image will take: known from image_size or from the first image
        decoded, else the most the pixel limit allows."""
        if self.image_shape is not None:
            return math.prod(self.image_shape)
        return self._image_bytes or 3 * max_image_pixels()


def iter_decoded(
    source: ImageSource,
    *,
    image_size: tuple[int, int] | None = None,
    fit: Fit = COVER,
    skip_bad: bool = False,
    workers: int | None = None,
) -> DecodedImages:
    """Decode every image of `source` to RGB (H, W, 3) uint8, in `source.entries` order.

    image_size (H, W): images of another size are brought to it as `fit` says
    (`vitkit.data.fitting`): by default resized to cover it and centre-cropped, as torchvision's
    Resize(size) + CenterCrop(size); with WITHIN shrunk to fit within it and set on a canvas of
    it, `.sizes` then holding each image's own (H, W) on it; with `whole(...)` resized whole.
    Without image_size every image must have the size of the first.
    skip_bad: leave out unreadable images instead of failing; `.skipped` says which, and a
    warning at the end counts them. workers: decoding threads (default: one per CPU, at most 8).
    """
    if fit.on_canvas and image_size is None:
        raise ValueError("a fit on a canvas needs image_size, the canvas the images fit within")
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    return DecodedImages(source, image_size, skip_bad, workers, fit)


def cached_image_folder(
    path: str | Path,
    split: str,
    *,
    cache_dir: str | Path,
    image_size: tuple[int, int] | None = None,
    fit: Fit = COVER,
    skip_bad: bool = False,
) -> ArrayDataset:
    """One split of an image folder or archive, decoded on first use and memory-mapped after
    (image_size, fit: as `iter_decoded` takes them; with a fit on a canvas the dataset's `sizes`
    hold each image's own size on it).

    The cache is rebuilt when the source changes: an archive's size or modification time, or for
    a folder the name, size or modification time of any file in the split.
    """
    path = Path(path).resolve()
    key = {
        "source": _identity(path, split),
        "split": split,
        "image_size": list(image_size) if image_size else None,
        "skip_bad": skip_bad,
        **fit.cache_key(),
    }
    return cached_dataset(
        key,
        lambda: iter_decoded(scan(path, split), image_size=image_size, fit=fit, skip_bad=skip_bad),
        cache_dir,
    )


@dataclass(frozen=True)
class LazyImageFolder:
    """One split of an image folder, decoded image by image when asked for, each image at its
    stored size: `write_shards` reads it so, so that a folder larger than memory or the disk
    cache can be sharded, and so does the evaluation at each image's own aspect ratio."""

    source: ImageSource

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.classes

    def __len__(self) -> int:
        return len(self.source.entries)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64, every image's label, known from the listing without decoding."""
        return np.array([label for _, label in self.source.entries], dtype=np.int64)

    def subset(self, indices: np.ndarray) -> LazyImageFolder:
        """The images at `indices`, still undecoded, same classes."""
        entries = tuple(self.source.entries[index] for index in indices)
        return LazyImageFolder(dataclasses.replace(self.source, entries=entries))

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.source.entries[index]
        return np.asarray(load_rgb(path)), label


def _decode_chunk(
    work: list[tuple[str, Encoded]], image_size: tuple[int, int] | None, fit: Fit
) -> list[Decoded]:
    """Decode a chunk; a bad image becomes its DataError, so one bad file does not lose a chunk."""
    results: list[Decoded] = []
    for where, data in work:
        if isinstance(data, DataError):
            results.append(data)
            continue
        try:
            image = _load(where, data)
        except DataError as error:
            results.append(error)
            continue
        if image_size is not None:
            image = fit(image, image_size)
        results.append(np.asarray(image))
    return results


def _load(where: str, data: Path | bytes) -> Image.Image:
    if isinstance(data, Path):
        return load_rgb(data)  # its errors name the path
    return load_rgb(io.BytesIO(data), name=where)


def _ready(
    entries: list[tuple[str, int]], future: Future[list[Decoded]]
) -> Iterator[tuple[tuple[str, int], Decoded]]:
    yield from zip(entries, future.result())


def _read_members(
    archive: Path, entries: Sequence[tuple[str, int]]
) -> Iterator[tuple[str, int, bytes | DataError]]:
    """The bytes of the `entries` members, or why one cannot be read (a member too large to hold
    is one bad image, skipped with the others under skip_bad): one pass over the archive,
    stopping after the last."""
    position = 0
    with _opened(archive) as tar:
        for member in members(tar):
            if position == len(entries):
                return
            name, label = entries[position]
            if member.name == name and member.isfile():
                try:
                    data: bytes | DataError = read_member(tar, member, where=f"{archive}: {name}")
                except DataError as error:
                    data = error
                yield name, label, data
                position += 1
    if position < len(entries):
        raise DataError(
            f"{archive}: member {entries[position][0]} is missing; the archive changed since it "
            "was scanned"
        )


@contextmanager
def _opened(archive: Path) -> Iterator[tarfile.TarFile]:
    """`archive` opened as a stream (a .tar.gz needs no seeking, by its name); errors name it."""
    try:
        with archive.open("rb") as file, open_tar(file, gzipped=is_gzipped(archive.name)) as tar:
            yield tar
    except DataError:
        raise
    except ARCHIVE_ERRORS as error:
        raise DataError(f"{archive}: cannot read the archive: {error}") from error


def _identity(path: Path, split: str) -> dict[str, object]:
    """What must not change for a cache to stay valid, cheap to compute: an archive's stat; for a
    folder the names, sizes and modification times of the images its listing (`scan_folder`, with
    its checks) gives, one stat per image. An image that cannot be stat'ed (a dangling link)
    counts as missing: decoding names it, or skips it."""
    if path.is_file():
        stat = path.stat()
        return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    digest = hashlib.sha256()
    for name, _ in scan_folder(path, split).entries:
        try:
            stat = os.stat(name)
            state = f"{stat.st_size}\0{stat.st_mtime_ns}"
        except OSError:
            state = "missing"
        relative = os.path.relpath(name, path)
        digest.update(f"{relative}\0{state}\n".encode(errors="surrogateescape"))
    return {"path": str(path), "files_sha256": digest.hexdigest()}


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]}"
