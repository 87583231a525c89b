"""Training checkpoints that survive crashes, corruption and divergence.

Layout: `run_dir/checkpoints/step-00001000.pt` (a `torch.save` of the whole training state) and
beside it `step-00001000.pt.sha256` in `sha256sum` format (so `sha256sum -c` checks it by hand).
Both are written atomically, the digest after the checkpoint: a checkpoint without a matching
digest is treated as corrupt, so a crash between the two writes falls back to the previous one.
Resuming takes the newest checkpoint that passes the digest and loads with `weights_only=True`
(no arbitrary code runs from a checkpoint file), warning about each newer one it skips.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import torch

from vitkit.errors import CheckpointError, TrainingError
from vitkit.io import atomic_write, atomic_write_text, read_capped, sha256_file, temp_files

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step-(\d{8,})\.pt")
_DIGEST_SUFFIX = ".sha256"


class NonFiniteStateError(TrainingError):
    """The training state to be saved holds NaN or inf: the run has diverged. `keys` names the
    offending tensors (the first five, and how many more)."""

    def __init__(self, step: int, keys: list[str]) -> None:
        self.keys = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        super().__init__(
            f"refusing to save the checkpoint of step {step}: non-finite values (NaN or inf) in "
            f"{self.keys}; no checkpoint is overwritten with non-finite values"
        )


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Where `save_checkpoint` puts the checkpoint of `step`."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Save `state` as the checkpoint of `step`, then delete all but the newest `keep`.

    Refuses (NonFiniteStateError naming the keys) a state whose floating-point tensors hold NaN
    or inf, so that no good checkpoint is ever rotated out in favour of a diverged one. Python
    floats are not checked: `best_loss = inf` is a legitimate initial value.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    if non_finite := _non_finite_keys(state, prefix=""):
        raise NonFiniteStateError(step, non_finite)
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: _write_state(state, file))
    atomic_write_text(_digest_path(path), f"{sha256_file(path)}  {path.name}\n")
    _prune(path.parent, keep=keep)
    return path


def saved_steps(run_dir: Path) -> list[int]:
    """The steps of the checkpoints in `run_dir`, oldest first (intact or not)."""
    paths = _checkpoints(Path(run_dir) / CHECKPOINT_DIR)
    return [int(_NAME.fullmatch(path.name).group(1)) for path in paths]


def _write_state(state: dict[str, Any], file: BinaryIO) -> None:
    """torch.save into `file`, letting a failed write (a full disk) surface as the OSError it is:
    torch's zip writer otherwise replaces it by a RuntimeError about file positions."""
    try:
        torch.save(state, file)
    except RuntimeError as error:
        if isinstance(error.__context__, OSError):
            raise error.__context__ from None
        raise


def load_latest_checkpoint(run_dir: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest intact checkpoint's state and path, or None when the run has none.

    A newer checkpoint that is corrupt, truncated or has no matching digest is skipped with a
    warning naming it and the problem; if none is intact, CheckpointError lists them all.
    """
    problems = []
    for path in reversed(_checkpoints(Path(run_dir) / CHECKPOINT_DIR)):
        try:
            state = _read_verified(path)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        for problem in problems:
            warnings.warn(f"skipping a corrupt checkpoint: {problem}", stacklevel=2)
        return state, path
    if problems:
        raise CheckpointError("every checkpoint is corrupt: " + "; ".join(problems))
    return None


def _read_verified(path: Path) -> dict[str, Any]:
    digest_path = _digest_path(path)
    try:  # a digest line is 64 hex digits and a name; a stranger's file may be anything
        recorded = read_capped(digest_path, 4096, error=CheckpointError).decode().split()[0]
    except (CheckpointError, UnicodeDecodeError, IndexError) as error:
        raise CheckpointError(
            f"{path}: no readable digest in {digest_path.name} ({error})"
        ) from None
    actual = sha256_file(path)
    if actual != recorded:
        raise CheckpointError(
            f"{path}: SHA-256 {actual} does not match {recorded} recorded in {digest_path.name}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, pickle errors, EOFError, ...
        raise CheckpointError(f"{path}: torch.load failed: {error}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def _non_finite_keys(value: Any, *, prefix: str) -> list[str]:
    """Dotted keys of the floating-point tensors in a nest of dicts, lists and tuples that hold
    NaN or inf (e.g. "optimizer.state.3.exp_avg")."""
    if isinstance(value, torch.Tensor):
        floating = value.is_floating_point() or value.is_complex()
        return [prefix] if floating and not bool(torch.isfinite(value).all()) else []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return []
    keys = []
    for key, item in items:
        keys += _non_finite_keys(item, prefix=f"{prefix}.{key}" if prefix else str(key))
    return keys


def _checkpoints(directory: Path) -> list[Path]:
    """The checkpoints in `directory`, oldest step first."""
    if not directory.is_dir():
        return []
    found = [path for path in directory.iterdir() if _NAME.fullmatch(path.name)]
    return sorted(found, key=lambda path: int(_NAME.fullmatch(path.name).group(1)))


def _prune(directory: Path, *, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints with their digests, and the temporary files
    of writes that were killed (each as large as a checkpoint)."""
    for path in _checkpoints(directory)[:-keep]:
        path.unlink()
        _digest_path(path).unlink(missing_ok=True)
    for temp in temp_files(directory, "step-*.pt*"):
        temp.unlink(missing_ok=True)


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + _DIGEST_SUFFIX)
