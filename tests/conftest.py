"""Shared test fixtures: where ../shared lives, and Google's official reference files."""

from __future__ import annotations

import os
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
