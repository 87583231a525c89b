"""The project's shared data folder, guessed from the checkout layout, and the CIFAR-10 copy in it.

A checkout sits beside a `shared/` folder that holds the data every clone uses (the CIFAR-10 JPEG
tarball, the reference fixtures), so that a fresh clone needs no download:

    work/
      main/      the git checkout (this project)
      shared/    data/cifar10-jpg.tar.gz, fixtures/, ...
"""

from __future__ import annotations

import os
from pathlib import Path

# Where the CIFAR-10 JPEG tarball lies inside the shared folder.
SHARED_CIFAR10 = Path("data/cifar10-jpg.tar.gz")


def default_shared_dir() -> Path:
    """$VITKIT_SHARED, else the `shared` folder beside the git checkout holding the current
    directory, else the one beside the project that holds this package (the first of these that
    exists; the first candidate when none does)."""
    if env := os.environ.get("VITKIT_SHARED"):
        return Path(env)
    cwd = Path.cwd().resolve()
    git_roots = [path for path in (cwd, *cwd.parents) if (path / ".git").exists()]
    candidates = [git_roots[0].parent / "shared"] if git_roots else []
    # src/vitkit/data/shared.py: parents[3] is the project root.
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared")
    return next((path for path in candidates if path.is_dir()), candidates[0])


def default_cifar10() -> str:
    """The CIFAR-10 source to use when none is given: the shared JPEG tarball where there is one,
    else "cifar10" (the official release, downloaded to the cache dir)."""
    tarball = default_shared_dir() / SHARED_CIFAR10
    return str(tarball) if tarball.is_file() else "cifar10"
