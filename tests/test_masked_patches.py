"""Masked patch prediction (paper section 4.6, Appendix B.1.2): the 3-bit mean-colour targets and
the corruption against independent numpy computations, the pre-training model, and the trainer's
masked_patches task (exact resume, the saved encoder fine-tuned with a new head)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.errors import ConfigError
from vitkit.models.config import get_config
from vitkit.models.masked_patches import (
    KEPT,
    MASKED,
    REPLACED,
    MaskedPatchModel,
    draw_corruption,
    masked_patch_loss,
    mean_colour_classes,
)
from vitkit.training.build import build_model
from vitkit.training.optim import param_groups
from vitkit.training.presets import PRESETS
from vitkit.training.trainer import train

from helpers import tiny

pytestmark = pytest.mark.usefixtures("cache_in_tmp")


def numpy_mean_colours(pixels: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes (N, h*w), unquantised means (N, h*w, 3)) of images (N, 3, H, W) in [0, 1]: the
    paper's 3-bit mean colour written from its description, with numpy."""
    n, channels, height, width = pixels.shape
    h, w = height // patch, width // patch
    blocks = pixels.reshape(n, channels, h, patch, w, patch)
    means = blocks.mean(axis=(3, 5)).reshape(n, channels, h * w).transpose(0, 2, 1)
    levels = np.minimum(np.floor(means * 8), 7).astype(np.int64)
    return levels[..., 0] * 64 + levels[..., 1] * 8 + levels[..., 2], means


def test_mean_colour_classes_match_numpy() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 3, 16, 16)).astype(np.float64) / 255
    expected, means = numpy_mean_colours(pixels, 4)
    got = mean_colour_classes(torch.from_numpy(pixels), (4, 4)).numpy()
    # A mean that is a multiple of 1/8 up to rounding may fall either side of it: leave such out.
    clear = (np.abs(means * 8 - np.round(means * 8)) > 1e-9).all(axis=-1)
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(got[clear], expected[clear])
    assert got.min() >= 0 and got.max() < 512


def test_mean_colour_levels_at_the_edges() -> None:
    """Level i covers [i/8, (i+1)/8); a mean of exactly 1 is level 7."""
    pixels = torch.zeros(1, 3, 2, 4, dtype=torch.float64)
    pixels[0, :, :, 2:] = 1.0  # patch 1: white
    pixels[0, 0, :, :2] = 0.375  # patch 0: red at the lower edge of level 3
    assert mean_colour_classes(pixels, (1, 2)).tolist() == [[3 * 64, 511]]


def test_corruption_proportions() -> None:
    """Exactly half the patches of each image, distinct; 80% masked, 10% replaced by another
    patch, 10% kept, tested with scipy's binomial test."""
    torch.manual_seed(0)
    batch, patches = 2000, 16
    corruption = draw_corruption(batch, patches, device=torch.device("cpu"))
    positions = corruption.positions.numpy()
    assert positions.shape == (batch, 8)
    assert all(len(np.unique(row)) == 8 for row in positions)
    assert positions.min() >= 0 and positions.max() < patches
    kinds = corruption.kinds.numpy().ravel()
    total = kinds.size
    for kind, share in ((MASKED, 0.8), (REPLACED, 0.1), (KEPT, 0.1)):
        count = int((kinds == kind).sum())
        assert scipy.stats.binomtest(count, total, share).pvalue > 1e-3, (kind, count / total)
    # Every patch of the image (not only the first ones) is corrupted about equally often.
    hits = np.bincount(positions.ravel(), minlength=patches)
    assert scipy.stats.chisquare(hits).pvalue > 1e-3
    own = np.arange(batch)[:, None] * patches + positions
    sources = corruption.sources.numpy()
    assert (sources != own).all() and sources.min() >= 0 and sources.max() < batch * patches


def test_corruption_applied_as_drawn() -> None:
    """Checked with numpy, patch by patch: masked patches hold the [mask] embedding, replaced ones
    the source patch's embedding, kept and uncorrupted ones their own."""
    torch.manual_seed(1)
    batch, patches, width = 64, 16, 8
    embeddings = torch.randn(batch, patches, width)
    mask = torch.randn(width)
    corruption = draw_corruption(batch, patches, device=torch.device("cpu"))
    out = corruption.apply(embeddings, mask).numpy()
    before, flat = embeddings.numpy(), embeddings.reshape(-1, width).numpy()
    expected = before.copy()
    for image in range(batch):
        for position, kind, source in zip(
            corruption.positions[image].tolist(),
            corruption.kinds[image].tolist(),
            corruption.sources[image].tolist(),
        ):
            if kind == MASKED:
                expected[image, position] = mask.numpy()
            elif kind == REPLACED:
                expected[image, position] = flat[source]
    np.testing.assert_array_equal(out, expected)
    changed = (out != before).any(axis=-1)
    assert changed.sum() == (corruption.kinds != KEPT).sum().item()


