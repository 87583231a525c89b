"""NaViT training from `vitkit train` (max_tokens, token_keep): crops at their own aspect ratio
sized to a token budget, packed; checked against the square augmentation's draws, exact
resumption, and the combinations it refuses (the sizes are checked against timm in
test_token_budget.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.data.augment import AugmentConfig, TrainAugment
from vitkit.errors import ConfigError
from vitkit.training.trainer import train

from helpers import tiny, train_killed_and_resumed


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
