"""Shared test fixtures: where ../shared lives, and Google's official reference files."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

SHARED = Path(
    os.environ.get("VITKIT_SHARED", Path(__file__).resolve().parents[1].parent / "shared")
)
OFFICIAL_FIXTURE = SHARED / "fixtures" / "official-vit-jax" / "tiny_gap_repr"


@pytest.fixture(scope="session")
def official_fixture() -> Path:
    """Checkpoint, inputs and logits made with Google's vit_jax code (see its meta.json)."""
    if not (OFFICIAL_FIXTURE / "params.npz").is_file():
        pytest.fail(
            f"Google's reference fixture is missing at {OFFICIAL_FIXTURE}; "
            "set VITKIT_SHARED to the folder that holds fixtures/official-vit-jax"
        )
    return OFFICIAL_FIXTURE


CIFAR_TAR = SHARED / "data" / "cifar10-jpg.tar.gz"


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
