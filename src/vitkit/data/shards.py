"""WebDataset tar shards: image datasets too large for one disk, streamed shard by shard.

A shard is a plain tar of `<key>.png` (or `.jpg`) and `<key>.cls` pairs, the WebDataset layout,
so `tar`, any WebDataset reader and any static HTTP server can handle it. `index.json` beside the
shards records what a tar cannot say cheaply: the class names and how many samples each shard
holds. Writing shuffles the whole set once, because a streaming reader can only shuffle within a
buffer: shards cut from a class-sorted source would otherwise give class-sorted batches.

Shards and their index often come from someone else's server, so reading treats them as data:
an index can only point at shards beside it, tar headers and members are bounded
(`vitkit.data.archives`), images are held to the pixel limit, and a server that stays silent, or
takes longer for its headers, than `vitkit.download.http_timeout()` fails (`vitkit.http_deadline`).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, Protocol
from urllib.parse import unquote, urljoin, urlparse

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from vitkit.data.archives import ARCHIVE_ERRORS, is_gzipped, members, open_tar, read_member
from vitkit.data.images import IMAGE_EXTENSIONS, load_rgb
from vitkit.download import http_timeout
from vitkit.errors import DataError
from vitkit.http_deadline import open_url
from vitkit.io import atomic_open, regular_file, temp_files

ImageFormat = Literal["png", "jpg"]
ImageLike = np.ndarray | torch.Tensor | bytes

INDEX_NAME = "index.json"
SHARD_DIGITS = 6
SHARD_PREFIX = "shard-"
# Near-lossless for training data at about a third of the bytes of quality 100.
JPEG_QUALITY = 95
# Bytes an index.json may take: a million shards' entries fit in a third of it.
MAX_INDEX_BYTES = 64 << 20
# Digits of a class number in a .cls file; more would be no class of any dataset.
MAX_LABEL_DIGITS = 9
# Pillow's extensions for the formats an encoded image may arrive in, where they differ.
FORMAT_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg"}


class IndexedSamples(Protocol):
    """Random access to (image, label) pairs, e.g. an `ArrayDataset`.

    An image is a (3, H, W) uint8 tensor (vitkit's dataset layout), an (H, W, 3) uint8 array, or
    the bytes of an encoded image file.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[ImageLike, int]: ...


def shard_name(number: int) -> str:
    return f"{SHARD_PREFIX}{number:0{SHARD_DIGITS}d}.tar"


def encode_image(image: ImageLike, image_format: ImageFormat) -> tuple[str, bytes]:
    """(file extension, file bytes) of one image.

    Arrays are encoded in `image_format`; encoded files are stored as they are, under the
    extension of their own format, so a JPEG is never compressed a second time.
    """
    if isinstance(image, bytes):
        try:
            with Image.open(io.BytesIO(image)) as opened:
                detected = opened.format or ""
        except (OSError, SyntaxError, ValueError) as error:
            raise DataError(f"not an image file: {error}") from error
        extension = FORMAT_EXTENSIONS.get(detected, detected.lower())
        if f".{extension}" not in IMAGE_EXTENSIONS:
            raise DataError(f"image format {detected!r} is not one datasets are read in")
        return extension, image
    if isinstance(image, torch.Tensor):
        image = image.permute(1, 2, 0).numpy(force=True)  # (3, H, W) -> (H, W, 3)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise DataError(f"images must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    if image_format == "jpg":
        Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(image).save(buffer, format="PNG")
    return image_format, buffer.getvalue()


def write_shards(
    samples: IndexedSamples,
    out_dir: str | Path,
    *,
    classes: Sequence[str],
    shard_size: int,
    seed: int,
    image_format: ImageFormat = "png",
    progress: bool = False,
) -> Path:
    """Write `samples` as `out_dir/shard-000000.tar`, ... plus `index.json`; return the index.

    Samples are shuffled across the whole set with `seed` before writing, by drawing a
    permutation of their indices: that needs random access (`len` and `[i]`) up front, e.g. an
    `ArrayDataset`, whose images are then read in the shuffled order. A one-pass stream could
    only be shuffled by holding all of it. Every shard holds `shard_size` samples but the last.

    Each shard is written under a hidden temporary name and renamed once complete, and the index
    last, so a crashed run never leaves a file that looks finished; the same samples and seed
    give byte-identical shards. `out_dir` must not hold shards or an index already.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    out_dir = Path(out_dir)
    total = len(samples)
    if total == 0:
        raise DataError("no samples to write")
    if (out_dir / INDEX_NAME).exists() or any(out_dir.glob(f"{SHARD_PREFIX}*.tar")):
        raise DataError(f"{out_dir}: already holds shards; delete them or choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in temp_files(out_dir, f"{SHARD_PREFIX}*.tar") + temp_files(out_dir, INDEX_NAME):
        stale.unlink(missing_ok=True)  # left by a run killed mid-write

    import webdataset as wds  # here, not at the top: reading a dataset never needs it

    order = np.random.default_rng(seed).permutation(total)
    counts: list[int] = []
    with tqdm(total=total, unit="img", desc="shards", disable=not progress) as bar:
        for start in range(0, total, shard_size):
            indices = order[start : start + shard_size]
            path = out_dir / shard_name(len(counts))
            # mtime fixed so that reruns give identical bytes (checksums, rsync).
            with atomic_open(path) as file, wds.TarWriter(file, encoder=False, mtime=0) as tar:
                for index in map(int, indices):
                    image, label = samples[index]
                    if not 0 <= int(label) < len(classes):
                        raise DataError(
                            f"sample {index}: label {label} outside the {len(classes)} classes"
                        )
                    try:
                        extension, data = encode_image(image, image_format)
                    except DataError as error:
                        raise DataError(f"sample {index}: {error}") from error
                    key = f"{index:09d}"
                    tar.write({"__key__": key, extension: data, "cls": str(int(label)).encode()})
                    bar.update()
            counts.append(len(indices))

    last = len(counts) - 1
    index = {
        "pattern": f"{SHARD_PREFIX}{{{0:0{SHARD_DIGITS}d}..{last:0{SHARD_DIGITS}d}}}.tar",
        "shards": [{"name": shard_name(n), "samples": c} for n, c in enumerate(counts)],
        "total": total,
        "classes": list(classes),
        "image_format": image_format,
        "seed": seed,
    }
    with atomic_open(out_dir / INDEX_NAME) as file:
        file.write(json.dumps(index, indent=1).encode())
    return out_dir / INDEX_NAME


def open_stream(location: str) -> IO[bytes]:
    """A binary stream of a shard: an http(s) URL through urllib, with `http_timeout()` as the
    most a connection may stay silent, a path through open() once it is known to be a regular
    file (a FIFO would block the read for ever).

    Any other scheme (`pipe:`, `s3:` and the rest) goes to webdataset's gopen, which runs
    commands for some; only brace patterns the user typed get there, never a shard an index
    names, which `_shard_location` turns into an http(s) URL or an absolute path.
    """
    scheme = urlparse(location).scheme
    if scheme in ("http", "https"):
        return open_url(location, timeout=http_timeout())
    if not scheme:
        return open(regular_file(location, error=DataError), "rb")
    import webdataset as wds

    return wds.gopen(location, "rb")


def _is_url(source: str) -> bool:
    return "://" in source


def _is_http(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def _read_index(url: str) -> tuple[list[str], dict[str, int], tuple[str, ...], int]:
    """From an index.json (a path or an http(s) URL): shard locations, each one's sample count,
    the classes and the total; every field checked, every location confined to the index's
    folder (`_shard_location`)."""
    index = _load_json(url)
    if not isinstance(index, dict):
        raise DataError(f"{url}: holds a JSON {type(index).__name__}, not a shard index object")
    entries = _list_field(index, "shards", url)
    classes = _list_field(index, "classes", url)
    total = _count(index.get("total"), f"{url}: total")
    if not all(isinstance(name, str) for name in classes):
        raise DataError(f"{url}: classes must be a list of names (text)")
    counts: dict[str, int] = {}  # location -> samples, in the index's order
    for position, entry in enumerate(entries):
        where = f"{url}: shards[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise DataError(f"{where}: needs a name (text) and a count of samples")
        location = _shard_location(url, entry["name"], where)
        if location in counts:
            raise DataError(f"{where}: {entry['name']!r} is listed twice")
        counts[location] = _count(entry.get("samples"), f"{where}: samples")
    if sum(counts.values()) != total:
        raise DataError(
            f"{url}: the shards' sample counts add up to {sum(counts.values())}, not {total}"
        )
    return list(counts), counts, tuple(classes), total


def _load_json(url: str) -> Any:
    """The JSON value in a file or at an http(s) URL of at most MAX_INDEX_BYTES."""
    timeout = http_timeout()
    try:
        if _is_http(url):
            stream = open_url(url, timeout=timeout)
        else:
            stream = open(url, "rb")
        with stream:
            text = stream.read(MAX_INDEX_BYTES + 1)
        if len(text) <= MAX_INDEX_BYTES:
            return json.loads(text)
    # ValueError: not JSON or not UTF-8; RecursionError: nested deeper than the parser goes.
    except (OSError, http.client.HTTPException, ValueError, RecursionError) as error:
        reason = f"{type(error).__name__}: {error}"
        raise DataError(f"{url}: not a readable shard index: {reason}") from error
    raise DataError(f"{url}: larger than the {MAX_INDEX_BYTES:,} bytes an index may take")


def _list_field(index: dict[str, Any], key: str, url: str) -> list[Any]:
    value = index.get(key)
    if not isinstance(value, list):
        raise DataError(f"{url}: {key} must be a list, found {type(value).__name__}")
    return value


def _count(value: object, where: str) -> int:
    """`value` if it is a whole number of samples (JSON true or 2.5 is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{where}: must be a count of samples (an integer >= 0), not {value!r:.40}")
    return value


def _shard_location(index: str, name: str, where: str) -> str:
    """Where the shard `name` from `index` lies: beside or below the index, or refused.

    An index is data from whoever wrote it, so its names choose no scheme (`pipe:` would run a
    command), no other host and no file outside the index's folder (`/etc/...`, `../..`). For an
    index served over http(s) a name may be a relative or an absolute URL under the index's own
    URL prefix; for a local index only a relative path, which becomes an absolute one.
    """
    if _is_http(index):
        location = urljoin(index, name)
        base, target = urlparse(index), urlparse(location)
        prefix = base.path.rsplit("/", 1)[0] + "/"
        components = unquote(target.path).replace("\\", "/").split("/")
        inside = (target.scheme, target.netloc) == (base.scheme, base.netloc)
        if inside and target.path.startswith(prefix) and ".." not in components:
            return location
        allowed = f"http(s) URLs under {base.scheme}://{base.netloc}{prefix}"
    else:
        path = PurePosixPath(name)
        if name and not urlparse(name).scheme and not path.is_absolute() and ".." not in path.parts:
            return os.path.normpath(os.path.join(os.path.abspath(os.path.dirname(index)), name))
        allowed = "paths relative to the index's folder, without .."
    raise DataError(f"{where}: refusing shard {name!r}: an index may only list {allowed}")


def _distributed_position(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): as given, else from torch.distributed when initialised, else (0, 1)."""
    if rank is None and world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1
    if rank is None or world_size is None:
        raise ValueError("give rank and world_size together, or neither")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
    return rank, world_size


class ShardDataset(IterableDataset):
    """(image (3, H, W) uint8, label) pairs streamed from WebDataset tar shards.

    `urls` is a folder written by `write_shards` or the path or URL of its index.json (then
    `classes` and `num_samples`, the size of the whole set, are known and every shard's count is
    checked, so a truncated shard fails instead of silently shrinking the epoch), or brace
    patterns of shards (`.../shard-{000000..000099}.tar`, local paths or http(s) URLs).

    An index is data: the shards it names must lie beside or below it (relative paths, or URLs
    under its own URL prefix), or it is refused with a DataError naming the entry. Patterns are
    taken as typed, since whoever types them could run anything anyway: they may name any path
    or URL, and other schemes, `pipe:` commands among them, go to webdataset's gopen.

    Every shard is read by exactly one (rank, DataLoader worker) per epoch: shard i goes to rank
    i % world_size, and the k-th shard of a rank to its worker k % num_workers. So there must be
    at least world_size shards (else DataError). For equal work the shard count should be a
    multiple of world_size * num_workers; otherwise some ranks read one shard more per epoch,
    and under DDP, where every rank must run the same number of steps, the training loop has to
    cap the steps per epoch; workers left without a shard yield nothing.

    With `shuffle_buffer` > 0 the shard order is permuted every epoch (with `seed` and the epoch,
    identically on every rank, so the split stays exact; call `set_epoch` before each epoch,
    which reaches workers unless they are persistent) and samples are drawn at random from a
    buffer of that many. `image_size` (height, width) resizes every image, so that shards of
    images of different sizes can be batched.
    """

    def __init__(
        self,
        urls: str | Path | Sequence[str | Path],
        *,
        shuffle_buffer: int = 0,
        seed: int = 0,
        image_size: tuple[int, int] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be at least 0, got {shuffle_buffer}")
        source = str(urls) if isinstance(urls, str | Path) else None
        if source is not None and not _is_url(source) and Path(source).is_dir():
            source = str(Path(source) / INDEX_NAME)
        self.classes: tuple[str, ...] | None = None
        self.num_samples: int | None = None
        self._counts: dict[str, int] = {}
        if source is not None and source.endswith(".json"):
            self.shards, self._counts, self.classes, self.num_samples = _read_index(source)
        else:
            from webdataset.shardlists import expand_urls

            patterns = [source] if source is not None else [str(url) for url in urls]
            self.shards = [shard for pattern in patterns for shard in expand_urls(pattern)]
        self.rank, self.world_size = _distributed_position(rank, world_size)
        if len(self.shards) < self.world_size:
            raise DataError(
                f"{source or ', '.join(map(str, urls))}: {len(self.shards)} shards for "
                f"{self.world_size} ranks: rank {self.world_size - 1} would read none; "
                "write smaller shards"
            )
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.image_size = image_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle differently in the next epoch (no effect without a shuffle buffer)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        shards = list(self.shards)
        if self.shuffle_buffer:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(shards)
        mine = shards[self.rank :: self.world_size][worker_id::num_workers]
        samples = (sample for url in mine for sample in self._read_shard(url))
        if self.shuffle_buffer:
            rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker_id}")
            import webdataset as wds

            # Encoded samples are buffered, not decoded ones: a few times less memory.
            buffer = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
            samples = buffer(samples)
        for sample in samples:
            yield self._decode(sample)

    def _read_shard(self, url: str) -> Iterator[_Sample]:
        """The samples of one shard, checked against the index's count where there is one."""
        expected = self._counts.get(url)
        count = 0
        try:
            with (
                open_stream(url) as stream,
                open_tar(stream, gzipped=is_gzipped(urlparse(url).path)) as tar,
            ):
                for sample in _samples(tar, url):
                    count += 1
                    if expected is not None and count > expected:
                        raise DataError(f"{url}: more samples than the {expected} the index lists")
                    yield sample
        except DataError:
            raise
        # ValueError (among ARCHIVE_ERRORS) also comes from gopen, on a scheme it does not know.
        except (*ARCHIVE_ERRORS, http.client.HTTPException) as error:
            raise DataError(f"{url}: cannot read the shard: {error}") from error
        if expected is not None and count != expected:
            raise DataError(
                f"{url}: {count} samples but the index lists {expected}; truncated or replaced?"
            )

    def _decode(self, sample: _Sample) -> tuple[torch.Tensor, int]:
        where = f"{sample.shard}, sample {sample.key}"
        if "cls" not in sample.files:
            raise DataError(f"{where}: no cls entry (the label)")
        images = [key for key in sample.files if f".{key}" in IMAGE_EXTENSIONS]
        if len(images) != 1:
            raise DataError(f"{where}: needs one image entry, found {images or 'none'}")
        text = sample.files["cls"].strip()
        if not text.isdigit() or len(text) > MAX_LABEL_DIGITS:
            raise DataError(f"{where}: cls is no class number: {text[:20]!r}")
        label = int(text)
        if self.classes is not None and label >= len(self.classes):
            raise DataError(f"{where}: label {label} outside the {len(self.classes)} classes")
        image = load_rgb(io.BytesIO(sample.files[images[0]]), name=where)
        if self.image_size is not None and image.size != self.image_size[::-1]:
            image = image.resize(self.image_size[::-1], Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1), label  # (H, W, 3) -> (3, H, W)


@dataclass
class _Sample:
    """The files of one sample, by extension (lower case, e.g. "png", "cls")."""

    key: str
    shard: str
    files: dict[str, bytes]


def _samples(tar: tarfile.TarFile, shard: str) -> Iterator[_Sample]:
    """The samples of a shard, WebDataset's layout: consecutive regular files sharing a key, the
    name up to the first dot of its last component. Names without one are skipped.

    A key that comes back after other samples would become a second, partial sample, and a file
    name twice in a sample would replace the first: both are refused, naming shard and key.
    """
    seen: set[str] = set()
    sample: _Sample | None = None
    for member in members(tar):
        split = _split_name(member.name) if member.isfile() else None
        if split is None:
            continue
        key, extension = split
        if sample is None or key != sample.key:
            if sample is not None:
                yield sample
            if key in seen:
                raise DataError(
                    f"{shard}: key {key!r} comes again after other samples (member "
                    f"{member.name!r}); a sample's files must be adjacent"
                )
            seen.add(key)
            sample = _Sample(key, shard, {})
        if extension in sample.files:
            raise DataError(f"{shard}: sample {key!r} holds {extension!r} twice ({member.name!r})")
        sample.files[extension] = read_member(tar, member, where=f"{shard}: {member.name}")
    if sample is not None:
        yield sample


def _split_name(name: str) -> tuple[str, str] | None:
    """(key, lower-case extension) of a member name, or None when its file name has no stem or
    no extension ("a/b.seg.png" gives ("a/b", "seg.png"))."""
    folder, _, file_name = name.rpartition("/")
    stem, dot, extension = file_name.partition(".")
    if not stem or not dot:
        return None
    return f"{folder}/{stem}" if folder else stem, extension.lower()
