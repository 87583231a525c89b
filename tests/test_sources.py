"""open_dataset picks the right reader for every kind of source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_cifar import pack, write_cifar10
from test_folder import make_tar, make_tree

from vitkit.data import ArrayDataset, DataError, ShardDataset, open_dataset, write_shards

from helpers import SHARED


def test_cifar_by_name_folder_and_archive(tmp_path: Path) -> None:
    expected = write_cifar10(tmp_path / "cache" / "cifar")  # where the name is looked for
    by_name = open_dataset("cifar10", split="test", cache_dir=tmp_path / "cache")
    assert isinstance(by_name, ArrayDataset)
    np.testing.assert_array_equal(by_name.labels, expected["test"][1])

    folder = tmp_path / "cache" / "cifar"
    for source in (folder, folder / "cifar-10-batches-py"):
        dataset = open_dataset(source, split="train")
        np.testing.assert_array_equal(dataset.labels, expected["train"][1])
    with pytest.raises(DataError, match="'train' and 'test', not 'val'"):
        open_dataset(folder, split="val")

    archive = pack(tmp_path / "cache" / "cifar", "cifar-10-batches-py", "cifar-10-python.tar.gz")
    moved = tmp_path / "elsewhere" / archive.name
    moved.parent.mkdir()
    archive.rename(moved)
    np.testing.assert_array_equal(open_dataset(moved, split="test").images, by_name.images)


def test_image_folder_and_its_archives_give_the_same_arrays(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    from_folder = open_dataset(tree, split="train", cache_dir=cache, image_size=(8, 8))
    for suffix in (".tar", ".tar.gz"):
        archive = make_tar(tree, tmp_path / f"tree{suffix}")
        from_archive = open_dataset(archive, split="train", cache_dir=cache, image_size=(8, 8))
        assert from_archive.classes == from_folder.classes
        np.testing.assert_array_equal(np.sort(from_archive.labels), np.sort(from_folder.labels))
        assert from_archive.images.shape == from_folder.images.shape


def test_shards_by_folder_and_pattern(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dataset = ArrayDataset(
        images=rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8),
        labels=np.arange(12) % 3,
        classes=("a", "b", "c"),
    )
    write_shards(dataset, tmp_path / "shards", classes=dataset.classes, shard_size=5, seed=0)
    by_folder = open_dataset(tmp_path / "shards")
    by_pattern = open_dataset(str(tmp_path / "shards" / "shard-{000000..000002}.tar"))
    assert isinstance(by_folder, ShardDataset) and isinstance(by_pattern, ShardDataset)
    assert by_folder.classes == dataset.classes
    assert sorted(label for _, label in by_folder) == sorted(dataset.labels.tolist())
    assert len(list(by_pattern)) == 12


def test_unknown_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder, and not a dataset name"):
        open_dataset(tmp_path / "nothing")
    odd = tmp_path / "notes.txt"
    odd.write_text("hello")
    with pytest.raises(DataError, match="not a dataset vitkit can read"):
        open_dataset(odd)


def test_shared_cifar10_tarball_test_split(tmp_path: Path) -> None:
    """The real 10,000 test JPEGs, decoded once into the cache and memory-mapped after."""
    tarball = SHARED / "data" / "cifar10-jpg.tar.gz"
    dataset = open_dataset(tarball, split="test", cache_dir=tmp_path)
    assert len(dataset) == 10_000 and dataset.image_size == (32, 32)
    assert dataset.classes[:3] == ("airplane", "automobile", "bird")
    assert np.bincount(dataset.labels).tolist() == [1000] * 10
    assert isinstance(dataset.images, np.memmap) or isinstance(
        open_dataset(tarball, split="test", cache_dir=tmp_path).images, np.memmap
    )


def test_train_and_test_must_share_classes(tmp_path: Path) -> None:
    from PIL import Image

    from vitkit.data import open_train_test

    for split, classes in (("train", ("cat", "dog")), ("test", ("cat", "emu"))):
        for name in classes:
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / "tree" / split / name / "0.png")
    with pytest.raises(DataError, match=r"only in train: \['dog'\]; only in test: \['emu'\]"):
        open_train_test(tmp_path / "tree", cache_dir=tmp_path / "cache")
    (tmp_path / "tree" / "test" / "emu").rename(tmp_path / "tree" / "test" / "dog")
    train, test = open_train_test(tmp_path / "tree", cache_dir=tmp_path / "cache")
    assert train.classes == test.classes == ("cat", "dog")
