"""One run per output folder: an exclusive lock on the run directory.

Two training processes writing one folder interleave their checkpoints and metrics (one dies on a
file the other pruned; metrics.jsonl ends out of order). So a run holds `run.lock` in its folder
for as long as it trains: an advisory `flock` that the operating system releases when the process
exits, however it exits, so a lock left by a crashed or killed run is never stale: the next run
simply takes it. The file records the holder's pid and host so that the refusal can name them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from vitkit.errors import TrainingError

LOCK_NAME = "run.lock"


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold `out_dir`'s run lock while the block runs; TrainingError naming the holder's pid when
    another live process holds it."""
    path = Path(out_dir) / LOCK_NAME
    # Opened without truncating: the holder's pid must stay readable until we own the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise TrainingError(
                f"{out_dir} is in use by another training run ({holder}); wait for it to end, or "
                "choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
