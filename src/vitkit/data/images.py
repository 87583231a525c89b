"""Finding image files on disk and decoding them, with errors that name the offending path.

Every failure is a `DataError`, so the CLI can turn bad input into one line instead of a
traceback, and a batch job learns which of thousands of files is broken. Image files come from
strangers: a 200 KB PNG can claim 9000x9000 pixels and decode to 243 MB, so every image reader in
`vitkit.data` decodes through `load_rgb`, which refuses an image above one pixel limit before
decoding it, and decodes each the way its file means it: samples wider than 8 bits scaled, not
clipped, and a photo turned upright as its EXIF orientation says.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from vitkit.errors import DataError
from vitkit.io import regular_file

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
    """The image files under `folder`, recursively, sorted so that runs see the same order.

    Linked subfolders are not entered (a link may lead anywhere, or back up into a loop); linked,
    dangling or special files with an image's name are listed, for `load_rgb` to name or skip.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    images = sorted(
        Path(parent, name)
        for parent, _, files in os.walk(folder)
        for name in files
        if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
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
    so truncated files fail here, as 8-bit RGB (`_as_rgb`), turned as its EXIF orientation says:
    a phone stores a portrait photo sideways and only tags it upright.

    A path must name a regular file (a FIFO would block the read for ever). The size in the
    file's header is checked against `max_image_pixels()` before any pixel is decoded.
    name: what errors call the image (default: the path); useful for archive members.
    """
    where = name or source
    if isinstance(source, str | Path):
        source = regular_file(source, error=DataError)
    try:
        with Image.open(source) as image:
            _check_pixels(image, where)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return _as_rgb(image)
    except DataError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own limit, checked on opening
        raise DataError(
            f"{where}: cannot read the image: {error} (Pillow's PIL.Image.MAX_IMAGE_PIXELS; "
            f"vitkit's limit is {max_image_pixels():,}, set by {PIXEL_LIMIT_VARIABLE})"
        ) from error
    except DECODE_ERRORS as error:
        raise DataError(f"{where}: cannot read the image: {error}") from error


def _as_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB. Pillow's `convert` clips samples wider than 8 bits to 0..255 (a
    16-bit grayscale PNG turns almost white, a float TIFF black), so those are scaled first.

    Integer samples (modes I;16*, and I, in which Pillow also hands over 16-bit files) are read as
    16-bit and keep their top 8 bits, as Pillow itself reads a 16-bit RGB PNG. Float samples (mode
    F, such as a float32 TIFF) are intensities in 0..1, the convention of float images in
    scikit-image and torchvision: times 255, rounded, out-of-range values clipped and NaN as 0.
    """
    if image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image), nan=0.0)
        image = Image.fromarray(np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8))
    elif image.mode.startswith("I"):
        image = Image.fromarray((np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_pixels(image: Image.Image, where: object) -> None:
    width, height = image.size
    limit = max_image_pixels()
    if width * height > limit:
        raise DataError(
            f"{where}: {width}x{height} is {width * height:,} pixels, above the limit of "
            f"{limit:,}; set {PIXEL_LIMIT_VARIABLE} to raise it"
        )
