"""Named pretrained weights: the checkpoints the paper released, fetched into the cache by name.

Weights are named apart from architectures (timm's `arch.tag`, big_vision's variants):
"ViT-B/16@i21k" is the ViT-B/16 architecture as pre-trained on ImageNet-21k, and
"ViT-B/16@i21k+in1k-384" the same model fine-tuned on ImageNet-1k at 384 px. `resolve_checkpoint`
turns such a name, or a Hugging Face hub id, into a local path that `load_model` reads; everything
else is passed through as a path. Files come from Google's bucket (the URLs of the
google-research/vision_transformer README) through the one download implementation,
`vitkit.download`: resumable, checked against the registry's SHA-256 where one is recorded,
and never touching the network when VITKIT_OFFLINE is set. A fetched file must also look like
its format (a zip archive for .npz) before it enters the cache, since a mirror may answer a
missing file with an error page and status 200.

A mirror with the bucket's layout replaces it through $VITKIT_WEIGHTS_URL: http(s)://HOST/PATH,
or file:///PATH for a copy on a shared disk (clusters without internet); other weights are added
with `register_pretrained`. A bad name, entry, mirror or hub id is a one-line VitkitError.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from vitkit.download import Validator, default_cache_dir, download, url_problem
from vitkit.errors import CheckpointError, ConfigError, DownloadError
from vitkit.models.preprocessing import GOOGLE_MEAN, GOOGLE_STD, Preprocessing
from vitkit.weights.hub import HUB_PREFIX, fetch_hub

GOOGLE_BUCKET = "https://storage.googleapis.com/vit_models"
# A base URL (http(s)://HOST/PATH or file:///PATH) with the bucket's layout, used instead of
# GOOGLE_BUCKET.
MIRROR_VARIABLE = "VITKIT_WEIGHTS_URL"
# Classes of the pre-training and fine-tuning datasets (ImageNet-21k's release has 21,843).
IMAGENET21K_CLASSES = 21843
IMAGENET1K_CLASSES = 1000
# File names that are checkpoints, never hub ids, even when they contain a single "/".
_CHECKPOINT_SUFFIXES = (".npz", ".safetensors", ".pth", ".pt", ".bin", ".json")
# A hub repository id: "org/name", as the hub spells them.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, kw_only=True)
class PretrainedWeights:
    """One released checkpoint: where it is, and what it was trained for and expects."""

    name: str  # "ViT-B/16@i21k": architecture @ training data (+ fine-tuning data-resolution)
    architecture: str  # the preset it fits ("ViT-B/16", "R50+ViT-B/16")
    url: str
    resolution: int  # square input size the weights were trained at, in pixels
    num_classes: int  # of the released head
    dataset: str  # human-readable: what it was pre-trained and fine-tuned on
    # The normalisation the weights take (Google's checkpoints: [-1, 1]); `load_model` gives the
    # model these, whatever the file's format records.
    mean: tuple[float, float, float] = GOOGLE_MEAN
    std: tuple[float, float, float] = GOOGLE_STD
    sha256: str | None = None  # checked after every download when known
    # Of the file, for the listing, and the most its download may write; None where not recorded.
    size_bytes: int | None = None

    def __post_init__(self) -> None:
        """Refuse an entry that could only fail later, and more obscurely: when it is downloaded
        (a URL that cannot be fetched, a digest that nothing matches) or built."""
        if not self.name or not self.name.isprintable():
            raise CheckpointError(f"pretrained weights {self.name!r}: the name must be printable")
        if problem := url_problem(self.url):
            raise CheckpointError(f"pretrained weights {self.name}: url {self.url!r}: {problem}")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise CheckpointError(
                f"pretrained weights {self.name}: sha256 must be 64 hex digits, got {self.sha256!r}"
            )
        positive = {"resolution": self.resolution, "num_classes": self.num_classes}
        if self.size_bytes is not None:
            positive["size_bytes"] = self.size_bytes
        for field, value in positive.items():
            if type(value) is not int or value <= 0:
                raise CheckpointError(
                    f"pretrained weights {self.name}: {field} must be a positive int, got {value!r}"
                )
        try:  # mean and std checked as every record's, for RGB images
            self.preprocessing.check_channels(3)
        except ConfigError as error:
            raise CheckpointError(f"pretrained weights {self.name}: {error}") from None

    @property
    def preprocessing(self) -> Preprocessing:
        """How images become inputs for these weights, at the resolution they were trained at."""
        return Preprocessing(resolution=self.resolution, mean=self.mean, std=self.std)

    @property
    def file_name(self) -> str:
        """The cache file: the name with "/" made safe, and the URL's suffix, which tells
        `load_model` the format ("ViT-B_16@i21k.npz")."""
        suffix = PurePosixPath(urlsplit(self.url).path).suffix
        return self.name.replace("/", "_") + suffix


def _google(architecture: str, tag: str, file: str) -> PretrainedWeights:
    """An entry of the paper's release: "i21k" (pre-trained, 224 px, 21,843 classes) or
    "i21k+in1k-<res>" (then fine-tuned on ImageNet-1k at <res> px)."""
    if tag == "i21k":
        folder, resolution, classes = "imagenet21k", 224, IMAGENET21K_CLASSES
        dataset = "ImageNet-21k"
    else:
        folder, classes = "imagenet21k+imagenet2012", IMAGENET1K_CLASSES
        resolution = int(tag.rsplit("-", 1)[1])
        dataset = f"ImageNet-21k, fine-tuned on ImageNet-1k at {resolution} px"
    return PretrainedWeights(
        name=f"{architecture}@{tag}",
        architecture=architecture,
        url=f"{GOOGLE_BUCKET}/{folder}/{file}",
        resolution=resolution,
        num_classes=classes,
        dataset=dataset,
    )


# The release of "An Image is Worth 16x16 Words" (google-research/vision_transformer README).
# Google publishes no checksums for these files, so none are recorded here.
_RELEASE = [
    *(_google(arch, "i21k", f"{arch.replace('/', '_')}.npz")
      for arch in ("ViT-B/16", "ViT-B/32", "ViT-L/16", "ViT-L/32", "ViT-H/14", "R50+ViT-B/16")),
    *(_google(arch, "i21k+in1k-384", f"{arch.replace('/', '_')}.npz")
      for arch in ("ViT-B/16", "ViT-B/32", "ViT-L/16", "ViT-L/32", "R50+ViT-B/16")),
    *(_google(arch, "i21k+in1k-224", f"{arch.replace('/', '_')}-224.npz")
      for arch in ("ViT-B/16", "ViT-L/16")),
]  # fmt: skip
PRETRAINED: dict[str, PretrainedWeights] = {weights.name: weights for weights in _RELEASE}


def list_pretrained() -> list[str]:
    """Names accepted by `load_model` for downloadable weights, in registry order."""
    return list(PRETRAINED)


def register_pretrained(weights: PretrainedWeights, *, replace: bool = False) -> None:
    """Add `weights` to the registry, so that `load_model(weights.name)` fetches them.

    An existing name is only replaced with `replace=True`, so that a typo cannot silently
    redirect the paper's names to another file.
    """
    if _find(weights.name) is not None and not replace:
        raise CheckpointError(f"{weights.name!r} is registered already; pass replace=True")
    PRETRAINED[weights.name] = weights


def get_pretrained(name: str) -> PretrainedWeights:
    """The entry called `name`, matched case-insensitively and with "_" for "/" ("ViT-B_16@i21k",
    as in Google's file names)."""
    if (weights := _find(name)) is None:
        raise CheckpointError(
            f"{name}: no pretrained weights of that name; known: {', '.join(PRETRAINED)}"
        )
    return weights


def registered_weights(checkpoint: str | Path) -> PretrainedWeights | None:
    """The registry's entry that `checkpoint` (what `load_model` was given) names, None for a
    path that exists (local files always win, as in `resolve_checkpoint`), a hub id or any
    other path."""
    try:
        if Path(checkpoint).exists():
            return None
    except (OSError, ValueError):  # no usable path; resolve_checkpoint says so
        return None
    return _find(str(checkpoint))


def _find(name: str) -> PretrainedWeights | None:
    wanted = name.replace("_", "/").lower()
    for key, weights in PRETRAINED.items():
        if key.replace("_", "/").lower() == wanted:
            return weights
    return None


def weights_url(weights: PretrainedWeights) -> str:
    """Where `weights` are fetched from: their URL, with Google's bucket replaced by
    $VITKIT_WEIGHTS_URL when set (a mirror with the same layout)."""
    mirror = _mirror()
    if mirror and weights.url.startswith(GOOGLE_BUCKET + "/"):
        return mirror + weights.url[len(GOOGLE_BUCKET) :]
    return weights.url


def _mirror() -> str | None:
    """$VITKIT_WEIGHTS_URL without its trailing "/", or None when unset; a value that is no base
    URL is refused here, by name, rather than surfacing as a puzzling download error."""
    value = os.environ.get(MIRROR_VARIABLE, "")
    if not value:
        return None
    problem = url_problem(value)
    if problem is None and (urlsplit(value).query or urlsplit(value).fragment):
        problem = "a base URL has no ?query or #fragment"
    if problem:
        raise DownloadError(
            f"{MIRROR_VARIABLE}={value!r} is no mirror URL: {problem}; it must name a folder laid "
            f"out as {GOOGLE_BUCKET}, such as https://HOST/PATH or file:///PATH"
        )
    return value.rstrip("/")


def weights_path(weights: PretrainedWeights, *, cache_dir: Path | None = None) -> Path:
    """The file `weights` are kept in: <cache dir>/weights/<file_name>."""
    return Path(cache_dir or default_cache_dir()) / "weights" / weights.file_name


def fetch_pretrained(name: str, *, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The local file of the weights called `name`, downloaded on first use.

    A file in the cache that fails the registry's SHA-256 or size, or does not look like its
    format (a mirror's error page), is fetched again (online) or refused (offline); a download
    that fails a check, or would grow past the registered size, is deleted. Either way it is never
    loaded. Failures are DownloadErrors that start with the weights' name.
    """
    weights = get_pretrained(name)
    destination = weights_path(weights, cache_dir=cache_dir)
    try:
        url = weights_url(weights)
        return download(
            url,
            destination,
            sha256=weights.sha256,
            size=weights.size_bytes,
            validate=_format_check(Path(weights.file_name).suffix),
            progress=progress,
        )
    except DownloadError as error:
        raise DownloadError(f"{weights.name}: {error}") from None


def _format_check(suffix: str) -> Validator:
    """A cheap check, from a file's first bytes (and a zip's directory at its end), that it can be
    weights in the format `suffix` names; it says what the file is instead ("got an HTML page")."""
    signature = _SIGNATURES.get(suffix.lower())

    def check(path: Path) -> str | None:
        size = path.stat().st_size
        with path.open("rb") as file:
            head = file.read(64)
        # Without a signature to test, an HTML or XML page (the usual error reply) is refused.
        looks_right = signature(path, head) if signature else not head.lstrip().startswith(b"<")
        if size and looks_right:
            return None
        return f"got {_describe(head, size)}, not a {suffix or 'weights'} file"

    return check


def _describe(head: bytes, size: int) -> str:
    """What a file that starts with `head` seems to be, for an error message."""
    if not size:
        return "an empty file"
    text = head.lstrip().lower()
    if text.startswith(b"<?xml"):
        return f"an XML document ({size} bytes)"
    if text.startswith(b"<"):
        return f"an HTML page ({size} bytes)"
    if head.startswith(b"PK\x05\x06"):  # the end of a zip's directory, with nothing before it
        return "an empty zip archive"
    return f"{size} bytes starting {head[:16]!r}"


def _is_torch_file(path: Path, head: bytes) -> bool:
    """torch.save's zip archive, or its legacy pickle (protocol 2 and later begin with 0x80)."""
    return head[:1] == b"\x80" or zipfile.is_zipfile(path)


def _is_npz(path: Path, head: bytes) -> bool:
    """A zip archive that holds at least one .npy array: an empty archive passes for a zip, and,
    were it cached without a SHA-256 to catch it, would fail every load after."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(".npy") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):  # what a broken directory raises
        return False


def _is_safetensors(path: Path, head: bytes) -> bool:
    """An 8-byte little-endian header length within the file, then the header's JSON."""
    header_bytes = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_bytes <= path.stat().st_size - 8


# Each weights format's signature, by file suffix: numpy's .npz is a zip archive of .npy files.
_SIGNATURES: dict[str, Callable[[Path, bytes], bool]] = {
    ".npz": _is_npz,
    ".safetensors": _is_safetensors,
    ".pth": _is_torch_file,
    ".pt": _is_torch_file,
    ".bin": _is_torch_file,
}


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A local path for what `load_model` was given.

    A path that exists is returned as it is (local files always win). Otherwise a registered
    name ("ViT-B/16@i21k") is fetched into the cache, and "hf:org/name[@revision]" or a bare
    "org/name" from the Hugging Face hub; anything else comes back unchanged, for the format
    detection to report as missing.
    """
    path = Path(checkpoint)
    text = str(checkpoint)
    try:
        if path.exists():
            return path
    except (OSError, ValueError) as error:  # a name too long for the file system, a NUL byte
        raise CheckpointError(
            f"{text!r}: not a usable path ({error}), nor a pretrained name or hub id"
        ) from None
    if text.startswith(HUB_PREFIX):
        repo_id, at, revision = text.removeprefix(HUB_PREFIX).partition("@")
        return fetch_hub(repo_id, revision=revision if at else None)
    if _find(text) is not None:
        return fetch_pretrained(text)
    if "@" in text:  # looks like a weights name, but is none
        raise CheckpointError(
            f"{text}: no such file, and no pretrained weights of that name; "
            f"`vitkit pretrained` lists them: {', '.join(PRETRAINED)}"
        )
    if _HUB_ID.fullmatch(text) and not text.lower().endswith(_CHECKPOINT_SUFFIXES):
        try:
            return fetch_hub(text)
        except CheckpointError as error:
            raise CheckpointError(f"{text}: no such file or directory, nor {error}") from None
    return path
