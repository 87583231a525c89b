"""Google's official .npz checkpoints, checked against logits computed by Google's vit_jax code
(../shared/fixtures/official-vit-jax) and against timm's independent .npz loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

import vitkit
from vitkit import CheckpointError


def _logits(model: nn.Module, nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(nhwc).permute(0, 3, 1, 2)).numpy()


@pytest.mark.parametrize("resolution", [None, 128])
def test_matches_google_logits(official_fixture: Path, resolution: int | None) -> None:
    suffix = "" if resolution is None else f"_{resolution}"
    model = vitkit.load_model(official_fixture / "params.npz", img_size=resolution)
    expected = np.load(official_fixture / f"logits{suffix}.npy")
    got = _logits(model, np.load(official_fixture / f"input{suffix}.npy"))
    error = np.abs(got - expected).max()
    print(f"max |vitkit - vit_jax| at {resolution or 64}px: {error:.2e}")
    assert error <= 1e-5


def test_architecture_inferred_from_file(official_fixture: Path) -> None:
    meta = json.loads((official_fixture / "meta.json").read_text())
    config = vitkit.load_model(official_fixture / "params.npz").config
    assert config.width == meta["hidden_size"]
    assert config.depth == meta["num_layers"]
    assert config.num_heads == meta["num_heads"]
    assert config.mlp_dim == meta["mlp_dim"]
    assert config.patch_size == meta["patches"]["size"][0]
    assert config.classifier == meta["classifier"] and not config.class_token
    assert config.representation_size == meta["representation_size"]
    assert config.num_classes == meta["num_classes"]
    assert config.img_size == tuple(meta["image_size"])
    assert (config.gelu, config.layer_norm_eps) == ("tanh", 1e-6)
    model = vitkit.load_model(official_fixture / "params.npz")
    assert sum(p.numel() for p in model.parameters()) == meta["num_params"]


def test_position_embeddings_resized_like_google(official_fixture: Path) -> None:
    model = vitkit.load_model(official_fixture / "params.npz", img_size=128)
    expected = np.load(official_fixture / "posemb_resized_128.npy")
    assert np.abs(model.pos_embed.detach().numpy() - expected).max() <= 1e-6


def test_num_classes_gives_zero_head_without_pre_logits(official_fixture: Path) -> None:
    model = vitkit.load_model(official_fixture / "params.npz", img_size=96, num_classes=10)
    assert model.config.num_classes == 10 and model.config.representation_size is None
    assert isinstance(model.pre_logits, nn.Identity)
    assert model.head.in_features == model.config.width
    logits = model(torch.randn(2, 3, 96, 96))
    assert logits.shape == (2, 10) and torch.count_nonzero(logits) == 0


# Linen-era files (e.g. AugReg) number the block's sub-modules differently.
_LINEN_NAMES = {
    "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
    "LayerNorm_2": "LayerNorm_1",
    "MlpBlock_3": "MlpBlock_0",
}


def _rename(params: dict[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    renamed = {}
    for key, value in params.items():
        for old, new in _LINEN_NAMES.items():
            key = key.replace(f"/{old}/", f"/{new}/")
        renamed[prefix + key] = value
    return renamed


@pytest.mark.parametrize("prefix", ["", "opt/target/"])
def test_linen_layout_and_prefixed_files(
    official_fixture: Path, tmp_path: Path, prefix: str
) -> None:
    params = dict(np.load(official_fixture / "params.npz"))
    path = tmp_path / "linen.npz"
    np.savez(path, **_rename(params, prefix))
    got = _logits(vitkit.load_model(path), np.load(official_fixture / "input.npy"))
    assert np.abs(got - np.load(official_fixture / "logits.npy")).max() <= 1e-5


def _timm_to_google(model: nn.Module) -> dict[str, np.ndarray]:
    """Write a timm ViT in the naming of Google's released (pre-linen) files."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    width = sd["cls_token"].shape[-1]
    heads = model.blocks[0].attn.num_heads
    out = {
        "cls": sd["cls_token"],
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T,
        "head/bias": sd["head.bias"],
    }
    for i in range(len(model.blocks)):
        src, dst = f"blocks.{i}", f"Transformer/encoderblock_{i}"
        attn = f"{dst}/MultiHeadDotProductAttention_1"
        for name, w, b in zip(
            ("query", "key", "value"),
            np.split(sd[f"{src}.attn.qkv.weight"], 3),
            np.split(sd[f"{src}.attn.qkv.bias"], 3),
        ):
            out[f"{attn}/{name}/kernel"] = w.T.reshape(width, heads, -1)
            out[f"{attn}/{name}/bias"] = b.reshape(heads, -1)
        out[f"{attn}/out/kernel"] = sd[f"{src}.attn.proj.weight"].T.reshape(heads, -1, width)
        out[f"{attn}/out/bias"] = sd[f"{src}.attn.proj.bias"]
        for norm, ln in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            out[f"{dst}/{ln}/scale"] = sd[f"{src}.{norm}.weight"]
            out[f"{dst}/{ln}/bias"] = sd[f"{src}.{norm}.bias"]
        for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            out[f"{dst}/MlpBlock_3/{dense}/kernel"] = sd[f"{src}.mlp.{fc}.weight"].T
            out[f"{dst}/MlpBlock_3/{dense}/bias"] = sd[f"{src}.mlp.{fc}.bias"]
    return out


