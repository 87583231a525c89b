"""NaViT training from `vitkit train` (max_tokens, token_keep): crops at their own aspect ratio
sized to a token budget, packed; checked against the square augmentation's draws, exact
resumption, and the combinations it refuses (the sizes are checked against timm in
test_token_budget.py). An image folder of mixed sizes trains with each image whole at its own
aspect ratio (data_size: decoded onto a canvas, its size kept beside it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms.v2.functional import resize

import vitkit
from vitkit.cli.main import main
from vitkit.data import open_dataset
from vitkit.data.augment import CROP_ATTEMPTS, AugmentConfig, TrainAugment, random_crop_boxes
from vitkit.data.fitting import WITHIN, on_canvas
from vitkit.data.token_budget import size_for_token_budget
from vitkit.data.transforms import crop_and_resize
from vitkit.errors import ConfigError
from vitkit.training.trainer import train

from helpers import tiny, train_killed_and_resumed

pytestmark = pytest.mark.usefixtures("cache_in_tmp")


def images(count: int, size: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8)


def test_without_a_crop_the_budget_path_equals_the_square_path() -> None:
    """At a budget that gives the image its own size, the packed augmentation makes the square
    path's images (the same flips, drawn from the same key), one by one."""
    batch = images(8)
    labels = torch.arange(8) % 3
    square = TrainAugment(AugmentConfig(resolution=(24, 24), num_classes=3, crop_scale=None))
    packed = TrainAugment(
        AugmentConfig(resolution=(24, 24), num_classes=3, crop_scale=None, token_budget=(4, 36))
    )
    expected, expected_targets = square(batch, labels, key=(0, 5))
    got, targets = packed(batch, labels, key=(0, 5))
    assert isinstance(got, list) and len(got) == 8
    torch.testing.assert_close(torch.stack(got), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(targets, expected_targets)


def test_crops_keep_their_aspect_ratio_within_the_budget() -> None:
    """Every crop of an Inception crop (aspect ratio 3/4 to 4/3) comes out in whole patches
    within the budget, near its own aspect ratio, and the shapes vary."""
    config = AugmentConfig(resolution=(24, 24), num_classes=3, crop_scale=(0.3, 1.0),
                           token_budget=(4, 20))  # fmt: skip
    got, _ = TrainAugment(config)(images(64), torch.zeros(64, dtype=torch.long), key=(1, 2))
    shapes = {tuple(image.shape[-2:]) for image in got}
    assert len(shapes) > 2
    for height, width in shapes:
        assert height % 4 == 0 and width % 4 == 0 and (height // 4) * (width // 4) <= 20
        # Sides round up to whole patches: a crop between 3/4 and 4/3 gives at most 5 x 4.
        assert 3 / 5 <= height / width <= 5 / 3


def test_mixing_is_refused_with_a_token_budget() -> None:
    with pytest.raises(ValueError, match="mixup and cutmix"):
        AugmentConfig(resolution=(24, 24), num_classes=3, mixup_alpha=0.2, token_budget=(4, 36))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_tokens": 4, "mixup_alpha": 0.2}, "does not work with mixup_alpha"),
        ({"max_tokens": 4, "cutmix_alpha": 1.0}, "does not work with cutmix_alpha"),
        ({"max_tokens": 4, "drop_path": 0.1}, "does not work with drop_path"),
        ({"max_tokens": 4, "compile": True}, "does not work with compile"),
        ({"max_tokens": 4, "patch_sizes": "4,8"}, "does not work with patch_sizes"),
        ({"token_keep": 0.5}, "set max_tokens"),
        ({"max_tokens": 4, "token_keep": 0.0}, "token_keep"),
        ({"max_tokens": 16385}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
    ],
)
def test_packed_training_refuses_what_it_cannot_combine(
    image_tree: Path, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny(image_tree, **fields)


def test_packed_training_learns_and_resumes_exactly(image_tree: Path, tmp_path: Path) -> None:
    """ViT-Test/8 on 16 px images at 4 patches per image with half the tokens dropped: a run
    resumed from step 4 ends with the uninterrupted run's weights; the loss falls; the saved
    model takes images of any size and evaluates packed."""
    config = tiny(image_tree, max_tokens=4, token_keep=0.5, steps=8, checkpoint_every=4,
                  lr=3e-3, crop_scale_min=0.3)  # fmt: skip
    train(config, tmp_path / "whole")
    train_killed_and_resumed(config, tmp_path / "resumed")
    whole, resumed = (load_file(str(tmp_path / name / "model.safetensors"))
                      for name in ("whole", "resumed"))  # fmt: skip
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]  # fmt: skip
    assert min(losses[-3:]) < losses[0]
    model = vitkit.load_model(tmp_path / "whole")
    assert model.config.dynamic_img_size
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 24)).shape == (1, 3)


