"""Finding image files on disk and decoding them, with errors that name the offending path.

Every failure is a `DataError`, so the CLI can turn bad input into one line instead of a
traceback, and a batch job learns which of thousands of files is broken. Image files come from
strangers: a 200 KB PNG can claim 9000x9000 pixels and decode to 243 MB, so every image reader in
`vitkit.data` decodes through `load_rgb`, which refuses an image above one pixel limit before
decoding it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from vitkit.errors import DataError

# Formats Pillow decodes that image datasets actually ship in; matched case-insensitively.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Pixels an image of a dataset may have (8192 x 8192, 192 MiB as RGB): far above any photo
# dataset, far below what a few decoding threads can hold. VITKIT_MAX_IMAGE_PIXELS overrides it;
# Pillow's own limit (Image.MAX_IMAGE_PIXELS, about 179 million) still applies above that.
DEFAULT_MAX_IMAGE_PIXELS = 1 << 26
PIXEL_LIMIT_VARIABLE = "VITKIT_MAX_IMAGE_PIXELS"
# Bytes an encoded image file may take beyond 8 per pixel (16-bit RGBA, uncompressed): its
# metadata (EXIF, ICC profile, XMP).
METADATA_BYTES = 16 << 20
# What Pillow raises on a broken or hostile file: OSError (UnidentifiedImageError, truncation),
# SyntaxError (bad chunks), ValueError and, from some plugins, the errors of malformed headers.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError,
                 ZeroDivisionError, struct.error)  # fmt: skip


def max_image_pixels() -> int:
    """The pixel limit: $VITKIT_MAX_IMAGE_PIXELS, else DEFAULT_MAX_IMAGE_PIXELS."""
    text = os.environ.get(PIXEL_LIMIT_VARIABLE, "")
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise DataError(f"{PIXEL_LIMIT_VARIABLE} must be a positive whole number, got {text!r}")
    return int(text)


def max_image_file_bytes() -> int:
    """Bytes an encoded image within the pixel limit can need: archive members larger than this
    are refused before they are read into memory."""
    return 8 * max_image_pixels() + METADATA_BYTES


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

    The size in the file's header is checked against `max_image_pixels()` before any pixel is
    decoded. name: what errors call the image (default: the path); useful for archive members.
    """
    where = name or source
    try:
        with Image.open(source) as image:
            _check_pixels(image, where)
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")
    except DataError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own limit, checked on opening
        raise DataError(
            f"{where}: cannot read the image: {error} (Pillow's PIL.Image.MAX_IMAGE_PIXELS; "
            f"vitkit's limit is {max_image_pixels():,}, set by {PIXEL_LIMIT_VARIABLE})"
        ) from error
    except DECODE_ERRORS as error:
        raise DataError(f"{where}: cannot read the image: {error}") from error


def _check_pixels(image: Image.Image, where: object) -> None:
    width, height = image.size
    limit = max_image_pixels()
    if width * height > limit:
        raise DataError(
            f"{where}: {width}x{height} is {width * height:,} pixels, above the limit of "
            f"{limit:,}; set {PIXEL_LIMIT_VARIABLE} to raise it"
        )
