"""vitkit.io: atomic writes leave the old file or the whole new one; the SHA-256 of a file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vitkit.io import atomic_open, atomic_write_text, sha256_file, temp_files


def test_sha256_file_is_sha256sum(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    data = bytes(range(256)) * 5000  # over a megabyte: read in more than one block
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == sha256_file(path)
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_atomic_open_replaces_the_file_only_when_the_block_completes(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError, match="stopped"):
        with atomic_open(path) as file:
            file.write(b"half of the new")
            raise RuntimeError("stopped")
    assert path.read_text() == "old"
    assert temp_files(tmp_path, "out.txt") == []
    with atomic_open(path) as file:
        file.write(b"new")
        assert path.read_text() == "old"  # not visible before the block ends
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
