"""timm state dicts, checked against timm itself: models built by `timm.create_model` with every
parameter randomised, saved as .safetensors and .pth, read by `vitkit.load_model`, must give
timm's logits. timm is an independent implementation, so agreement checks the key mapping, the
inferred architecture and the numerics (exact GELU, LayerNorm eps 1e-6) together."""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.layers import SwiGLUPacked
from torch import nn

import vitkit
from vitkit import CheckpointError
from vitkit.models.vit import VisionTransformer
from vitkit.weights.state_dict import load_checked
from vitkit.weights.timm import timm_to_vitkit

from helpers import compare_outputs as compare
from helpers import randomise_

TOLERANCE = 1e-5


def make_timm(name: str, seed: int = 0, **kwargs: object) -> nn.Module:
    kwargs.setdefault("num_classes", 7)
    model = timm.create_model(name, pretrained=False, **kwargs)
    return randomise_(model, seed).eval()


def save(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def images(img_size: int | tuple[int, int], seed: int = 1) -> torch.Tensor:
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    return torch.randn(3, 3, height, width, generator=torch.Generator().manual_seed(seed))


CASES: dict[str, tuple[str, dict]] = {
    "tiny-32": ("vit_tiny_patch16_224", dict(img_size=32)),
    "tiny-64-no-qkv-bias": ("vit_tiny_patch16_224", dict(img_size=64, qkv_bias=False)),
    "tiny-48-gap": (
        "vit_tiny_patch16_224",
        dict(img_size=48, class_token=False, global_pool="avg", fc_norm=False),
    ),
    "small-48-features": ("vit_small_patch16_224", dict(img_size=48, num_classes=0)),
}


@functools.cache
def case_model(case: str) -> nn.Module:
    """The randomised timm model of CASES[case], built once (the tests only read it)."""
    name, kwargs = CASES[case]
    return make_timm(name, **kwargs)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_timm(tmp_path: Path, case: str, suffix: str) -> None:
    kwargs = CASES[case][1]
    reference = case_model(case)
    path = save(reference.state_dict(), tmp_path / f"model{suffix}")
    model = vitkit.load_model(path)
    assert not model.training
    config = model.config
    assert (config.width, config.depth, config.num_heads) == (
        reference.embed_dim,
        len(reference.blocks),
        reference.blocks[0].attn.num_heads,
    )
    assert config.class_token == (reference.cls_token is not None)
    assert config.num_classes == reference.num_classes
    assert (config.gelu, config.layer_norm_eps) == ("exact", 1e-6)
    error = compare(reference, model, images(kwargs["img_size"]), f"timm {case} {suffix}")
    assert error <= TOLERANCE


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "module."])
def test_wrapped_checkpoints_load(tmp_path: Path, wrapper: str) -> None:
    """Training checkpoints nest the weights ({"state_dict": ...}) or carry DDP's "module."."""
    reference = case_model("tiny-32")
    state = reference.state_dict()
    if wrapper.endswith("."):
        checkpoint = {wrapper + key: value for key, value in state.items()}
    else:
        checkpoint = {wrapper: state, "epoch": 3}
    model = vitkit.load_model(save(checkpoint, tmp_path / "checkpoint.pth"))
    assert compare(reference, model, images(32), f"timm wrapped {wrapper!r}") <= TOLERANCE


def test_non_square_grid(tmp_path: Path) -> None:
    """timm files do not record the image size; a 2x3 grid has 6 positions, which could also be
    3x2 or 1x6. Without the size vitkit must refuse; with it, the logits must match."""
    reference = make_timm("vit_small_patch16_224", seed=4, img_size=(32, 48))
    path = save(reference.state_dict(), tmp_path / "small_32x48.safetensors")
    with pytest.raises(CheckpointError, match=r"square grid.*img_size"):
        vitkit.load_model(path)

    config, state = timm_to_vitkit(load_file(str(path)), img_size=(32, 48))
    assert config.img_size == (32, 48) and config.grid_size == (2, 3)
    model = VisionTransformer(config)
    load_checked(model, state, source=str(path))
    error = compare(reference, model.eval(), images((32, 48)), "timm small 32x48 (img_size given)")
    assert error <= TOLERANCE
    with pytest.raises(CheckpointError, match="do not fit img_size"):
        timm_to_vitkit(load_file(str(path)), img_size=(32, 32))


