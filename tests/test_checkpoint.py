"""Training checkpoints and atomic writes: a crash, a corrupt file or a diverged state must never
cost the last good checkpoint."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import vitkit
from vitkit.errors import CheckpointError
from vitkit.io import atomic_write, atomic_write_json, atomic_write_text
from vitkit.training.checkpoint import (
    NonFiniteStateError,
    checkpoint_path,
    load_latest_checkpoint,
    save_checkpoint,
)


def assert_same(actual: Any, expected: Any) -> None:
    """Exact equality through dicts, lists and tuples, with torch.equal (and dtype) for tensors."""
    assert type(actual) is type(expected)
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and torch.equal(actual, expected)
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            assert_same(actual[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for item, expected_item in zip(actual, expected):
            assert_same(item, expected_item)
    else:
        assert actual == expected


def training_state(step: int = 1) -> dict[str, Any]:
    """What a training loop saves: model, AdamW after a step, EMA, RNG and plain Python values."""
    torch.manual_seed(step)
    model = vitkit.create_model("ViT-Test/8")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    for parameter in model.parameters():  # gradients without a (slow, first-call) backward pass
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": {key: value.clone() for key, value in model.state_dict().items()},
        "rng": {"torch": torch.get_rng_state()},
        "config": {"lr": 1e-3, "name": "ViT-Test/8", "sizes": [32, 32], "warmup": None},
        "metrics": {"loss": [0.5, 0.25], "best_loss": float("inf")},
    }


def save_steps(run_dir: Path, *steps: int) -> None:
    for step in steps:
        save_checkpoint(run_dir, step, {"step": step, "weight": torch.full((4,), float(step))})


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")

    def fail_midway(file) -> None:
        file.write(b"half of the new conte")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, fail_midway)
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_atomic_write_text_and_json_replace_the_file(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "notes.txt", "first")
    atomic_write_text(tmp_path / "notes.txt", "second ✓")
    atomic_write_json(tmp_path / "metrics.json", {"top1": 0.5, "sizes": [1, 2]})
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "second ✓"
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"top1": 0.5, "sizes": [1, 2]}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json", "notes.txt"]


def test_no_checkpoint_gives_none(tmp_path: Path) -> None:
    assert load_latest_checkpoint(tmp_path) is None


def test_a_realistic_training_state_round_trips_exactly(tmp_path: Path) -> None:
    state = training_state()
    path = save_checkpoint(tmp_path, 1, state)
    assert path == tmp_path / "checkpoints" / "step-00000001.pt"
    loaded, loaded_path = load_latest_checkpoint(tmp_path)
    assert loaded_path == path
    assert_same(loaded, state)


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    save_steps(tmp_path, 1, 2, 3, 4)
    names = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert names == [
        "step-00000003.pt",
        "step-00000003.pt.sha256",
        "step-00000004.pt",
        "step-00000004.pt.sha256",
    ]
    state, path = load_latest_checkpoint(tmp_path)
    assert state["step"] == 4 and path == checkpoint_path(tmp_path, 4)


def truncate(path: Path) -> None:
    """Cut the file in half and record the digest of what is left, so only torch.load notices."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    path.with_name(path.name + ".sha256").write_text(
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
    )


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def drop_digest(path: Path) -> None:
    path.with_name(path.name + ".sha256").unlink()


@pytest.mark.parametrize(
    ("corrupt", "why"),
    [(truncate, "torch.load failed"), (flip_bytes, "does not match"), (drop_digest, "digest")],
)
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(
    tmp_path: Path, corrupt, why: str
) -> None:
    save_steps(tmp_path, 1, 2)
    corrupt(checkpoint_path(tmp_path, 2))
    with pytest.warns(UserWarning, match=rf"step-00000002\.pt.*{why}"):
        state, path = load_latest_checkpoint(tmp_path)
    assert state["step"] == 1 and path == checkpoint_path(tmp_path, 1)


def test_every_checkpoint_corrupt_is_an_error_naming_each(tmp_path: Path) -> None:
    save_steps(tmp_path, 1, 2)
    flip_bytes(checkpoint_path(tmp_path, 1))
    truncate(checkpoint_path(tmp_path, 2))
    with pytest.raises(CheckpointError) as error:
        load_latest_checkpoint(tmp_path)
    message = str(error.value)
    assert "step-00000001.pt: SHA-256" in message
    assert "step-00000002.pt: torch.load failed" in message


def test_a_non_finite_state_is_refused_and_the_checkpoints_untouched(tmp_path: Path) -> None:
    save_steps(tmp_path, 1, 2)
    before = {path.name: path.read_bytes() for path in (tmp_path / "checkpoints").iterdir()}
    state = training_state(step=3)
    state["optimizer"]["state"][0]["exp_avg"][0, 0] = float("nan")
    with pytest.raises(NonFiniteStateError, match=r"optimizer\.state\.0\.exp_avg"):
        save_checkpoint(tmp_path, 3, state, keep=1)
    after = {path.name: path.read_bytes() for path in (tmp_path / "checkpoints").iterdir()}
    assert after == before


def test_a_process_killed_while_writing_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    """The child saves step 1, then dies (os._exit, no cleanup) halfway through writing step 2."""
    child = textwrap.dedent(
        f"""
        import os, sys, torch
        from pathlib import Path
        from vitkit.training import checkpoint

        run_dir = Path({str(tmp_path)!r})
        checkpoint.save_checkpoint(run_dir, 1, {{"step": 1, "weight": torch.ones(1000)}})

        def die_midway(state, file):
            file.write(b"PK" + bytes(5000))
            file.flush()
            os._exit(3)

        checkpoint.torch.save = die_midway
        checkpoint.save_checkpoint(run_dir, 2, {{"step": 2, "weight": torch.ones(1000)}})
        """
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert result.returncode == 3, result.stderr.decode()
    leftovers = [path.name for path in (tmp_path / "checkpoints").iterdir()]
    assert any(name.endswith(".tmp") for name in leftovers)  # the killed write's temp file

    state, path = load_latest_checkpoint(tmp_path)
    assert state["step"] == 1 and path == checkpoint_path(tmp_path, 1)
    # The next save clears what the killed one left behind.
    save_steps(tmp_path, 2)
    assert not [path for path in (tmp_path / "checkpoints").iterdir() if path.suffix == ".tmp"]
    assert load_latest_checkpoint(tmp_path)[0]["step"] == 2
