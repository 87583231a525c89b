"""WebDataset shards: written from an ArrayDataset, read back whole, per rank, over HTTP."""

from __future__ import annotations

import functools
import io
import json
import shutil
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vitkit.cli.main import main
from vitkit.data.arrays import ArrayDataset
from vitkit.data.images import DataError
from vitkit.data.shards import ShardDataset, write_shards

NUM_IMAGES = 103
SHARD_SIZE = 10
NUM_SHARDS = 11  # ceil(103 / 10)
CLASSES = ("cat", "dog", "fish")
FOLDER_CLASSES = ("ants", "bees")

Sample = tuple[bytes, tuple[int, ...], int]


def multiset(pairs: Iterable[tuple[torch.Tensor, int]]) -> Counter[Sample]:
    """Samples as comparable (pixels, shape, label) keys, counted; the images are all distinct."""
    return Counter((image.numpy().tobytes(), tuple(image.shape), label) for image, label in pairs)


@pytest.fixture(scope="module")
def dataset() -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(
        images=rng.integers(0, 256, (NUM_IMAGES, 8, 8, 3), dtype=np.uint8),
        labels=rng.integers(0, len(CLASSES), NUM_IMAGES),
        classes=CLASSES,
    )


@pytest.fixture(scope="module")
def expected(dataset: ArrayDataset) -> Counter[Sample]:
    return multiset(dataset[index] for index in range(len(dataset)))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory, dataset: ArrayDataset) -> Path:
    out_dir = tmp_path_factory.mktemp("shards")
    write_shards(dataset, out_dir, classes=CLASSES, shard_size=SHARD_SIZE, seed=0)
    return out_dir


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Requests are not worth a line each in the test output."""


@pytest.fixture
def http_url(shard_dir: Path) -> Iterator[str]:
    """The shard folder served over HTTP by a real server on 127.0.0.1, stopped afterwards."""
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(shard_dir))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_index_lists_shards_counts_total_and_classes(shard_dir: Path) -> None:
    names = [f"shard-{number:06d}.tar" for number in range(NUM_SHARDS)]
    assert sorted(path.name for path in shard_dir.iterdir()) == sorted([*names, "index.json"])
    assert json.loads((shard_dir / "index.json").read_text()) == {
        "pattern": "shard-{000000..000010}.tar",
        "shards": [{"name": name, "samples": 10} for name in names[:-1]]
        + [{"name": names[-1], "samples": 3}],
        "total": NUM_IMAGES,
        "classes": list(CLASSES),
        "image_format": "png",
        "seed": 0,
    }


def test_same_samples_and_seed_give_identical_shards(
    tmp_path: Path, dataset: ArrayDataset, shard_dir: Path
) -> None:
    write_shards(dataset, tmp_path, classes=CLASSES, shard_size=SHARD_SIZE, seed=0)
    for path in shard_dir.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_refuses_to_write_over_existing_shards(dataset: ArrayDataset, shard_dir: Path) -> None:
    with pytest.raises(DataError, match="already holds shards"):
        write_shards(dataset, shard_dir, classes=CLASSES, shard_size=SHARD_SIZE, seed=1)


def test_no_temporary_file_is_left_by_a_failed_or_a_killed_write(
    tmp_path: Path, dataset: ArrayDataset
) -> None:
    with pytest.raises(DataError, match="outside the 1 classes"):  # labels 1 and 2: mid-shard
        write_shards(dataset, tmp_path, classes=CLASSES[:1], shard_size=SHARD_SIZE, seed=0)
    assert list(tmp_path.iterdir()) == []
    killed = tmp_path / ".shard-000000.tar.0123456789abcdef.tmp"  # a run killed mid-shard
    killed.write_bytes(b"half a shard")
    write_shards(dataset, tmp_path, classes=CLASSES, shard_size=SHARD_SIZE, seed=0)
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())


def test_reading_back_gives_every_sample_once_pixel_identical(
    shard_dir: Path, dataset: ArrayDataset, expected: Counter[Sample]
) -> None:
    shards = ShardDataset(shard_dir)
    assert shards.classes == CLASSES
    assert shards.num_samples == NUM_IMAGES
    samples = list(shards)
    assert multiset(samples) == expected
    # Shuffled across the whole set when written, not stored in the source's order.
    assert [label for _, label in samples] != dataset.labels.tolist()
    # A brace pattern of shard paths reads the same samples, without an index.
    from_pattern = ShardDataset(str(shard_dir / "shard-{000000..000010}.tar"))
    assert from_pattern.classes is None and from_pattern.num_samples is None
    assert multiset(from_pattern) == expected


def test_ranks_and_dataloader_workers_read_disjoint_parts_covering_all(
    shard_dir: Path, expected: Counter[Sample]
) -> None:
    parts = []
    for rank in range(2):
        shards = ShardDataset(shard_dir, rank=rank, world_size=2)
        loader = DataLoader(shards, batch_size=None, num_workers=2)
        parts.append(multiset(loader))
    assert not parts[0].keys() & parts[1].keys()
    assert parts[0] + parts[1] == expected
    # 11 shards: rank 0 reads shards 0, 2, ..., 10 (6, the last holding 3 samples), rank 1 five.
    assert (parts[0].total(), parts[1].total()) == (53, 50)


def test_a_rank_without_shards_is_an_error(shard_dir: Path) -> None:
    with pytest.raises(DataError, match=r"index\.json: 11 shards for 12 ranks"):
        ShardDataset(shard_dir, rank=0, world_size=12)


def test_shuffle_buffer_changes_order_but_not_samples(
    shard_dir: Path, expected: Counter[Sample]
) -> None:
    def pixel_order(shards: ShardDataset) -> list[bytes]:
        return [image.numpy().tobytes() for image, _ in shards]

    plain = pixel_order(ShardDataset(shard_dir))
    shuffled = ShardDataset(shard_dir, shuffle_buffer=32, seed=1)
    first = pixel_order(shuffled)
    assert first != plain
    assert multiset(shuffled) == expected
    assert pixel_order(shuffled) == first  # same seed and epoch: same order
    shuffled.set_epoch(1)
    assert pixel_order(shuffled) != first


@pytest.mark.usefixtures("online")
def test_reading_over_http_gives_the_same_samples(http_url: str, expected: Counter[Sample]) -> None:
    from_index = ShardDataset(f"{http_url}/index.json")
    assert from_index.classes == CLASSES
    assert multiset(from_index) == expected
    assert multiset(ShardDataset(f"{http_url}/shard-{{000000..000010}}.tar")) == expected


@pytest.mark.usefixtures("online")
def test_missing_shard_over_http_names_it(http_url: str) -> None:
    with pytest.raises(DataError, match="shard-000099.tar"):
        list(ShardDataset(f"{http_url}/shard-000099.tar"))


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def png(size: tuple[int, int] = (4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_sample_without_cls_names_shard_and_key(tmp_path: Path) -> None:
    path = write_tar(
        tmp_path / "shard-000000.tar",
        {"a.png": png(), "a.cls": b"0", "b.png": png()},
    )
    with pytest.raises(DataError, match=r"shard-000000\.tar, sample b: no cls"):
        list(ShardDataset(str(path)))


def test_corrupt_tar_names_the_shard(tmp_path: Path) -> None:
    path = tmp_path / "shard-000007.tar"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=r"shard-000007\.tar: cannot read the shard"):
        list(ShardDataset(str(path)))


def test_truncated_or_shortened_shard_names_it(tmp_path: Path, shard_dir: Path) -> None:
    copy = shutil.copytree(shard_dir, tmp_path / "shards")
    victim = copy / "shard-000003.tar"
    original = victim.read_bytes()
    # Cut at a 512-byte block boundary, where tarfile's stream reader just stops.
    victim.write_bytes(original[: 5 * 1024])
    with pytest.raises(DataError, match=r"shard-000003\.tar"):
        list(ShardDataset(copy))
    # A valid tar holding fewer samples than the index says: only the count can tell.
    with tarfile.open(fileobj=io.BytesIO(original)) as tar:
        files = {member.name: tar.extractfile(member).read() for member in tar.getmembers()[:4]}
    write_tar(victim, files)
    with pytest.raises(DataError, match=r"shard-000003\.tar: 2 samples but the index lists 10"):
        list(ShardDataset(copy))


def run_shard_command(*args: str | Path) -> int:
    """`vitkit shard ARGS`, through the CLI's entry point."""
    return main(["shard", *map(str, args)])