# --- Image folders whose images differ in size: each image kept at its own aspect ratio ---

# (H, W) of the mixed folder's images: wide, tall and square, some larger than the canvas.
SHAPES = [(12, 40), (40, 12), (24, 24), (16, 48), (48, 20), (30, 18)]
CANVAS = 32


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class folder whose images come in the SHAPES, the class in the colour."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 4)):
        for label in range(3):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                height, width = SHAPES[(index + label) % len(SHAPES)]
                pixels = rng.integers(0, 100, (height, width, 3), dtype=np.uint8)
                pixels[..., label] += 150
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def fitted(height: int, width: int) -> tuple[int, int]:
    """The size an image of (height, width) is decoded to within the CANVAS square, keeping its
    aspect ratio: the longer side becomes CANVAS when larger, the other side in proportion."""
    scale = min(1.0, CANVAS / max(height, width))
    return round(height * scale), round(width * scale)


def test_a_box_crops_the_same_from_the_canvas_as_from_the_image_alone() -> None:
    """An image set on an edge-padded canvas resamples to the same pixels as the image alone
    (whose border is clamped), for boxes that shrink and boxes that enlarge, flipped or not."""
    image = torch.randint(0, 256, (1, 13, 29, 3), dtype=torch.uint8)
    canvas = torch.from_numpy(on_canvas(image[0].numpy(), (40, 40)))[None]
    assert torch.equal(canvas[0, :13, :29], image[0])
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(16, 2, generator=generator) * torch.tensor([20.0, 8.0])
    sides = 1 + torch.rand(16, 2, generator=generator) * torch.tensor([8.0, 4.0])
    boxes = torch.cat([corners, (corners + sides).minimum(torch.tensor([29.0, 13.0]))], dim=1)
    boxes[0] = torch.tensor([0.0, 0.0, 29.0, 13.0])  # the whole image
    flip = torch.arange(16) % 2 == 0
    alone, placed = (
        crop_and_resize(pixels.permute(0, 3, 1, 2).float().expand(16, -1, -1, -1), boxes,
                        (12, 10), flip=flip)
        for pixels in (image, canvas)
    )  # fmt: skip
    torch.testing.assert_close(placed, alone, atol=1e-3, rtol=0)


def test_crop_boxes_of_images_of_their_own_sizes() -> None:
    """random_crop_boxes with one size per image draws, image by image, what it draws for that
    image's size alone, so every box lies within its own image."""
    uniforms = torch.rand(24, 2 + 2 * CROP_ATTEMPTS, generator=torch.Generator().manual_seed(1))
    heights = torch.tensor([12, 40, 24, 16, 48, 30] * 4)
    widths = torch.tensor([40, 12, 24, 48, 20, 18] * 4)
    options = {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)}
    boxes = random_crop_boxes(uniforms, heights, widths, **options)
    for row, (height, width) in enumerate(zip(heights.tolist(), widths.tolist())):
        alone = random_crop_boxes(uniforms[row : row + 1], height, width, **options)
        torch.testing.assert_close(boxes[row : row + 1], alone, atol=1e-4, rtol=0)
        x1, y1, x2, y2 = boxes[row].tolist()
        assert 0 <= x1 < x2 <= width + 1e-4 and 0 <= y1 < y2 <= height + 1e-4


def test_images_that_fill_their_canvas_augment_as_without_sizes() -> None:
    batch, labels = images(8), torch.arange(8) % 3
    full = torch.full((8, 2), 24)
    for crop_scale in ((0.3, 1.0), None):
        augment = TrainAugment(
            AugmentConfig(resolution=(16, 16), num_classes=3, crop_scale=crop_scale)
        )
        expected, _ = augment(batch, labels, key=(2, 3))
        got, _ = augment(batch, labels, key=(2, 3), sizes=full)
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


