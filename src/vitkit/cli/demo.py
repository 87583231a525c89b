"""`vitkit demo`: show the toolkit end to end on the project's shared fixtures and data.

Three steps, each checking a different layer: the model table (configs and cost), vitkit's logits
against those Google's own code computed for its fixture checkpoint (weights and numerics, at the
checkpoint's resolution and with resized position embeddings), and the fixture classifying
CIFAR-10 test images through `vitkit classify`'s code (image decoding and preprocessing).
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from vitkit.cli.classify import classify_and_print, positive_int
from vitkit.cli.models import format_table
from vitkit.data import DataError
from vitkit.weights import load_model

FIXTURE = Path("fixtures/official-vit-jax/tiny_gap_repr")
CIFAR_ARCHIVE = Path("data/cifar10-jpg.tar.gz")
TABLE_MODELS = ("ViT-Ti/16", "ViT-S/16", "ViT-B/16", "ViT-L/16", "ViT-H/16")
TOLERANCE = 1e-5  # float32 round-off between XLA and PyTorch kernels is ~1e-7 here


def default_shared_dir() -> Path:
    """$VITKIT_SHARED, else the `shared` folder beside the git checkout holding the current
    directory, else the one beside the project that holds this package."""
    if env := os.environ.get("VITKIT_SHARED"):
        return Path(env)
    cwd = Path.cwd().resolve()
    git_roots = [path for path in (cwd, *cwd.parents) if (path / ".git").exists()]
    candidates = [git_roots[0].parent / "shared"] if git_roots else []
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared")
    return next((path for path in candidates if path.is_dir()), candidates[0])


def _require(path: Path) -> Path:
    if not path.exists():
        raise DataError(
            f"{path}: not found. The demo reads the project's shared folder (fixtures/, data/); "
            "point to it with --shared DIR or VITKIT_SHARED"
        )
    return path


def _read_json(path: Path) -> dict:
    try:
        return json.loads(_require(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: unreadable: {error}") from error


def check_against_google(fixture: Path) -> bool:
    """Compare vitkit's logits with Google's for the fixture's inputs; print, True if all match.

    The fixture ships logits at its own 64 px and at 128 px, where Google's loader resized the
    position embeddings; vitkit must reproduce both.
    """
    meta = _read_json(fixture / "meta.json")
    resized = _read_json(fixture / "posemb_resize_128.json")
    try:
        runs = [
            (meta["image_size"][0], meta["input"]["file"], meta["logits"]["file"]),
            (resized["image_size_from_to"][1], resized["input_file"], resized["logits_file"]),
        ]
        print(
            f"Fixture {meta['name']} ({meta['official_class']}, {meta['classifier']} pooling, "
            f"representation {meta['representation_size']}, {meta['num_classes']} classes)"
        )
    except KeyError as error:
        raise DataError(f"{fixture}: the fixture's JSON files lack the field {error}") from None
    matches = True
    for img_size, input_file, logits_file in runs:
        model = load_model(_require(fixture / "params.npz"), img_size=img_size)
        images = torch.from_numpy(np.load(_require(fixture / input_file)))  # (N, H, W, C)
        expected = torch.from_numpy(np.load(_require(fixture / logits_file)))
        with torch.no_grad():
            logits = model(images.permute(0, 3, 1, 2))  # (N, C, H, W)
        difference = (logits - expected).abs().max().item()
        verdict = "ok" if difference <= TOLERANCE else "MISMATCH"
        matches &= difference <= TOLERANCE
        print(
            f"  {img_size:>3} px: {len(images)} images, max |vitkit - Google| logit difference "
            f"{difference:.1e} (tolerance {TOLERANCE:.0e}): {verdict}"
        )
    return matches


def extract_test_images(archive: Path, out: Path, count: int) -> list[Path]:
    """Write `count` test/<class>/<file> images of the archive to out/<class>/, spread evenly
    over CIFAR-10's 10 classes.

    The archive lists the test split first, so streaming it ("r|gz") and stopping at the train
    split decompresses about a sixth of the archive, never all 60,000 images.
    """
    per_class = -(-count // 10)
    taken: Counter[str] = Counter()
    written: list[Path] = []
    try:
        with tarfile.open(_require(archive), mode="r|gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if parts and parts[0] == "train" and written:
                    break  # the test split is over
                if not member.isfile() or len(parts) != 3 or parts[0] != "test" or ".." in parts:
                    continue
                if taken[parts[1]] == per_class:
                    continue
                target = out / parts[1] / parts[2]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                taken[parts[1]] += 1
                written.append(target)
                if len(written) == count:
                    break
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{archive}: cannot read the archive: {error}") from error
    if len(written) < count:
        raise DataError(f"{archive}: holds only {len(written)} test images, {count} requested")
    return written


def run(args: argparse.Namespace) -> int:
    shared = _require(args.shared or default_shared_dir())
    fixture = shared / FIXTURE
    print(f"vitkit demo, shared data from {shared}\n")

    print("1. The paper's models at 224 px with a 1000-class head")
    print(format_table(TABLE_MODELS) + "\n")

    print("2. vitkit against Google's official JAX code (vit_jax) on its fixture checkpoint")
    if not check_against_google(fixture):
        print(f"FAILED: vitkit's logits differ from Google's by more than {TOLERANCE:.0e}")
        return 1
    print()

    print(f"3. The fixture model classifying {args.num_images} CIFAR-10 test images")
    print(
        "   The fixture has random weights and 7 classes that mean nothing: the predictions only\n"
        "   show that decoding, resizing, normalising, batching and the forward pass work.\n"
    )
    images = extract_test_images(shared / CIFAR_ARCHIVE, args.out / "images", args.num_images)
    predictions = classify_and_print(_require(fixture / "params.npz"), images, top_k=3)

    true_classes = Counter(path.parent.name for path in images)
    predicted = Counter(prediction.classes[0] for prediction in predictions)
    print("\nSummary")
    print(f"  vitkit matches Google's logits at both resolutions (within {TOLERANCE:.0e})")
    print(f"  {len(images)} images written to {args.out / 'images'}")
    print(f"  their CIFAR-10 classes: {dict(true_classes)}")
    print(f"  top-1 fixture classes (random weights): {dict(sorted(predicted.items()))}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="check against Google's code and classify CIFAR-10 images, end to end"
    )
    parser.add_argument(
        "--shared",
        type=Path,
        default=None,
        help="the project's shared folder with fixtures/ and data/ (default: $VITKIT_SHARED, "
        "else ../shared beside the git checkout)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="where the images are written"
    )
    parser.add_argument("--num-images", type=positive_int, default=16)
    parser.set_defaults(run=run, command="demo")