def test_shard_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    source = tmp_path / "data"
    originals = []
    for class_name, count in zip(FOLDER_CLASSES, (3, 4)):
        folder = source / "train" / class_name
        folder.mkdir(parents=True)
        for number in range(count):
            pixels = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{number}.png")
            originals.append(
                (torch.from_numpy(pixels).permute(2, 0, 1), FOLDER_CLASSES.index(class_name))
            )
    out_dir = tmp_path / "shards"

    code = run_shard_command(source, out_dir, "--shard-size", 3, "--seed", 5)

    assert code == 0
    assert "7 images of 2 classes in 3 shards" in capsys.readouterr().out
    shards = ShardDataset(out_dir)
    assert shards.classes == FOLDER_CLASSES
    assert multiset(shards) == multiset(originals)
    resized = ShardDataset(out_dir, image_size=(8, 10))
    assert {tuple(image.shape) for image, _ in resized} == {(3, 8, 10)}
    capsys.readouterr()
    code = run_shard_command(
        source, tmp_path / "other", "--shard-size", 3, "--seed", 5, "--split", "val"
    )
    error = capsys.readouterr().err
    assert code == 2 and "no split 'val' in it (folders found: ['train'])" in error


def test_shard_command_reads_archives_through_open_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(2)
    source = tmp_path / "tree"
    for class_name in FOLDER_CLASSES:
        (source / "test" / class_name).mkdir(parents=True)
        for number in range(3):
            pixels = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(source / "test" / class_name / f"{number}.png")
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=".")
    code = run_shard_command(archive, tmp_path / "shards", "--shard-size", 4, "--seed", 0,
                             "--split", "test")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    shards = ShardDataset(tmp_path / "shards")
    assert shards.classes == FOLDER_CLASSES and len(list(shards)) == 6


def test_everything_but_shards_works_without_webdataset() -> None:
    """webdataset is imported only by the shard code that uses it: the GPU machine's Python,
    for one, has no webdataset, and training, evaluation and the commands must still import."""
    blocked = "import sys; sys.modules['webdataset'] = sys.modules['braceexpand'] = None; "
    modules = "import vitkit.cli.main, vitkit.training, vitkit.evaluation, vitkit.analysis"
    completed = subprocess.run([sys.executable, "-c", blocked + modules], capture_output=True,
                               text=True, timeout=120)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
