"""Issue 30: a new user's own folder of images (conftest's `user_folder`: 4 classes, `sports car`
and `Kätzchen` among them, JPEG and PNG in four modes, 24 to 96 px, half not square, a stray
notes.txt and .DS_Store) is read by every command with no size option, and one fine-tuned model
gives one top-1 wherever it is measured: the training run's summary.json and eval.json,
`vitkit eval`, `vitkit classify`, its ONNX export run by onnxruntime from the file's metadata
alone, and its timm export built by the line `vitkit convert` prints, with timm's own transform.

The clients outside vitkit preprocess as their users would (PIL, numpy, timm), so that a
mismatch with vitkit's pipeline shows as a different count of correct images. Counts are
compared class by class: agreeing totals could hide two errors that cancel.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import timm
import timm.data
import torch
from PIL import Image

from vitkit.cli.main import main

from helpers import (
    OFFICIAL_FIXTURE,
    USER_CLASSES,
    USER_FORMATS,
    USER_IMAGES,
    USER_JUNK,
    USER_SIDES,
)

INIT = OFFICIAL_FIXTURE / "params.npz"  # Google's format, as a user's pre-trained weights
# The tiny preset from INIT, with a few more steps than its 6, so that the model predicts several
# classes (one that predicts one class everywhere makes every count agree and proves nothing), and
# no test-time flip, so that the summary's top-1 is the plain forward pass every client runs.
FINE_TUNE = ("steps=8", "eval_flip=false")
NAMES = tuple(USER_CLASSES.values())
IMAGE_SUFFIXES = {extension.lower() for _, _, extension in USER_FORMATS}
LOGITS_ATOL = 1e-4


def vitkit(*args: str | Path) -> str:
    """`vitkit ARGS` run in-process; its stdout, once it has exited 0 (else the end of its
    stderr says why)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    assert code == 0, f"vitkit {args[0]} exited {code}: {err.getvalue()[-3000:]}"
    return out.getvalue()


def images_in(folder: Path) -> list[Path]:
    """The image files under `folder`, by extension in any case, as a user's script finds them."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def rgb(path: Path) -> Image.Image:
    """The image as RGB, as PIL users and timm's datasets open it (`Image.open(p).convert`)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def correct_per_class(paths: Sequence[Path], predicted: Sequence[str]) -> dict[str, int]:
    """Images predicted as the class folder they sit in, per class (every class listed)."""
    counts = dict.fromkeys(NAMES, 0)
    for path, name in zip(paths, predicted, strict=True):
        counts[path.parent.name] += name == path.parent.name
    return counts


def whole(fraction: float, images: int) -> int:
    """The count of images a top-1 of `images` stands for, which must be a whole number."""
    count = round(fraction * images)
    assert abs(fraction * images - count) < 1e-6, f"{fraction} of {images} images"
    return count


def counts_of(report: Mapping[str, object], class_sizes: Mapping[str, int]) -> dict[str, int]:
    """Correct images per class from an eval.json's per-class top-1."""
    per_class = report["per_class"]
    assert set(per_class) == set(NAMES), per_class
    return {name: whole(per_class[name], class_sizes[name]) for name in NAMES}


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Decoded-data caches in this module's own folder (`cache_in_tmp`, for the run the
    module's tests share)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VITKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def user_test_images(user_folder: Path) -> list[Path]:
    return images_in(user_folder / "test")


@pytest.fixture(scope="module")
def class_sizes(user_test_images: list[Path]) -> dict[str, int]:
    return dict(Counter(path.parent.name for path in user_test_images))


