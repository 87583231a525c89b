"""Finding image files on disk and decoding them, with errors that name the offending path.

Every failure is a `DataError`, so the CLI can turn bad input into one line instead of a
traceback, and a batch job learns which of thousands of files is broken.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from vitkit.errors import DataError

# Formats Pillow decodes that image datasets actually ship in; matched case-insensitively.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def list_images(folder: str | Path) -> list[Path]:
    """The image files under `folder`, recursively, sorted so that runs see the same order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    images = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )
    if not images:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(f"{folder}: no images found in it (looked for {extensions})")
    return images


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded by `list_images`: what a command line names."""
    images: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            images.extend(list_images(path))
        elif path.is_file():
            images.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return images


def load_rgb(source: str | Path | BinaryIO, *, name: str | None = None) -> Image.Image:
    """Decode an image file (a path, or a file object such as an archive member's bytes) fully,
    so truncated files fail here, as RGB (grayscale, palette and RGBA converted).

    name: what errors call the image (default: the path); useful for archive members.
    """
    try:
        with Image.open(source) as image:
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")
    # Pillow reports broken files as OSError (UnidentifiedImageError, truncation), SyntaxError
    # (bad chunks in some plugins), ValueError or DecompressionBombError.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{name or source}: cannot read the image: {error}") from error
