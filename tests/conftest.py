"""Shared test fixtures: Google's official reference files, a real HTTP server on 127.0.0.1 for the
download tests (datasets and pretrained weights), a slice of CIFAR-10, a tiny image tree and a new
user's own image folder, with and without splits. What tests import by name is in helpers.py.

Run in parallel (`pytest -n auto`, as scripts/test.sh does), each worker gets its share of the
cores as torch threads, and so do the processes a test starts; slow tests go first, so that the
last ones to finish are short."""

from __future__ import annotations

import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import (
    CIFAR_TAR,
    CLASSES,
    OFFICIAL_FIXTURE,
    FileServer,
    merge_splits,
    write_user_folder,
)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, one worker's share of the cores: with torch's default of every core
    in every worker, the workers' threads fight over the cores and the suite is slower
    (benchmarks/RESULTS.md, "The test suite's time")."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for the processes tests start
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (otherwise in file order): a 60 s test started last would leave the other
    workers idle while it runs."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def official_fixture() -> Path:
    """Checkpoint, inputs and logits made with Google's vit_jax code (see its meta.json)."""
    if not (OFFICIAL_FIXTURE / "params.npz").is_file():
        pytest.fail(
            f"Google's reference fixture is missing at {OFFICIAL_FIXTURE}; "
            "set VITKIT_SHARED to the folder that holds fixtures/official-vit-jax"
        )
    return OFFICIAL_FIXTURE


@pytest.fixture(scope="session")
def cifar_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-balanced slice of the shared CIFAR-10 JPEG archive as a `<split>/<class>/` folder:
    200 training and 50 test images per class (read in one pass over the archive)."""
    if not CIFAR_TAR.is_file():
        pytest.fail(f"the shared CIFAR-10 archive is missing at {CIFAR_TAR}")
    wanted = {"train": 200, "test": 50}
    root = tmp_path_factory.mktemp("cifar-subset")
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_TAR) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3:
                continue
            split, label = parts[-3], parts[-2]
            if split not in wanted or taken.get((split, label), 0) >= wanted[split]:
                continue
            taken[(split, label)] = taken.get((split, label), 0) + 1
            target = root / split / label / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
    return root


@pytest.fixture(scope="session")
def user_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Issue 30's new user's images as `<split>/<class>/` (helpers.write_user_folder): CIFAR-10
    photos of 4 classes, `sports car` and `Kätzchen` among them, at sizes from 24 to 96 px, half
    not square, as JPEG and PNG in RGB, L, RGBA and CMYK, with a notes.txt and a .DS_Store."""
    if not CIFAR_TAR.is_file():
        pytest.fail(f"the shared CIFAR-10 archive is missing at {CIFAR_TAR}")
    return write_user_folder(tmp_path_factory.mktemp("user-folder"))


@pytest.fixture(scope="session")
def user_folder_flat(user_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same files as `user_folder` in one `<class>/` tree, with no train or test folder."""
    return merge_splits(user_folder, tmp_path_factory.mktemp("user-folder-flat"))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    server = FileServer(root)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.released.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide offline mode themselves, and reach 127.0.0.1 without any proxy."""
    monkeypatch.delenv("VITKIT_OFFLINE", raising=False)
    for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class folder dataset of 16x16 images whose colour gives the class: what the training
    tests learn from in seconds."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for split, count in (("train", 48), ("test", 12)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 100, (16, 16, 3), dtype=np.uint8)
                pixels[..., label] += 120
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


@pytest.fixture
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded-data caches in the test's own folder, not the user's."""
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
