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
import resource
import shutil
from pathlib import Path

from vitkit.errors import VitkitError


def free_memory_bytes() -> int:
    """Memory a new allocation of this process can take: the least of the machine's available
    memory (Linux's MemAvailable, else the free physical pages), what the container's cgroup still
    allows, and what the process's address-space limit (`ulimit -v`) leaves."""
    limits = [_meminfo_available(), _cgroup_room(), _address_space_room()]
    return min(limit for limit in limits if limit is not None)


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _cgroup_room() -> int | None:
    """memory.max less memory.current of this process's cgroup (v2); None without a limit."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as cgroup:
            relative = cgroup.readline().strip().partition("::")[2]
        folder = Path("/sys/fs/cgroup") / relative.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((folder / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def _address_space_room() -> int | None:
    """RLIMIT_AS less the address space mapped now; None without a limit."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            mapped = next(
                int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:")
            )
    except (OSError, ValueError, StopIteration):
        return None
    return limit - mapped


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