@pytest.fixture(scope="module")
def finetuned(
    user_folder: Path, module_cache: None, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The user's first command: fine-tune on their folder, no size given."""
    run = tmp_path_factory.mktemp("user-run") / "run"
    vitkit("train", "--preset", "tiny", "--data", user_folder, "--out", run, f"init={INIT}",
           *FINE_TUNE)  # fmt: skip
    return run


@pytest.fixture(scope="module")
def reference(finetuned: Path, class_sizes: dict[str, int]) -> dict[str, int]:
    """Correct test images per class, as the training run's eval.json counts them: what every
    other client must count."""
    return counts_of(json.loads((finetuned / "eval.json").read_text()), class_sizes)


@pytest.fixture(scope="module")
def classified(finetuned: Path, user_folder: Path) -> dict[Path, dict]:
    """`vitkit classify RUN TEST --json`, by image path."""
    records = json.loads(vitkit("classify", finetuned, user_folder / "test", "--json"))
    return {Path(record["path"]): record for record in records}


def test_user_folder_is_as_varied_as_a_users(user_folder: Path, user_folder_flat: Path) -> None:
    """The fixture itself: every format and mode, sizes in range with about half not square,
    junk beside the images, and the flat tree the same files without the split folders."""
    for split, count in USER_IMAGES.items():
        folders = sorted(p.name for p in (user_folder / split).iterdir())
        assert folders == sorted(NAMES)
        for name in NAMES:
            assert len(images_in(user_folder / split / name)) == count
    kinds, suffixes, shapes, alphas = Counter(), Counter(), [], []
    for path in images_in(user_folder):
        with Image.open(path) as image:
            kinds[(image.format, image.mode)] += 1
            shapes.append(image.size)
            if image.mode == "RGBA":
                alphas.extend(image.getchannel("A").getextrema())
        suffixes[path.suffix] += 1
    images = sum(kinds.values())
    assert set(kinds) == {(kind, mode) for kind, mode, _ in USER_FORMATS}
    assert sum(n for (kind, _), n in kinds.items() if kind == "PNG") == images // 2
    assert {".JPG", ".PNG", ".jpg", ".png", ".jpeg"} <= set(suffixes)
    low, high = USER_SIDES
    assert all(low <= side <= high for shape in shapes for side in shape)
    not_square = sum(width != height for width, height in shapes)
    assert 0.35 * images < not_square < 0.65 * images, not_square
    assert len(set(shapes)) > images // 4  # sizes spread out, not a handful
    assert min(alphas) < 100 and max(alphas) == 255  # partly transparent
    for junk in USER_JUNK:
        assert (user_folder / junk).is_file()

    flat = sorted(p.relative_to(user_folder_flat) for p in images_in(user_folder_flat))
    merged = sorted(Path(*p.relative_to(user_folder).parts[1:]) for p in images_in(user_folder))
    assert flat == merged and len(flat) == images
    assert sorted(p.name for p in user_folder_flat.iterdir() if p.is_dir()) == sorted(NAMES)
    assert (user_folder_flat / ".DS_Store").is_file()


@pytest.mark.slow
def test_training_reports_one_top1(
    finetuned: Path, reference: dict[str, int], user_test_images: list[Path]
) -> None:
    """summary.json's top-1 and eval.json (written at the end of training) count the same
    images, all of the test split's."""
    summary = json.loads((finetuned / "summary.json").read_text())
    report = json.loads((finetuned / "eval.json").read_text())
    assert report["images"] == len(user_test_images) == len(NAMES) * USER_IMAGES["test"]
    assert whole(summary["top1"], len(user_test_images)) == sum(reference.values())
    assert whole(report["top1"], len(user_test_images)) == sum(reference.values())


@pytest.mark.slow
def test_eval_counts_what_training_counted(
    finetuned: Path,
    user_folder: Path,
    reference: dict[str, int],
    class_sizes: dict[str, int],
    tmp_path: Path,
) -> None:
    vitkit("eval", "--checkpoint", finetuned, "--data", user_folder, "--out", tmp_path / "eval")
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["images"] == sum(class_sizes.values())
    assert counts_of(report, class_sizes) == reference


@pytest.mark.slow
def test_fewshot_and_figures_read_the_folder(
    finetuned: Path, user_folder: Path, user_test_images: list[Path], tmp_path: Path
) -> None:
    fewshot = tmp_path / "fewshot"
    vitkit("fewshot", "--checkpoint", finetuned, "--data", user_folder, "--out", fewshot,
           "--shots", "1,2", "--seeds", "1", "--holdout-per-class", "5")  # fmt: skip
    report = json.loads((fewshot / "fewshot.json").read_text())
    assert set(report["shots"]) == {"1", "2"}
    assert report["test_images"] == len(user_test_images)
    figures = tmp_path / "figures"
    vitkit("figures", "--checkpoint", finetuned, "--data", user_folder, "--out", figures,
           "--images", "8", "--shown", "2")  # fmt: skip
    assert (figures / "index.html").is_file()
    assert (figures / "attention_rollout.png").stat().st_size > 1000


@pytest.mark.slow
def test_classify_counts_what_training_counted(
    classified: dict[Path, dict], user_test_images: list[Path], reference: dict[str, int]
) -> None:
    """Every test image (and no notes.txt) classified, classes named as the user's folders,
    the argmax of the logits right as often, class by class, as in training."""
    assert sorted(classified) == user_test_images
    predicted = []
    for path in user_test_images:
        record = classified[path]
        labels = {entry["index"]: entry["label"] for entry in record["predictions"]}
        assert sorted(labels.values()) == sorted(NAMES)  # "sports car", "Kätzchen" as written
        predicted.append(labels[int(np.argmax(record["logits"]))])
    assert len(set(predicted)) > 1, "one class for every image: the counts would prove nothing"
    assert correct_per_class(user_test_images, predicted) == reference


@pytest.mark.slow
def test_onnx_export_counts_what_training_counted(
    finetuned: Path,
    classified: dict[Path, dict],
    user_test_images: list[Path],
    reference: dict[str, int],
    tmp_path: Path,
) -> None:
    """The .onnx file run by onnxruntime, its inputs made from the file's metadata alone, as a
    user outside vitkit would: PIL's resize of the whole image, / 255, (x - mean) / std."""
    path = tmp_path / "model.onnx"
    vitkit("export-onnx", finetuned, path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    height, width = json.loads(metadata["image_size"])
    mean = np.array(json.loads(metadata["mean"]), dtype=np.float32)
    std = np.array(json.loads(metadata["std"]), dtype=np.float32)
    resample = getattr(Image.Resampling, metadata["interpolation"].upper())
    names = json.loads(metadata["class_names"])
    batch = []
    for image_path in user_test_images:
        image = rgb(image_path).resize((width, height), resample)
        pixels = np.asarray(image, dtype=np.float32) / 255  # (H, W, 3)
        batch.append(((pixels - mean) / std).transpose(2, 0, 1))
    (logits,) = session.run(None, {session.get_inputs()[0].name: np.stack(batch)})
    expected = np.array([classified[path]["logits"] for path in user_test_images], dtype=np.float32)
    np.testing.assert_allclose(logits, expected, atol=LOGITS_ATOL, rtol=0)
    predicted = [names[index] for index in logits.argmax(axis=1)]
    assert correct_per_class(user_test_images, predicted) == reference


@pytest.mark.slow
def test_timm_export_counts_what_training_counted(
    finetuned: Path,
    classified: dict[Path, dict],
    user_test_images: list[Path],
    reference: dict[str, int],
    tmp_path: Path,
) -> None:
    """The timm state dict built by the line `vitkit convert` prints, run on timm's own eval
    transform for that model (which must resize the whole image, as vitkit does), its classes
    named by the labels file written beside it."""
    out = vitkit("convert", finetuned, tmp_path / "model.safetensors", "--to", "timm")
    build = re.search(r"^build it with: (.+)$", out, re.MULTILINE)
    written = re.search(r"^wrote (.+) \(the \d+ class names\)$", out, re.MULTILINE)
    assert build and written, out
    namespace = {"timm": timm}
    exec(build[1], namespace)
    model = namespace["model"].eval()
    config = timm.data.resolve_data_config({}, model=model)
    assert (config["crop_pct"], config["crop_mode"]) == (1.0, "squash"), config
    transform = timm.data.create_transform(**config)
    names = Path(written[1]).read_text(encoding="utf-8").splitlines()
    batch = torch.stack([transform(rgb(path)) for path in user_test_images])
    with torch.no_grad():
        logits = model(batch).numpy()
    expected = np.array([classified[path]["logits"] for path in user_test_images], dtype=np.float32)
    np.testing.assert_allclose(logits, expected, atol=LOGITS_ATOL, rtol=0)
    predicted = [names[index] for index in logits.argmax(axis=1)]
    assert correct_per_class(user_test_images, predicted) == reference


@pytest.mark.slow
def test_training_on_a_folder_without_splits_validates_on_held_out_images(
    user_folder_flat: Path, module_cache: None, tmp_path: Path
) -> None:
    """A `<class>/` tree with no train or test folder trains, and top-1 is measured on a seeded,
    class-stratified share of its images held out from training."""
    run = tmp_path / "run"
    vitkit("train", "--preset", "tiny", "--data", user_folder_flat, "--out", run, f"init={INIT}",
           *FINE_TUNE)  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    report = json.loads((run / "eval.json").read_text())
    assert report["split"] == "validation" and set(report["per_class"]) == set(NAMES)
    assert "top1" not in summary  # there is no test split to count on
    assert whole(summary["validation_top1"], report["images"]) == whole(
        report["top1"], report["images"]
    )
    validation = json.loads((run / "train_config.json").read_text())["validation"]
    assert validation["split"] == "." and validation["seed"] == 0
    held_out = validation["per_class"]
    assert set(held_out) == set(NAMES)
    assert validation["images"] == sum(held_out.values()) == report["images"]
    # Stratified: 10% of every class's 80 images, the rest trained on.
    assert set(held_out.values()) == {8}
