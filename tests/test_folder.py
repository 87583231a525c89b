"""Image folders and tar archives of them, checked against torchvision's ImageFolder."""

from __future__ import annotations

import dataclasses
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import pil_loader

from vitkit.data.fitting import fit_to_size
from vitkit.data.folder import (
    cached_image_folder,
    check_same_classes,
    iter_decoded,
    scan,
    scan_folder,
    scan_tar,
)
from vitkit.data.images import DataError

from helpers import CIFAR_TAR

# Mixed case on purpose: the class order must be Python's sorted(), as torchvision's.
CLASSES = ("Zebra", "cat", "dog")
# (file name, Pillow mode) per class; the sub-folder checks that class folders are read recursively.
FILES = [
    ("rgb.png", "RGB"),
    ("gray.png", "L"),
    ("palette.png", "P"),
    ("alpha.png", "RGBA"),
    ("photo.jpg", "RGB"),
    ("sub/gray.jpeg", "L"),
]
SIZE = (10, 12)  # (H, W) of every image in the tree


def save(path: Path, mode: str, size_hw: tuple[int, int], seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size_hw, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    if mode == "P":
        image = image.convert("RGB").quantize(16)
    else:
        image = image.convert(mode)
    image.save(path)
    return path


def make_tree(root: Path) -> Path:
    """train and test splits with every class and file kind, plus a file that is not an image."""
    seed = 0
    for split in ("train", "test"):
        for name in CLASSES:
            for file, mode in FILES:
                seed += 1
                save(root / split / name / file, mode, SIZE, seed)
            (root / split / name / "notes.txt").write_text("not an image")
    return root


def make_tar(tree: Path, archive: Path, top: str = "") -> Path:
    """`tree` as an archive, its splits under `top` ("" for none, "./" as `tar -C tree .` does)."""
    with tarfile.open(archive, "w:gz" if archive.name.endswith("gz") else "w") as tar:
        for path in sorted(tree.rglob("*")):
            tar.add(path, arcname=top + path.relative_to(tree).as_posix(), recursive=False)
    return archive


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")


FORMS = ["folder", "tar", "tar.gz", "tgz-under-top-folder", "tar-dot-slash"]


def as_form(tree: Path, form: str) -> tuple[Path, str]:
    """The tree in `form`, and what archive member names start with."""
    archives = {
        "tar": ("tree.tar", ""),
        "tar.gz": ("tree.tar.gz", ""),
        "tgz-under-top-folder": ("tree.tgz", "mini/"),
        "tar-dot-slash": ("tree.tar", "./"),
    }
    if form == "folder":
        return tree, ""
    name, top = archives[form]
    return make_tar(tree, tree.parent / name, top), top


def relative_labels(source, tree: Path, top: str) -> dict[str, int]:
    """file -> label, with files named relative to the tree for either form."""
    if source.archive:
        return {name.removeprefix(top): label for name, label in source.entries}
    return {Path(name).relative_to(tree).as_posix(): label for name, label in source.entries}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_classes_and_labels_match_torchvision(tree: Path, form: str, split: str) -> None:
    path, top = as_form(tree, form)
    source = scan(path, split)
    reference = ImageFolder(tree / split)
    assert source.classes == tuple(reference.classes) == tuple(sorted(CLASSES))
    expected = {Path(file).relative_to(tree).as_posix(): label for file, label in reference.samples}
    assert relative_labels(source, tree, top) == expected
    assert len(source.entries) == len(CLASSES) * len(FILES)


@pytest.mark.parametrize("form", FORMS)
def test_pixels_equal_torchvisions_loader(tree: Path, form: str) -> None:
    path, top = as_form(tree, form)
    source = scan(path, "train")
    decoded = list(iter_decoded(source, workers=2))
    assert len(decoded) == len(source.entries)
    for (name, label), (image, decoded_label) in zip(source.entries, decoded):
        file = tree / name.removeprefix(top) if source.archive else Path(name)
        assert decoded_label == label
        assert image.dtype == np.uint8 and image.shape == (*SIZE, 3)
        np.testing.assert_array_equal(image, np.asarray(pil_loader(str(file))), err_msg=name)


def test_decoding_order_does_not_depend_on_threads(tree: Path) -> None:
    source = scan_folder(tree, "train")
    one = [(image.tobytes(), label) for image, label in iter_decoded(source, workers=1)]
    four = [(image.tobytes(), label) for image, label in iter_decoded(source, workers=4)]
    assert one == four


@pytest.mark.parametrize("size_wh", [(40, 30), (30, 50), (17, 16), (16, 16), (8, 9)])
def test_square_resize_is_torchvisions_resize_and_center_crop(
    tmp_path: Path, size_wh: tuple[int, int]
) -> None:
    image = Image.open(save(tmp_path / "x.png", "RGB", size_wh[::-1], seed=3))
    expected = TF.center_crop(TF.resize(image, 16, TF.InterpolationMode.BILINEAR), 16)
    np.testing.assert_array_equal(np.asarray(fit_to_size(image, (16, 16))), np.asarray(expected))


@pytest.mark.parametrize("size_wh", [(40, 30), (30, 50), (7, 7)])
def test_rectangular_resize_covers_and_crops(tmp_path: Path, size_wh: tuple[int, int]) -> None:
    image = Image.new("RGB", size_wh, (10, 200, 30))
    result = np.asarray(fit_to_size(image, (12, 20)))
    assert result.shape == (12, 20, 3)
    assert (result == (10, 200, 30)).all()


def test_image_size_resizes_only_odd_images(tree: Path) -> None:
    odd = save(tree / "train" / "cat" / "big.png", "RGB", (30, 40), seed=9)
    source = scan_folder(tree, "train")
    images = {
        name: image
        for (name, _), (image, _) in zip(source.entries, iter_decoded(source, image_size=SIZE))
    }
    assert all(image.shape == (*SIZE, 3) for image in images.values())
    expected = fit_to_size(Image.open(odd), SIZE)
    np.testing.assert_array_equal(images[str(odd)], np.asarray(expected))
    same = tree / "train" / "cat" / "rgb.png"
    np.testing.assert_array_equal(images[str(same)], np.asarray(pil_loader(str(same))))


@pytest.mark.parametrize("form", ["folder", "tar.gz"])
def test_different_sizes_without_image_size_name_the_file(tree: Path, form: str) -> None:
    save(tree / "train" / "dog" / "wide.png", "RGB", (10, 30), seed=5)
    source = scan(as_form(tree, form)[0], "train")
    with pytest.raises(DataError, match="image_size") as error:
        list(iter_decoded(source))
    message = str(error.value)
    assert "dog/wide.png" in message and "10x30" in message and "10x12" in message


def add_bad_files(tree: Path) -> list[str]:
    """A truncated PNG and a text file named .jpg, as names relative to the tree."""
    truncated = save(tree / "train" / "cat" / "truncated.png", "RGB", SIZE, seed=7)
    truncated.write_bytes(truncated.read_bytes()[:60])
    (tree / "train" / "dog" / "text.jpg").write_text("this is not a jpeg")
    return ["train/cat/truncated.png", "train/dog/text.jpg"]


@pytest.mark.parametrize("form", ["folder", "tar", "tar.gz"])
def test_unreadable_images_are_named(tree: Path, form: str) -> None:
    bad = add_bad_files(tree)
    path, _ = as_form(tree, form)
    with pytest.raises(DataError, match="cannot read the image") as error:
        list(iter_decoded(scan(path, "train")))
    message = str(error.value)
    assert bad[0] in message  # the first bad file in reading order
    if form != "folder":
        assert str(path) in message and "member" in message


@pytest.mark.parametrize("form", ["folder", "tar.gz"])
def test_skip_bad_skips_counts_and_warns(tree: Path, form: str) -> None:
    bad = add_bad_files(tree)
    path, top = as_form(tree, form)
    source = scan(path, "train")
    decoded = iter_decoded(source, skip_bad=True)
    with pytest.warns(UserWarning, match="skipped 2 unreadable images"):
        images = list(decoded)
    assert len(images) == len(source.entries) - 2
    skipped = sorted(Path(name).as_posix() for name in decoded.skipped)
    assert [name.removeprefix(top) for name in skipped] == [
        (name if form != "folder" else (tree / name).as_posix()) for name in bad
    ]
    assert all("cannot read the image" in why for why in decoded.skipped.values())


@pytest.mark.parametrize("form", ["folder", "tar"])
def test_missing_split_lists_the_splits_found(tree: Path, form: str) -> None:
    path, _ = as_form(tree, form)
    with pytest.raises(DataError, match="no split 'val'") as error:
        scan(path, "val")
    assert str(path) in str(error.value)
    assert "test" in str(error.value) and "train" in str(error.value)


def test_split_without_class_folders_is_empty(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        scan_folder(tmp_path, "train")


def test_archive_without_images_is_empty(tmp_path: Path) -> None:
    (tmp_path / "tree" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "tree" / "train" / "cat" / "notes.txt").write_text("no images")
    archive = make_tar(tmp_path / "tree", tmp_path / "empty.tar")
    with pytest.raises(DataError, match="no images") as error:
        scan_tar(archive, "train")
    assert str(archive) in str(error.value)


@pytest.mark.parametrize("form", ["folder", "tar"])
def test_empty_class_folder_is_named(tree: Path, form: str) -> None:
    (tree / "test" / "empty_class").mkdir()
    (tree / "test" / "empty_class" / "notes.txt").write_text("no images")
    path, _ = as_form(tree, form)
    with pytest.raises(DataError, match="empty_class"):
        scan(path, "test")


def test_different_class_lists_are_named(tree: Path) -> None:
    save(tree / "test" / "horse" / "a.png", "RGB", SIZE, seed=1)
    train, test = scan_folder(tree, "train"), scan_folder(tree, "test")
    with pytest.raises(DataError, match="different classes") as error:
        check_same_classes(train.classes, test.classes, where=tree)
    assert "only in test: ['horse']" in str(error.value)
    check_same_classes(train.classes, train.classes, where=tree)


def test_neither_folder_nor_archive(tmp_path: Path) -> None:
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="neither a folder nor"):
        scan(tmp_path / "data.zip", "train")
    with pytest.raises(DataError, match="no such folder"):
        scan(tmp_path / "missing", "train")


def test_damaged_archive_is_named(tmp_path: Path) -> None:
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b this is not gzip data")
    with pytest.raises(DataError, match="cannot read the archive") as error:
        scan(archive, "train")
    assert str(archive) in str(error.value)


def test_cached_image_folder_decodes_once(tree: Path, tmp_path: Path, monkeypatch) -> None:
    archive = make_tar(tree, tmp_path / "tree.tar.gz")
    first = cached_image_folder(archive, "train", cache_dir=tmp_path / "cache")
    assert isinstance(first.images, np.memmap)
    assert first.classes == tuple(sorted(CLASSES))
    source = scan(archive, "train")
    expected = np.stack([image for image, _ in iter_decoded(source)])
    np.testing.assert_array_equal(first.images, expected)

    def no_scan(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr("vitkit.data.folder.scan", no_scan)
    again = cached_image_folder(archive, "train", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.labels, first.labels)


def test_changing_a_folder_file_invalidates_its_cache(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    before = cached_image_folder(tree, "test", cache_dir=cache)
    changed = tree / "test" / "cat" / "rgb.png"
    save(changed, "RGB", SIZE, seed=99)
    os.utime(changed, ns=(1, 1))  # also a new mtime should the rewrite land in the same tick
    after = cached_image_folder(tree, "test", cache_dir=cache)
    index = [name for name, _ in scan_folder(tree, "test").entries].index(str(changed))
    np.testing.assert_array_equal(after.images[index], np.asarray(pil_loader(str(changed))))
    assert not np.array_equal(before.images[index], after.images[index])


@pytest.mark.skipif(not CIFAR_TAR.is_file(), reason=f"{CIFAR_TAR} is not there")
def test_shared_cifar_tarball_first_test_class() -> None:
    source = scan_tar(CIFAR_TAR, "test")
    assert source.classes == (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    )  # fmt: skip
    assert np.bincount([label for _, label in source.entries]).tolist() == [1000] * 10
    airplanes = dataclasses.replace(source, entries=source.entries[:1000])
    assert {label for _, label in airplanes.entries} == {0}
    images = np.stack([image for image, _ in iter_decoded(airplanes)])
    assert images.shape == (1000, 32, 32, 3)
    assert 60 < images.mean() < 200  # real photographs, not blank
