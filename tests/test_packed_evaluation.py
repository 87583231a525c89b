"""`vitkit eval --max-tokens` and `vitkit classify --max-tokens`: every image at its own aspect
ratio, packed. The reference classifies one image at a time, sized by timm's NaFlex
`get_image_size_for_seq` and resized by torchvision, with Google's official checkpoint
(7 classes, patches of 8, checked against vit_jax elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.naflex_transforms import get_image_size_for_seq
from torchvision.transforms import v2

import vitkit
from vitkit.cli.main import main
from vitkit.data.folder import LazyImageFolder, scan_folder
from vitkit.evaluation.accuracy import classification_report
from vitkit.evaluation.input_forms import PackedImages

from helpers import OFFICIAL_FIXTURE

CHECKPOINT = OFFICIAL_FIXTURE / "params.npz"
BUDGET = 12  # patches of 8 px per image
# (height, width) of the test images: tall, wide, square, tiny (upsampled) and large.
SIZES = [(40, 90), (90, 30), (64, 64), (9, 13), (120, 200), (33, 47), (70, 70)]


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """A 7-class test split whose images all differ in size and aspect ratio."""
    rng = np.random.default_rng(0)
    for label in range(7):
        folder = tmp_path / "data" / "test" / f"c{label}"
        folder.mkdir(parents=True)
        for index, (height, width) in enumerate(SIZES[label:] + SIZES[:label]):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    return tmp_path / "data"


def reference_logits(path: Path) -> torch.Tensor:
    """One image alone: timm's size for the budget, torchvision's resize, the model on it."""
    model = vitkit.load_model(CHECKPOINT, dynamic_img_size=True)
    record = model.preprocessing
    image = Image.open(path).convert("RGB")
    _, size = get_image_size_for_seq((image.height, image.width), 8, BUDGET)
    transform = v2.Compose([
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Resize(list(size), antialias=True),
        v2.Normalize(mean=list(record.mean), std=list(record.std)),
    ])  # fmt: skip
    with torch.no_grad():
        return model(transform(image)[None])[0]


def test_eval_with_a_token_budget_counts_what_one_by_one_predicts(
    mixed_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    code = main(["eval", "--checkpoint", str(CHECKPOINT), "--data", str(mixed_folder),
                 "--out", str(out), "--max-tokens", str(BUDGET), "--batch-size", "5"])  # fmt: skip
    assert code == 0
    assert "at their aspect ratios, at most 12 patches each" in capsys.readouterr().out
    result = json.loads((out / "eval.json").read_text())
    assert result["max_tokens"] == BUDGET and result["resolution"] is None
    hits, confusion = 0, np.zeros((7, 7), dtype=int)
    for label in range(7):
        for path in sorted((mixed_folder / "test" / f"c{label}").iterdir()):
            predicted = int(reference_logits(path).argmax())
            hits += predicted == label
            confusion[label, predicted] += 1
    assert result["images"] == 49
    assert result["top1"] == pytest.approx(hits / 49)
    np.testing.assert_array_equal(np.array(result["confusion"]), confusion)


def test_packed_logits_equal_the_reference_image_by_image(mixed_folder: Path) -> None:
    model = vitkit.load_model(CHECKPOINT, dynamic_img_size=True)
    paths = sorted((mixed_folder / "test" / "c0").iterdir())
    pixels = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    form = PackedImages(BUDGET)
    with torch.no_grad():
        got = form.forward(model, form.inputs(model, pixels, model.preprocessing))
    expected = torch.stack([reference_logits(path) for path in paths])
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=0)


def test_the_report_of_a_lazy_folder_and_its_subset(mixed_folder: Path) -> None:
    """The library call under `vitkit eval --max-tokens --limit`: labels known without decoding,
    a class-balanced subset still undecoded."""
    folder = LazyImageFolder(scan_folder(mixed_folder, "test"))
    np.testing.assert_array_equal(folder.labels, np.repeat(np.arange(7), 7))
    subset = folder.subset(np.array([0, 7, 14]))
    assert len(subset) == 3 and list(subset.labels) == [0, 1, 2]
    model = vitkit.load_model(CHECKPOINT, dynamic_img_size=True)
    report = classification_report(
        model, subset, preprocessing=model.preprocessing, form=PackedImages(BUDGET), progress=None
    )
    paths = [Path(subset.source.entries[index][0]) for index in range(3)]
    hits = sum(int(reference_logits(path).argmax()) == label for label, path in enumerate(paths))
    assert report.images == 3 and report.top1 == pytest.approx(hits / 3)


def test_classify_with_a_token_budget_prints_the_reference_probabilities(
    mixed_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = mixed_folder / "test" / "c3"
    code = main(["classify", str(CHECKPOINT), str(folder), "--max-tokens", str(BUDGET),
                 "--top-k", "2", "--json", "--batch-size", "3"])  # fmt: skip
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert len(document) == 7
    for entry in document:
        probabilities = reference_logits(Path(entry["path"])).softmax(dim=-1)
        top = probabilities.topk(2)
        assert [p["index"] for p in entry["predictions"]] == top.indices.tolist()
        got = [p["probability"] for p in entry["predictions"]]
        np.testing.assert_allclose(got, top.values.numpy(), atol=1e-5)


def test_packing_refuses_a_model_of_one_image_size() -> None:
    model = vitkit.load_model(CHECKPOINT)
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    form = PackedImages(BUDGET)
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        form.forward(model, form.inputs(model, [image], model.preprocessing))


def test_dynamic_img_size_keeps_the_outputs_at_the_built_size() -> None:
    fixed = vitkit.load_model(CHECKPOINT)
    dynamic = vitkit.load_model(CHECKPOINT, dynamic_img_size=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x), fixed(x), atol=0, rtol=0)
        assert dynamic(torch.randn(1, 3, 40, 24)).shape == (1, 7)
    with pytest.raises(ValueError, match="built for 64x64"):
        fixed(torch.randn(1, 3, 40, 24))


@pytest.mark.parametrize("budget", ["0", "-4", "16385", "many"])
def test_a_bad_token_budget_is_refused_in_one_line(
    budget: str, mixed_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["eval", "--checkpoint", str(CHECKPOINT), "--data", str(mixed_folder)],
                    ["classify", str(CHECKPOINT), str(mixed_folder)]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--max-tokens", budget])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--max-tokens" in error


def test_a_broken_image_is_named_in_one_line(
    mixed_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = mixed_folder / "test" / "c2" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    code = main(["eval", "--checkpoint", str(CHECKPOINT), "--data", str(mixed_folder),
                 "--out", str(tmp_path / "eval"), "--max-tokens", str(BUDGET)])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("vitkit eval: error:") and "broken.png" in error[-1]
    assert not (tmp_path / "eval" / "eval.json").exists()


def test_a_budget_over_the_limit_is_refused_before_anything_is_allocated() -> None:
    from vitkit.data.token_budget import MOST_TOKENS, size_for_token_budget

    with pytest.raises(ValueError, match="max_tokens=16385 is over 16384"):
        size_for_token_budget(10, 10, patch_size=8, max_tokens=MOST_TOKENS + 1)