def test_num_heads_for_widths_of_no_paper_variant(tmp_path: Path) -> None:
    reference = make_timm(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4
    )
    path = save(reference.state_dict(), tmp_path / "narrow.safetensors")
    with pytest.raises(CheckpointError, match="num_heads"):
        vitkit.load_model(path)
    x = images(32)
    assert compare(reference, vitkit.load_model(path, num_heads=4), x, "timm width 64") <= TOLERANCE
    # Control: the comparison is sensitive to the head split, so it could fail.
    wrong = compare(reference, vitkit.load_model(path, num_heads=2), x, "timm width 64, 2 heads")
    assert wrong > 1e-3


# fc_norm, reg_tokens and no_embed_class are read (tests/test_timm_family.py), and so are
# LayerScale, CLIP's pre-norm and attention pooling (tests/test_modern_vits.py).
UNSUPPORTED = {
    "qk_norm": (dict(qk_norm=True), r"QK normalisation"),
    "final_norm": (dict(final_norm=False), r"final_norm"),
    "proj_bias": (dict(proj_bias=False), r"proj_bias"),
    "no_pos_embed": (dict(pos_embed="none"), r"pos_embed='none'"),
    "scale_attn_norm": (dict(scale_attn_norm=True), r"scale_attn_norm"),
    "scale_mlp_norm": (dict(scale_mlp_norm=True), r"scale_mlp_norm"),
    "embed_norm": (dict(embed_norm_layer="layernorm"), r"embed_norm_layer"),
    "swiglu": (dict(mlp_layer=SwiGLUPacked, act_layer="silu"), r"gated MLP"),
}


@pytest.mark.parametrize("feature", list(UNSUPPORTED))
def test_unsupported_timm_features_are_named(tmp_path: Path, feature: str) -> None:
    kwargs, message = UNSUPPORTED[feature]
    reference = make_timm("vit_tiny_patch16_224", img_size=32, depth=1, **kwargs)
    path = save(reference.state_dict(), tmp_path / f"{feature}.safetensors")
    with pytest.raises(CheckpointError, match=message) as error:
        vitkit.load_model(path)
    assert str(path) in str(error.value)


def test_distillation_token_is_named(tmp_path: Path) -> None:
    reference = make_timm("deit_tiny_distilled_patch16_224", img_size=32, depth=1)
    path = save(reference.state_dict(), tmp_path / "deit_distilled.safetensors")
    with pytest.raises(CheckpointError, match="distillation token"):
        vitkit.load_model(path)


def test_a_pooling_the_file_cannot_show_is_stated_or_warned(tmp_path: Path) -> None:
    """timm's class_token=True + global_pool='avg' + fc_norm=False has exactly the keys of a
    [class]-token model: read as token pooling with a one-line warning naming classifier='gap',
    and exact once told; a config.json beside it (timm's hub layout) that records global_pool
    tells it; a token model told so loads silently."""
    reference = make_timm("vit_tiny_patch16_224", img_size=32, global_pool="avg", fc_norm=False)
    path = save(reference.state_dict(), tmp_path / "avg_cls.safetensors")
    with pytest.warns(vitkit.weights.UnrecordedPoolingWarning) as caught:
        guessed = vitkit.load_model(path)
    (message,) = [str(warning.message) for warning in caught]
    assert "\n" not in message and str(path) in message and "classifier='gap'" in message
    assert guessed.config.classifier == "token"
    model = vitkit.load_model(path, classifier="gap")
    assert compare(reference, model, images(32), "timm avg pool + class token") <= TOLERANCE
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "global_pool": "avg",
        "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3},
    }))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recorded = vitkit.load_model(path)
    assert compare(reference, recorded, images(32), "global_pool from config.json") <= TOLERANCE
    token = make_timm("vit_tiny_patch16_224", img_size=32)
    (tmp_path / "token").mkdir()
    token_path = save(token.state_dict(), tmp_path / "token" / "token.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        told = vitkit.load_model(token_path, classifier="token")
    assert compare(token, told, images(32), "timm token pool, stated") <= TOLERANCE


def test_a_pooling_against_the_file_is_refused(tmp_path: Path) -> None:
    averaged = make_timm("vit_tiny_patch16_224", img_size=32, global_pool="avg", fc_norm=True)
    path = save(averaged.state_dict(), tmp_path / "fc_norm.safetensors")
    with pytest.raises(CheckpointError, match="fc_norm.*classifier='token' contradicts it"):
        vitkit.load_model(path, classifier="token")
    native = vitkit.save_pretrained(vitkit.create_model("ViT-Test/8", img_size=16),
                                    tmp_path / "native")  # fmt: skip
    with pytest.raises(CheckpointError, match="records classifier='token'.*'gap' contradicts"):
        vitkit.load_model(native, classifier="gap")
