"""What one request may take from the machine, estimated before the work starts.

A flag, a field or a file from a stranger can ask for more than the machine has: a cache of
8192x8192 canvases, an attention mask of (B, 1, L, L) for 65,000-token sequences, a model of
sixteen million blocks. Found late, such a request ends in an allocator traceback, a full disk or a
machine that swaps for minutes. Each of these is estimated in bytes where it is made and checked
here against what is free now, so that it is refused in one line that says what was asked, what it
takes and what is free, before anything is allocated or written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vitkit.errors import VitkitError


def free_memory_bytes() -> int:
    """Memory a new allocation can take without swapping: the kernel's MemAvailable where Linux
    gives it, else the free physical pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_disk_bytes(path: str | Path) -> int:
    """Bytes free on the file system that `path` is (or would be created) on: the nearest
    folder above it that exists decides."""
    place = Path(path).absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    return shutil.disk_usage(place if place.is_dir() else place.parent).free


def gib(size: float) -> str:
    """`size` bytes in the unit people read: '37.5 GiB', '120.0 MiB'."""
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def check_memory(
    needed: int, what: str, *, error: type[VitkitError] = VitkitError, hint: str = ""
) -> None:
    """Refuse `what`, which takes `needed` bytes of memory, when that is more than is free."""
    free = free_memory_bytes()
    if needed > free:
        raise error(
            f"{what} takes {gib(needed)} of memory but {gib(free)} is free"
            + (f"; {hint}" if hint else "")
        )


def check_disk(
    path: str | Path,
    needed: int,
    what: str,
    *,
    error: type[VitkitError] = VitkitError,
    hint: str = "",
) -> None:
    """Refuse writing `needed` bytes for `what` under `path` when its disk has less free."""
    free = free_disk_bytes(path)
    if needed > free:
        raise error(
            f"{what} takes {gib(needed)} but the disk of {path} has {gib(free)} free"
            + (f"; {hint}" if hint else "")
        )
