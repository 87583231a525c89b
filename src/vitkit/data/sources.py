"""`open_dataset`: one entry point that picks the reader from a name or a path.

    open_dataset("cifar10", split="train", download=True)          # official archive, cached
    open_dataset("../shared/data/cifar10-jpg.tar.gz", split="test")  # a tarred image tree
    open_dataset("data/my-images", split="train", image_size=(64, 64))  # root/<split>/<class>/*
    open_dataset("shards/", split="train")                          # WebDataset shards + index
    open_dataset("https://host/shards-{000000..000099}.tar")        # streamed shards

Map-style sources come back as an `ArrayDataset` (decoded once, memory-mapped from the cache
after the first use); shards, which may not fit one disk, as a streaming `ShardDataset`.
`open_for_model` (map-style only, every image as a model's preprocessing sees it: what every
evaluation reads) and `open_image_by_image` (an image folder read lazily, each image at its stored
size) narrow it for their callers.
"""

from __future__ import annotations

from pathlib import Path

from vitkit.data.arrays import ArrayDataset
from vitkit.data.cifar import load_cifar
from vitkit.data.fitting import COVER, Fit, whole
from vitkit.data.folder import (
    LazyImageFolder,
    cached_image_folder,
    check_same_classes,
    is_archive,
    scan_folder,
)
from vitkit.data.images import DataError
from vitkit.data.model_input import at_resolution
from vitkit.data.shards import ShardDataset
from vitkit.download import default_cache_dir
from vitkit.models.preprocessing import Preprocessing

# Names of the datasets vitkit can fetch, and the folders / archives their releases unpack to.
_CIFAR_NAMES = {"cifar10": "cifar10", "cifar-10": "cifar10", "cifar100": "cifar100",
                "cifar-100": "cifar100"}  # fmt: skip
_CIFAR_RELEASES = {
    "cifar-10-batches-py": "cifar10",
    "cifar-10-python.tar.gz": "cifar10",
    "cifar-100-python": "cifar100",
    "cifar-100-python.tar.gz": "cifar100",
}


def _is_shards(source: str) -> bool:
    path = Path(source)
    return "://" in source or "{" in source or (path.is_dir() and (path / "index.json").is_file())


def _cifar_release(path: Path) -> tuple[str, Path] | None:
    """(name, root) when `path` is a CIFAR release (its folder or archive) or holds one."""
    if path.name in _CIFAR_RELEASES:
        return _CIFAR_RELEASES[path.name], path.parent
    if path.is_dir():
        for release, name in _CIFAR_RELEASES.items():
            if (path / release).exists():
                return name, path
    return None


