"""`RunDir`: the files of one training run, each written in one place.

A run directory holds `train_config.json` (the config, the architecture trained, the step plan
and every `--force` change: the one record of the plan), `metrics.jsonl`, `summary.json`,
the checkpoints (training.checkpoint) and the final weights (weights.native).

One run per folder: two processes writing one folder would interleave their checkpoints and
metrics, so a run holds `run.lock` for as long as it trains: an advisory `flock` that the
operating system releases when the process exits, however it exits, so a lock left by a crashed
or killed run is never stale. The file records the holder's pid and host so that the refusal can
name them.

A failed write (a full disk, a read-only folder, a quota) becomes a TrainingError saying so and
which checkpoints are intact: every write is atomic, so the checkpoints before it are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TextIO

from vitkit.errors import TrainingError
from vitkit.io import (
    atomic_write_json,
    atomic_write_text,
    check_writable_target,
    read_capped,
    write_failure,
)
from vitkit.models.config import ViTConfig
from vitkit.training.checkpoint import CHECKPOINT_DIR, saved_steps
from vitkit.training.config import EXECUTION_FIELDS, FORCEABLE_FIELDS, TrainConfig
from vitkit.training.summary import TrainSummary

LOCK_NAME = "run.lock"
CONFIG_NAME = "train_config.json"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
CURVES_NAME = "curves.png"
# The final weights on the test split, as `vitkit eval` writes it, with the split's name.
EVAL_NAME = "eval.json"
# What the run's own files may hold when read back: far more than any run writes (a metrics line
# every 10 steps is ~150 bytes: 16 MiB a million steps), far less than a stranger's file could.
MOST_RECORD_BYTES = 16 << 20
MOST_METRICS_BYTES = 256 << 20  # drawn by the commands from metrics.jsonl (analysis/plots.py)


class RunDir:
    """The folder of one run and the files in it (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def checkpoints(self) -> Path:
        """The folder of the run's checkpoints (training/checkpoint.py)."""
        return self.path / CHECKPOINT_DIR

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Turn a failed write into a TrainingError naming the intact checkpoints."""
        try:
            yield
        except OSError as error:
            steps = saved_steps(self.path) if self.path.is_dir() else []
            kept = (
                f"the checkpoints saved before it (last: step {steps[-1]}) are intact"
                if steps
                else "no checkpoint had been saved yet"
            )
            raise TrainingError(
                f"cannot write to {self.path}: {write_failure(error)}; {kept}. Free "
                "space or make the folder writable, then run the same command to resume"
            ) from error

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Create the folder and hold its run lock while the block runs; TrainingError naming the
        holder's pid when another live process holds it."""
        with self.writing():
            self.path.mkdir(parents=True, exist_ok=True)
            fd = self._open_lock()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                raise TrainingError(
                    f"{self.path} is in use by another training run ({holder}); wait for it to "
                    "end, or choose another --out"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _open_lock(self) -> int:
        """The lock file's descriptor, opened without truncating (the holder's pid must stay
        readable until we own it) and never through a link: a run.lock that is a symbolic link, a
        FIFO or anything but a regular file is refused, so a lock never writes into another
        file."""
        lock = self.path / LOCK_NAME
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(lock, flags, 0o644)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise TrainingError(
                f"{lock} is a symbolic link; remove it, or choose another --out"
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise TrainingError(f"{lock} is not a regular file; remove it, or choose another --out")
        return fd

    # --- train_config.json -----------------------------------------------------------------

    def saved_config(self) -> dict[str, Any] | None:
        """train_config.json, or None when the folder holds no run yet."""
        path = self.path / CONFIG_NAME
        if not os.path.lexists(path):
            return None
        saved = self._read_json(CONFIG_NAME)
        total, warmup = saved.get("total_steps"), saved.get("warmup_steps", 0)
        if not isinstance(saved.get("requested"), dict) or not all(
            type(value) is int and value >= 0 for value in (total, warmup)
        ):
            raise TrainingError(
                f"{path}: unreadable (no requested config, or no step counts); this file records "
                f"the run in {self.path}: restore it, or train in another --out"
            )
        return saved

    def config_changes(
        self, saved: dict[str, Any], config: TrainConfig, *, force: bool
    ) -> dict[str, tuple[Any, Any]]:
        """The fields `config` changes against the saved run, as {field: (saved, requested)},
        EXECUTION_FIELDS aside. Refused unless forced, and fields outside FORCEABLE_FIELDS
        always (the checkpoints fit only their saved values)."""
        requested = json.loads(json.dumps(dataclasses.asdict(config)))  # as JSON gives it back
        changes = {
            key: (saved["requested"].get(key), value)
            for key, value in requested.items()
            if key not in EXECUTION_FIELDS and saved["requested"].get(key) != value
        }
        if changes and not force:
            raise TrainingError(
                f"{self.path} holds a run with another config (changed: "
                f"{', '.join(sorted(changes))}); use another --out, or --force to resume it with "
                "the new values"
            )
        if fixed := sorted(set(changes) - FORCEABLE_FIELDS):
            raise TrainingError(
                f"{self.path} holds a run with another config, and --force cannot change "
                f"{', '.join(fixed)}: the run's checkpoints fit only the saved value(s); train "
                "in another --out (with init= this run to start from its weights). --force may "
                f"change: {', '.join(sorted(FORCEABLE_FIELDS))}"
            )
        return changes

    def write_config(
        self,
        config: TrainConfig,
        architecture: ViTConfig,
        *,
        total_steps: int,
        warmup_steps: int,
        forced: list[dict[str, Any]],
        validation: dict[str, Any] | None = None,
    ) -> None:
        """train_config.json: the config, the architecture trained (from `model` or, with
        `init`, the checkpoint), the step plan, every --force change and which images were
        held out to validate on (`validation`: split, fraction, seed, images, per_class)."""
        record: dict[str, Any] = {
            "requested": dataclasses.asdict(config),
            "architecture": dataclasses.asdict(architecture),
            "total_steps": total_steps,
            "warmup_steps": warmup_steps,
        }
        if forced:
            record["forced"] = forced
        if validation is not None:
            record["validation"] = validation
        with self.writing():
            atomic_write_json(self.path / CONFIG_NAME, record)

    def record_plan(self, total_steps: int) -> None:
        """Write a re-planned step count into train_config.json, keeping the rest of it."""
        path = self.path / CONFIG_NAME
        record = self._read_json(CONFIG_NAME)
        record["total_steps"] = total_steps
        with self.writing():
            atomic_write_json(path, record)

    # --- metrics.jsonl and summary.json ------------------------------------------------------

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines a killed process wrote after the checkpoint it resumes from (and a
        half-written last line)."""
        path = self.path / METRICS_NAME
        if not os.path.lexists(path):
            return
        kept = []
        for line in self._read_text(METRICS_NAME, MOST_METRICS_BYTES).splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        with self.writing():
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def metrics(self, *, enabled: bool, mirror: MetricsMirror | None = None) -> Metrics:
        """The metrics.jsonl writer (a no-op where `enabled` is False: ranks other than 0),
        which also hands each record to `mirror` (TensorBoard's event files)."""
        return Metrics(self, enabled=enabled, mirror=mirror)

    def metric_records(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl, oldest first; TrainingError naming the first line that
        is no JSON object."""
        if not os.path.lexists(self.path / METRICS_NAME):
            return []
        records = []
        for number, line in enumerate(
            self._read_text(METRICS_NAME, MOST_METRICS_BYTES).splitlines(), start=1
        ):
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                record = None
            if not isinstance(record, dict):
                raise TrainingError(
                    f"{self.path / METRICS_NAME}: line {number} is no JSON object; the same "
                    "command drops a half-written line when it resumes"
                )
            records.append(record)
        return records

    def summary(self) -> TrainSummary | None:
        """summary.json of a finished run, or None; TrainingError when it is damaged."""
        if not os.path.lexists(self.path / SUMMARY_NAME):
            return None
        record = self._read_json(SUMMARY_NAME)
        try:
            return TrainSummary.from_json(record)
        except (TypeError, ValueError) as error:
            raise TrainingError(
                f"{self.path / SUMMARY_NAME}: not a run summary ({error})"
            ) from None

    def _read_text(self, name: str, limit: int) -> str:
        """The run's file `name` as text: a regular file of at most `limit` bytes, in UTF-8;
        TrainingError naming it otherwise (a run folder may have been edited, or be a
        stranger's)."""
        data = read_capped(self.path / name, limit, what=f"run's {name}", error=TrainingError)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise TrainingError(f"{self.path / name}: not UTF-8 ({error.reason})") from None

    def _read_json(self, name: str) -> dict[str, Any]:
        """The JSON object in the run's file `name` (at most MOST_RECORD_BYTES)."""
        try:
            content = json.loads(self._read_text(name, MOST_RECORD_BYTES))
        except (ValueError, RecursionError) as error:
            content = error
        if not isinstance(content, dict):
            raise TrainingError(
                f"{self.path / name}: unreadable (no JSON object); this file records the run in "
                f"{self.path}: restore it, or train in another --out"
            )
        return content

    def write_summary(self, summary: TrainSummary) -> None:
        with self.writing():
            atomic_write_json(self.path / SUMMARY_NAME, summary.to_json())


class MetricsMirror(Protocol):
    """Another view of the metric records than metrics.jsonl (`TensorBoardLog`)."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Metrics:
    """metrics.jsonl, one JSON record a line, flushed at once so that a killed run keeps every
    line it logged; each record also goes to the mirror, if any."""

    def __init__(
        self, run_dir: RunDir, *, enabled: bool, mirror: MetricsMirror | None = None
    ) -> None:
        self._run_dir = run_dir
        self._mirror = mirror if enabled else None
        self._file: TextIO | None = None
        if enabled:
            with run_dir.writing():
                path = run_dir.path / METRICS_NAME
                check_writable_target(path)  # appending must not go through a link
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                self._file = os.fdopen(os.open(path, flags, 0o666), "a")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            with self._run_dir.writing():
                self._file.write(json.dumps(record) + "\n")
                self._file.flush()
                if self._mirror is not None:
                    self._mirror.write(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._mirror is not None:
            self._mirror.close()