def _colour_grid_images(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 16, 16) whose 4x4 patches are each one colour at the middle of a 3-bit
    level, and each patch's colour class computed from the levels drawn."""
    levels = rng.integers(0, 8, (count, 3, 4, 4))
    pixels = np.repeat(np.repeat((levels + 0.5) / 8, 4, axis=2), 4, axis=3)
    classes = (levels[:, 0] * 64 + levels[:, 1] * 8 + levels[:, 2]).reshape(count, 16)
    return pixels.astype(np.float32), classes


def test_the_model_predicts_the_corrupted_patches_colours() -> None:
    torch.manual_seed(0)
    model = MaskedPatchModel(get_config("ViT-Test/8", img_size=16, patch_size=4, num_classes=0))
    pixels, classes = _colour_grid_images(np.random.default_rng(0), 5)
    images = (torch.from_numpy(pixels) - 0.5) / 0.5  # Google's normalisation, the default
    torch.manual_seed(7)
    prediction = model(images)
    torch.manual_seed(7)
    corruption = draw_corruption(5, 16, device=torch.device("cpu"))
    assert prediction.logits.shape == (5, 8, 512)
    expected = np.take_along_axis(classes, corruption.positions.numpy(), axis=1)
    np.testing.assert_array_equal(prediction.targets.numpy(), expected)
    loss = masked_patch_loss(prediction, torch.zeros(5, 10))
    manual = -torch.log_softmax(prediction.logits, -1).gather(-1, prediction.targets[..., None])
    assert loss.item() == pytest.approx(manual.mean().item(), rel=1e-6)
    loss.backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0


def test_the_encoder_is_a_plain_model_and_the_rest_is_the_tasks() -> None:
    """The pre-training parts sit around an unchanged, headless Vision Transformer: the model's
    weights are the encoder's (under "encoder.") and the [mask] embedding and colour head."""
    config = get_config("ViT-Test/8", img_size=16, num_classes=0)
    model = MaskedPatchModel(config)
    assert type(model.encoder) is vitkit.VisionTransformer
    assert model.encoder.config == config and model.config is config
    assert set(model.state_dict()) == {f"encoder.{name}" for name in model.encoder.state_dict()} | {
        "mask_token", "colour_head.weight", "colour_head.bias",
    }  # fmt: skip
    with pytest.raises(ValueError, match="num_classes=0"):
        MaskedPatchModel(dataclasses.replace(config, num_classes=10))


def test_the_mask_embedding_is_not_weight_decayed() -> None:
    model = MaskedPatchModel(get_config("ViT-Test/8", img_size=16, num_classes=0))
    decayed = {id(param) for param in param_groups(model, 0.1)[0]["params"]}
    assert id(model.mask_token) not in decayed
    assert id(model.colour_head.weight) in decayed


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"test_split": "test"}, "set test_split=''"),
        ({"init": "somewhere"}, "leave init empty"),
        ({"representation_size": 32}, "representation_size=0"),
    ],
)
def test_the_task_refuses_what_it_cannot_do(
    image_tree: Path, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny(image_tree, task="masked_patches", **{"test_split": "", **fields})


def test_the_paper_recipe_is_a_preset() -> None:
    preset = PRESETS["mpp"]
    assert (preset.task, preset.model, preset.lr, preset.batch_size) == (
        "masked_patches", "ViT-B/16", 2e-4, 4096,
    )  # fmt: skip
    assert (preset.warmup_steps, preset.decay, preset.steps) == (10_000, "cosine", 1_000_000)


def test_a_masked_patch_run_resumes_exactly_and_its_encoder_fine_tunes(
    image_tree: Path, tmp_path: Path
) -> None:
    """The corruption is drawn from the step's seed: a run resumed from step 4 ends with the
    weights of the run that was not interrupted. The saved model is the plain encoder, which a
    supervised run loads with a new, zero-initialised head."""
    config = tiny(image_tree, task="masked_patches", test_split="", steps=6, checkpoint_every=2)
    train(config, tmp_path / "whole")
    losses = [line for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert '"loss": 6.' in losses[0]  # about ln(512) = 6.24 at the start
    run = tmp_path / "resumed"
    train(config, run)
    for leftover in [*run.glob("checkpoints/step-00000006.pt*"), run / "summary.json"]:
        leftover.unlink()
    train(config, run)
    expected, got = (
        load_file(str(tmp_path / "whole" / "model.safetensors")),
        load_file(str(run / "model.safetensors")),
    )
    assert expected.keys() == got.keys() and "mask_token" not in expected
    assert all(torch.equal(expected[key], got[key]) for key in expected)

    encoder = vitkit.load_model(tmp_path / "whole")
    assert encoder.config.num_classes == 0
    finetune = dataclasses.replace(tiny(image_tree), init=str(tmp_path / "whole"))
    start = build_model(finetune, num_classes=3)
    for name, value in encoder.state_dict().items():
        assert torch.equal(start.state_dict()[name], value), name
    assert start.head.weight.abs().sum() == 0 and start.config.num_classes == 3
    assert train(finetune, tmp_path / "finetune").top1 is not None