def test_token_classifier_file_matches_timm_npz_loader(tmp_path: Path) -> None:
    """A [class]-token checkpoint in Google's naming, read by timm's own .npz loader and by
    vitkit, gives the same logits (both in Google's numerics: tanh-GELU)."""
    torch.manual_seed(0)
    make = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5,
                act_layer=lambda: nn.GELU(approximate="tanh"))  # fmt: skip
    source = timm.models.vision_transformer.VisionTransformer(**make)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    path = tmp_path / "token.npz"
    np.savez(path, **_timm_to_google(source))

    reference = timm.models.vision_transformer.VisionTransformer(**make).eval()
    timm.models.vision_transformer._load_weights(reference, str(path))
    model = vitkit.load_model(path)
    assert model.config.classifier == "token" and model.config.class_token
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        error = (model(images) - reference(images)).abs().max().item()
    assert error <= 1e-5


# ---- bad files: each error names the problem ----


def _write(path: Path, params: dict[str, np.ndarray]) -> Path:
    np.savez(path, **params)
    return path


def test_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not an .npz archive"):
        vitkit.load_model(path)


def test_truncated_file(official_fixture: Path, tmp_path: Path) -> None:
    data = (official_fixture / "params.npz").read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        vitkit.load_model(path)


def test_missing_key_is_named(official_fixture: Path, tmp_path: Path) -> None:
    params = dict(np.load(official_fixture / "params.npz"))
    del params["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"]
    with pytest.raises(CheckpointError, match="encoderblock_1/MlpBlock_3/Dense_1/bias"):
        vitkit.load_model(_write(tmp_path / "missing.npz", params))


def test_wrong_shape_names_key_expected_and_found(official_fixture: Path, tmp_path: Path) -> None:
    params = dict(np.load(official_fixture / "params.npz"))
    key = "Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel"
    params[key] = np.zeros((100, 64), np.float32)
    with pytest.raises(CheckpointError) as error:
        vitkit.load_model(_write(tmp_path / "shape.npz", params))
    assert key in str(error.value)
    assert "(128, 64)" in str(error.value) and "(100, 64)" in str(error.value)


def test_pickled_arrays_are_refused(official_fixture: Path, tmp_path: Path) -> None:
    params: dict[str, np.ndarray] = dict(np.load(official_fixture / "params.npz"))
    params["head/bias"] = np.array([{"evil": 1}], dtype=object)
    with pytest.raises(CheckpointError, match="head/bias"):
        vitkit.load_model(_write(tmp_path / "pickle.npz", params))


def test_missing_file_and_unknown_extension(tmp_path: Path, official_fixture: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        vitkit.load_model(tmp_path / "absent.npz")
    odd = tmp_path / "weights.dat"
    shutil.copy(official_fixture / "params.npz", odd)
    with pytest.raises(CheckpointError, match="format"):
        vitkit.load_model(odd)
    assert vitkit.load_model(odd, format="npz").config.width == 64
