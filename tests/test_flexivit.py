"""FlexiViT: the patch kernel resampled against timm's `resample_patch_embed`, the token of a
resized patch kept, models loaded or called at another patch size, and training that draws the
patch size per step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.layers import resample_patch_embed as timm_resample_patch_embed

import vitkit
from vitkit import VisionTransformer
from vitkit.errors import ConfigError
from vitkit.training.step import TrainStep
from vitkit.training.trainer import train

from helpers import random_test_vit, tiny, train_killed_and_resumed


def kernel(old: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A random kernel (6, 3, *old) at the scale models initialise it, std 1/sqrt(fan_in): timm
    resamples in float32, whose rounding grows with the weights' magnitude."""
    fan_in = 3 * old[0] * old[1]
    noise = torch.randn(6, 3, *old, generator=torch.Generator().manual_seed(seed))
    return noise / fan_in**0.5


@pytest.mark.parametrize(
    ("old", "new", "interpolation"),
    [
        ((8, 8), (16, 16), "bilinear"),
        ((16, 16), (8, 8), "bilinear"),
        ((4, 4), (6, 6), "bicubic"),
        ((8, 8), (5, 5), "bicubic"),
        ((4, 6), (8, 3), "bilinear"),
    ],
)
def test_resample_matches_timm(
    old: tuple[int, int], new: tuple[int, int], interpolation: str
) -> None:
    weight = kernel(old)
    ours = vitkit.resample_patch_embed(weight, new, interpolation=interpolation)
    theirs = timm_resample_patch_embed(weight, list(new), interpolation=interpolation)
    assert ours.shape == (6, 3, *new) and ours.dtype == weight.dtype
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert not torch.allclose(ours, F.interpolate(weight, size=new, mode=interpolation))


@pytest.mark.parametrize("new", [8, 12, 16])
def test_a_grown_patch_keeps_its_token(new: int) -> None:
    """<resize(x), w'> = <x, w> for every patch x when the patch grows: the defining property,
    checked on patches resized as images are."""
    weight = kernel((8, 8), seed=1)
    patches = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    grown = F.interpolate(patches, size=(new, new), mode="bilinear", antialias=True)
    resampled = vitkit.resample_patch_embed(weight, new)
    tokens = F.conv2d(patches, weight).flatten(1)
    torch.testing.assert_close(F.conv2d(grown, resampled).flatten(1), tokens, atol=1e-4, rtol=0)
    naive = F.interpolate(weight, size=(new, new), mode="bilinear")
    if new != 8:
        assert (F.conv2d(grown, naive).flatten(1) - tokens).abs().max() > 0.1


def test_the_resampled_kernel_carries_gradients_to_the_original() -> None:
    weight = kernel((8, 8)).requires_grad_()
    vitkit.resample_patch_embed(weight, 4).square().sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_resample_refuses_a_bad_size() -> None:
    with pytest.raises(ValueError, match="patch size 0"):
        vitkit.resample_patch_embed(kernel((8, 8)), 0)
    with pytest.raises(ValueError, match=r"\(D, C, p, p\)"):
        vitkit.resample_patch_embed(torch.zeros(3, 8, 8), 4)


def random_model(kind: str, **fields: object) -> VisionTransformer:
    """A ViT-Test/8 (4x4 grid at 32 px) of position type `kind`, every parameter random."""
    return random_test_vit(pos_embed_type=kind, **fields)