def open_dataset(
    source: str | Path,
    *,
    split: str = "train",
    image_size: tuple[int, int] | None = None,
    fit: Fit = COVER,
    cache_dir: str | Path | None = None,
    download: bool = False,
    skip_bad: bool = False,
    shuffle_buffer: int = 0,
    seed: int = 0,
) -> ArrayDataset | ShardDataset:
    """The `split` of `source`, read by the reader its name or path calls for.

    source: "cifar10" / "cifar100" (looked for in the cache dir, fetched with download=True);
        a CIFAR release folder or archive, or a folder holding one; a folder or .tar/.tar.gz of
        `<split>/<class>/<image>` files; a shard folder with index.json, a brace pattern or an
        http(s) URL of shards.
    image_size: (H, W) every image is resized and centre-cropped to when decoding (needed when
        a folder's images differ in size); CIFAR is always 32x32.
    fit: how a folder's or archive's images are brought to image_size (`vitkit.data.fitting`):
        COVER resizes and centre-crops; WITHIN keeps their aspect ratios, each shrunk to fit
        within image_size and set at the top left of a canvas of that size, the dataset's
        `sizes` saying how much of each canvas is image; `whole(...)` resizes the whole image.
        CIFAR's images are always 32x32.
    cache_dir: where decoded arrays and downloads are kept (default: $VITKIT_HOME, else
        ~/.cache/vitkit; see `vitkit.download.default_cache_dir`).
    skip_bad: skip unreadable images of a folder or archive (counted and reported) instead of
        stopping at the first.
    shuffle_buffer, seed: for shards, the streaming shuffle.

    Files are data from strangers: archives, indexes and images are read within bounds and their
    faults raised as DataError (see `ShardDataset` for what an index may name). A brace pattern
    or URL typed here is taken as typed, schemes such as `pipe:` included (webdataset's gopen
    opens those): only pass one you would run yourself.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    text = str(source)
    if text.lower() in _CIFAR_NAMES:
        return load_cifar(
            _CIFAR_NAMES[text.lower()],
            split=_cifar_split(split),
            root=cache_dir / "cifar",
            download=download,
        )
    if _is_shards(text):
        return ShardDataset(text, shuffle_buffer=shuffle_buffer, seed=seed, image_size=image_size)
    path = Path(source)
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder, and not a dataset name "
            f"({', '.join(sorted(set(_CIFAR_NAMES.values())))})"
        )
    if release := _cifar_release(path):
        name, root = release
        return load_cifar(name, split=_cifar_split(split), root=root)
    if path.is_dir() or is_archive(path):
        return cached_image_folder(
            path, split, cache_dir=cache_dir / "arrays", image_size=image_size,
            fit=fit, skip_bad=skip_bad,
        )  # fmt: skip
    raise DataError(
        f"{path}: not a dataset vitkit can read (expected a folder or .tar/.tar.gz of "
        "<split>/<class>/<image> files, a CIFAR release, or WebDataset shards)"
    )


def _cifar_split(split: str) -> str:
    if split not in ("train", "test"):
        raise DataError(f"CIFAR has the splits 'train' and 'test', not {split!r}")
    return split


def open_train_test(
    source: str | Path,
    *,
    train_split: str = "train",
    test_split: str = "test",
    image_size: tuple[int, int] | None = None,
    cache_dir: str | Path | None = None,
    download: bool = False,
    skip_bad: bool = False,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Both splits of a map-style source, checked to share one class list, so that a label means
    the same class in training and in evaluation."""
    options = dict(image_size=image_size, cache_dir=cache_dir, download=download, skip_bad=skip_bad)
    train = open_dataset(source, split=train_split, **options)
    test = open_dataset(source, split=test_split, **options)
    for dataset in (train, test):
        if not isinstance(dataset, ArrayDataset):
            raise DataError(f"{source}: open_train_test reads map-style sources, not shards")
    check_same_classes(train.classes, test.classes, where=source)
    return train, test


def open_for_model(
    source: str | Path,
    split: str,
    preprocessing: Preprocessing,
    *,
    skip_bad: bool = False,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> ArrayDataset:
    """The `split` of a map-style source as a model with `preprocessing` sees it: every image
    resized whole to its resolution (`vitkit.data.model_input`), whatever the images' own sizes,
    so that every command reads any folder and counts the same pixels. Shards, which only
    stream, are refused: the evaluations need every image and label at hand."""
    dataset = open_dataset(
        source,
        split=split,
        image_size=preprocessing.resolution,
        fit=whole(preprocessing.interpolation),
        skip_bad=skip_bad,
        download=download,
        cache_dir=cache_dir,
    )
    if not isinstance(dataset, ArrayDataset):
        raise DataError(f"{source}: evaluation reads map-style datasets (not shards)")
    return at_resolution(dataset, preprocessing)  # CIFAR's arrays keep their 32x32


def open_image_by_image(source: str | Path, split: str) -> LazyImageFolder | ArrayDataset:
    """The `split` of a map-style source with every image at its stored size: an image folder
    lazily, image by image, so its images may differ in size and need not fit the disk cache
    (`write_shards` and the evaluation at each image's aspect ratio read it so); anything else
    `open_dataset` reads (CIFAR by name or release, .tar/.tar.gz of an image tree) through its
    decoded array. Shards, which only stream, are refused."""
    path = Path(source)
    if path.is_dir() and (path / split).is_dir():
        return LazyImageFolder(scan_folder(path, split))
    dataset = open_dataset(source, split=split)
    if not isinstance(dataset, ArrayDataset):
        raise DataError(f"{source}: shards only stream; this reads folders, archives and CIFAR")
    return dataset