def test_a_mixed_size_folder_trains_at_each_images_own_aspect_ratio(
    mixed_sizes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vitkit train max_tokens=6 data_size=32` on a folder of wide, tall and square images:
    the training cache keeps each image whole at its own aspect ratio (the test split is
    resized and centre-cropped for the square evaluation), and without a crop each training
    input is the image resized to its token budget: the size timm's NaFlex rule gives
    (test_token_budget.py), the pixels torchvision's antialiased bilinear resize gives."""
    train_set = open_dataset(mixed_sizes, split="train", image_size=(CANVAS, CANVAS),
                             fit=WITHIN)  # fmt: skip
    assert {tuple(size) for size in train_set.sizes.tolist()} == {fitted(*s) for s in SHAPES}
    assert open_dataset(mixed_sizes, split="test", image_size=(CANVAS, CANVAS)).sizes is None
    seen: list[tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]] = []
    augment = TrainAugment.__call__

    def recorded(self: TrainAugment, images: torch.Tensor, labels: torch.Tensor, **options):
        inputs, targets = augment(self, images, labels, **options)
        seen.append((images, inputs, options["sizes"]))
        return inputs, targets

    monkeypatch.setattr(TrainAugment, "__call__", recorded)
    config = tiny(mixed_sizes, max_tokens=6, data_size=CANVAS, crop_scale_min=1.0, hflip=False,
                  batch_size=8, steps=2)  # fmt: skip
    summary = train(config, tmp_path / "run")
    assert summary.top1 is not None
    canvases, inputs, sizes = seen[-1]
    shapes = set()
    for canvas, given, (height, width) in zip(canvases, inputs, sizes.tolist()):
        size = size_for_token_budget(height, width, patch_size=8, max_tokens=6)
        assert tuple(given.shape[-2:]) == size
        expected = resize(canvas[:, :height, :width].float(), list(size), antialias=True)
        torch.testing.assert_close(given, (expected / 127.5) - 1, atol=2e-4, rtol=0)
        shapes.add(size)
    assert len(shapes) > 1  # wide and tall images, not one size


def test_a_mixed_size_packed_run_resumes_exactly(mixed_sizes: Path, tmp_path: Path) -> None:
    config = tiny(mixed_sizes, max_tokens=6, data_size=CANVAS, token_keep=0.5, batch_size=8,
                  steps=6, checkpoint_every=3, crop_scale_min=0.3)  # fmt: skip
    train(config, tmp_path / "whole")
    train_killed_and_resumed(config, tmp_path / "resumed")
    whole, resumed = (load_file(str(tmp_path / name / "model.safetensors"))
                      for name in ("whole", "resumed"))  # fmt: skip
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


def test_vitkit_train_on_a_mixed_size_folder_reports_on_it(
    mixed_sizes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command, to its report: the test split decoded as the run evaluated it, the
    figures of the trained model on it; then `vitkit eval` of the folder, square (every image
    resized whole, as the run counted it) and at each image's own size."""
    out = tmp_path / "run"
    fields = ["max_tokens=6", f"data_size={CANVAS}", "batch_size=8", "steps=2"]
    assert main(["train", "--preset", "tiny", "--data", str(mixed_sizes), "--out", str(out),
                 *fields]) == 0  # fmt: skip
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    assert (out / "figures" / "captions.json").is_file()
    evaluate = ["eval", "--checkpoint", str(out), "--data", str(mixed_sizes)]
    assert main([*evaluate, "--out", str(tmp_path / "square")]) == 0
    square = json.loads((tmp_path / "square" / "eval.json").read_text())
    assert square["images"] == 12 and square["resolution"] == [16, 16]
    assert main([*evaluate, "--out", str(tmp_path / "packed"), "--max-tokens", "6"]) == 0
    assert json.loads((tmp_path / "packed" / "eval.json").read_text())["images"] == 12


def test_a_mixed_size_folder_without_data_size_is_decoded_within_the_resolution(
    mixed_sizes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without data_size, images of different sizes are each decoded whole within the model's
    resolution (never enlarged), and the run says so in one line."""
    train(tiny(mixed_sizes, max_tokens=6), tmp_path / "run")
    said = [line for line in capsys.readouterr().err.splitlines() if "differ in size" in line]
    assert len(said) == 1 and "within 16x16 px (data_size=N sets the size)" in said[0]
    with pytest.raises(ConfigError, match="data_size"):
        tiny(mixed_sizes, data_size=8193)