@pytest.mark.parametrize("kind", ["learned_1d", "learned_2d", "relative", "sincos_2d"])
def test_loading_at_another_patch_size_equals_a_dynamic_call(kind: str, tmp_path: Path) -> None:
    model = random_model(kind, dynamic_patch_size=True)
    saved = vitkit.save_pretrained(model, tmp_path / "model")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for patch_size in (4, 16):
        loaded = vitkit.load_model(saved, patch_size=patch_size)
        assert loaded.config.patch_size == patch_size
        assert loaded.config.grid_size == (32 // patch_size,) * 2
        expected = timm_resample_patch_embed(
            model.patch_embed.proj.weight.detach(), [patch_size] * 2, interpolation="bilinear"
        )
        torch.testing.assert_close(loaded.patch_embed.proj.weight, expected, atol=1e-5, rtol=0)
        with torch.no_grad():
            called = model(images, patch_size=patch_size)
            torch.testing.assert_close(loaded(images), called, atol=1e-5, rtol=1e-5)
            assert (called - model(images)).abs().max() > 1e-3


def test_patch_size_and_image_size_change_together(tmp_path: Path) -> None:
    saved = vitkit.save_pretrained(random_model("learned_1d"), tmp_path / "model")
    loaded = vitkit.load_model(saved, patch_size=16, img_size=64)
    assert loaded.config.grid_size == (4, 4) and loaded.preprocessing.resolution == (64, 64)
    assert torch.equal(loaded.pos_embed, vitkit.load_model(saved).pos_embed)  # same grid
    assert loaded(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_other_patch_sizes_are_refused_clearly(tmp_path: Path) -> None:
    model = random_model("learned_1d")
    images = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="dynamic_patch_size=True"):
        model(images, patch_size=4)
    dynamic = VisionTransformer(dataclasses.replace(model.config, dynamic_patch_size=True))
    with pytest.raises(ValueError, match="not a multiple of the patch size 5"):
        dynamic(images, patch_size=5)
    with pytest.raises(ValueError, match="built for 32x32 images but got 48x48"):
        dynamic(torch.zeros(1, 3, 48, 48), patch_size=4)
    saved = vitkit.save_pretrained(model, tmp_path / "model")
    with pytest.raises(ConfigError, match="not a multiple of the patch size 5"):
        vitkit.load_model(saved, patch_size=5)


def flexi_step(seed: int) -> TrainStep:
    fields = {field.name: None for field in dataclasses.fields(TrainStep) if field.init}
    fields.update(seed=seed, patch_sizes=(2, 4, 8))
    return TrainStep(**fields)


def test_the_patch_size_of_each_step_is_uniform_and_fixed_by_the_seed() -> None:
    draws = [flexi_step(0).patch_size_at(step) for step in range(3000)]
    counts = [draws.count(size) for size in (2, 4, 8)]
    assert sum(counts) == 3000 and scipy.stats.chisquare(counts).pvalue > 1e-3
    assert draws[:50] == [flexi_step(0).patch_size_at(step) for step in range(50)]
    assert draws[:50] != [flexi_step(1).patch_size_at(step) for step in range(50)]


def test_flexible_training_resumes_exactly_and_serves_every_patch_size(
    image_tree: Path, tmp_path: Path
) -> None:
    """ViT-Test/8 at 16 px trained at patch sizes 4 and 8: a run resumed from step 4 ends with
    the weights of the uninterrupted one, which differ from those of training at 8 alone; the
    saved model runs at either size."""
    config = tiny(image_tree, patch_sizes="4,8", steps=6, checkpoint_every=2)
    train(config, tmp_path / "whole")
    train_killed_and_resumed(config, tmp_path / "resumed")
    train(tiny(image_tree, steps=6, checkpoint_every=2), tmp_path / "fixed")
    whole, resumed, fixed = (
        load_file(str(tmp_path / name / "model.safetensors"))
        for name in ("whole", "resumed", "fixed")
    )
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)
    assert not torch.equal(whole["patch_embed.proj.weight"], fixed["patch_embed.proj.weight"])

    model = vitkit.load_model(tmp_path / "whole")
    assert model.config.dynamic_patch_size and model.config.patch_size == 8
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        at_four = vitkit.load_model(tmp_path / "whole", patch_size=4)(images)
        torch.testing.assert_close(model(images, patch_size=4), at_four, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"patch_sizes": "4,x"}, "integers separated by commas"),
        ({"patch_sizes": "4,4"}, "distinct positive integers"),
        ({"patch_sizes": "0,4"}, "distinct positive integers"),
        ({"patch_sizes": "3,8"}, "3 does not cut 16 px images of ViT-Test/8 into whole patches"),
        (
            {"patch_sizes": "4,8", "task": "masked_patches", "test_split": ""},
            "masked patch prediction trains at one patch size",
        ),
    ],
)
def test_bad_patch_sizes_are_refused(
    image_tree: Path, fields: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny(image_tree, **fields)
