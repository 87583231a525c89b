"""Every export format against every kind of model (issue 16): each cell either writes a file that
the format's own client reads back with the model's outputs, or refuses with CheckpointError whose
message names formats that then do hold the model (each is exported and checked here).

Clients: timm (`timm.create_model` + strict `load_state_dict`), transformers (`from_pretrained`),
Google's format (the key names and shapes of Google's fixture, timm's own reader of Google's .npz
files, and the round trip through `vitkit.load_model`), onnxruntime, and vitkit's own format.
Run with -s for the table of max |difference| per cell.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from transformers import ViTForImageClassification

import vitkit
from vitkit import CheckpointError
from vitkit.weights.export import HOLDING_FORMATS, export_model
from vitkit.weights.timm import TIMM_MODEL_NAME, timm_model_kwargs, timm_model_name

from helpers import OFFICIAL_FIXTURE, randomise_

# Small models share the fixture's transformer (width 64, 2 blocks, 4 heads, MLP 128, 8x8 patches
# on 64 px, 7 classes), so that the exported .npz keys can be held to the fixture's own shapes.
SMALL = dict(img_size=64, patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=128, num_classes=7)
HYBRID = dict(patch_size=1, img_size=32, num_classes=7)
KINDS: dict[str, vitkit.ViTConfig] = {
    "vit-token-pre-logits-tanh": vitkit.ViTConfig(**SMALL, gelu="tanh", representation_size=32),
    "vit-token-exact-gelu": vitkit.ViTConfig(**SMALL),
    "vit-token-tanh-gelu": vitkit.ViTConfig(**SMALL, gelu="tanh"),
    "vit-token-eps-1e-12": vitkit.ViTConfig(**SMALL, layer_norm_eps=1e-12),  # transformers'
    "vit-token-tanh-eps-1e-12": vitkit.ViTConfig(**SMALL, gelu="tanh", layer_norm_eps=1e-12),
    "vit-gap-exact-gelu": vitkit.ViTConfig(**SMALL, classifier="gap", class_token=False),
    "vit-gap-tanh-gelu": vitkit.ViTConfig(
        **SMALL, classifier="gap", class_token=False, gelu="tanh"
    ),
    # The demo's model as the demo fine-tunes it (exact GELU, eps 1e-6), and in tanh-GELU.
    "R+ViT-CIFAR/4": vitkit.get_config("R+ViT-CIFAR/4"),
    "R+ViT-CIFAR/4-tanh": vitkit.get_config("R+ViT-CIFAR/4", gelu="tanh"),
    # Hybrids with stages in Google's numerics: R26 (a layout timm has a name for), and two
    # stages of two units on a 32-channel root (a layout only Google's code builds).
    "R26+ViT-token-tanh": vitkit.ViTConfig(
        **{**SMALL, **HYBRID, "img_size": 64}, resnet_layers=(2, 2, 2, 2), gelu="tanh"
    ),
    "R(2,2)+ViT-token-tanh": vitkit.ViTConfig(
        **{**SMALL, **HYBRID}, resnet_layers=(2, 2), resnet_width=32, gelu="tanh"
    ),
}
FORMATS = ("vitkit", "timm", "hf", "npz", "onnx")
TARGETS = {"vitkit": "vitkit", "timm": "timm.safetensors", "hf": "hf", "npz": "model.npz",
           "onnx": "model.onnx"}  # fmt: skip
# The cells each format must refuse, with the one reason it must give. Every other cell exports.
REFUSED: dict[tuple[str, str], str] = {
    ("vit-token-pre-logits-tanh", "timm"): "pre-logits",
    ("vit-token-pre-logits-tanh", "hf"): "pre-logits",
    ("vit-token-exact-gelu", "npz"): "gelu='exact'",
    ("vit-token-eps-1e-12", "npz"): "gelu='exact'",
    ("vit-token-tanh-eps-1e-12", "npz"): "layer_norm_eps=1e-12",
    ("vit-gap-exact-gelu", "hf"): r"\[class\] token",
    ("vit-gap-exact-gelu", "npz"): "gelu='exact'",
    ("vit-gap-tanh-gelu", "hf"): r"\[class\] token",
    ("R+ViT-CIFAR/4", "hf"): "hybrid",
    ("R+ViT-CIFAR/4", "npz"): "gelu='exact'",
    ("R+ViT-CIFAR/4-tanh", "hf"): "hybrid",
    ("R26+ViT-token-tanh", "hf"): "hybrid",
    ("R(2,2)+ViT-token-tanh", "hf"): "hybrid",
    ("R(2,2)+ViT-token-tanh", "timm"): "registered names",
}
TOLERANCE = 1e-5
# timm's hybrids compute weight standardisation as sqrt(var + eps), Google's as std + eps: a
# hybrid in Google's numerics agrees with its timm export only as closely as those do.
HYBRID_TIMM_TOLERANCE = 2e-4
# onnxruntime sums convolutions in its own order; a ResNet's many standardised convs add up.
ONNX_RESNET_TOLERANCE = 1e-4


@torch.no_grad()
def randomised(config: vitkit.ViTConfig, seed: int = 0) -> vitkit.VisionTransformer:
    """A model of `config` with every parameter random (the head and the ResNet units' last
    GroupNorm are zero at init), so that every weight shows in the outputs."""
    return randomise_(vitkit.VisionTransformer(config), seed).eval()


def images(config: vitkit.ViTConfig) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, config.in_chans, *config.img_size, generator=generator)


def difference(expected: torch.Tensor, got: torch.Tensor) -> float:
    assert got.shape == expected.shape
    # The outputs must carry signal, or agreement would prove nothing.
    assert expected.std() > 0.05 and (expected[0] - expected[1]).abs().max() > 0.01
    return (got - expected).abs().max().item()


def outputs(model: vitkit.VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# --- One checker per format: read the export with the format's own client ---------------------


def check_vitkit(model: vitkit.VisionTransformer, path: Path, x: torch.Tensor) -> float:
    reloaded = vitkit.load_model(path)
    assert reloaded.config == model.config
    return difference(outputs(model, x), outputs(reloaded, x))


def check_timm(model: vitkit.VisionTransformer, path: Path, x: torch.Tensor) -> float:
    config = model.config
    reference = timm.create_model(
        timm_model_name(config), pretrained=False, **timm_model_kwargs(config)
    )
    reference.load_state_dict(load_file(str(path)), strict=True)
    with torch.no_grad():
        return difference(reference.eval()(x), outputs(model, x))


def check_hf(model: vitkit.VisionTransformer, path: Path, x: torch.Tensor) -> float:
    reference, info = ViTForImageClassification.from_pretrained(path, output_loading_info=True)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    with torch.no_grad():
        return difference(reference.eval()(pixel_values=x).logits, outputs(model, x))


def check_npz(model: vitkit.VisionTransformer, path: Path, x: torch.Tensor) -> float:
    """Google's key names and shapes (the fixture's, for the keys it has), timm's reader of
    Google's files (plain ViTs), and the round trip through vitkit's reader."""
    with np.load(path) as exported, np.load(OFFICIAL_FIXTURE / "params.npz") as fixture:
        shapes = {key: exported[key].shape for key in exported.files}
        same_transformer = model.config.width == 64 and model.config.mlp_dim == 128
        for key in fixture.files:  # the fixture's transformer: SMALL's, not the demo's
            if same_transformer and key in shapes and key not in ("head/kernel", "head/bias"):
                want = fixture[key].shape
                if key == "Transformer/posembed_input/pos_embedding":  # the fixture has no cls
                    want = (1, model.config.num_tokens, want[2])
                if key == "embedding/kernel" and model.config.is_hybrid:
                    continue
                assert shapes[key] == want, key
        # Google's names, with any block number (the fixture has two blocks) and the hybrid's
        # ResNet keys (tests/test_hybrid.py holds those to vit_jax's models_resnet).
        block = re.compile(r"encoderblock_\d+/")
        google_names = {block.sub("encoderblock_0/", key) for key in fixture.files} | {"cls"}
        resnet = re.compile(r"(conv_root|gn_root|block\d+/unit\d+/(conv|gn)(\d|_proj))/")
        strangers = [key for key in shapes if block.sub("encoderblock_0/", key) not in
                     google_names and not resnet.match(key)]  # fmt: skip
        assert not strangers, strangers
    if not model.config.is_hybrid:
        assert timm_reads_npz_alike(model, path, x) <= TOLERANCE
    reloaded = vitkit.load_model(path)
    assert reloaded.config == model.config
    return difference(outputs(model, x), outputs(reloaded, x))


def timm_reads_npz_alike(model: vitkit.VisionTransformer, path: Path, x: torch.Tensor) -> float:
    """timm's own loader of Google's .npz files, in a timm ViT of the same numerics: the tokens
    after the final norm (timm has no pre-logits layer, which its loader skips)."""
    config = dataclasses.replace(model.config, representation_size=None, num_classes=0)
    reference = timm.create_model(TIMM_MODEL_NAME, pretrained=False, **timm_model_kwargs(config))
    reference.load_pretrained(str(path))
    with torch.no_grad():
        return difference(reference.eval().forward_features(x), model.forward_features(x))


def check_onnx(model: vitkit.VisionTransformer, path: Path, x: torch.Tensor) -> float:
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return difference(outputs(model, x), torch.from_numpy(got))


CHECKS = {"vitkit": check_vitkit, "timm": check_timm, "hf": check_hf, "npz": check_npz,
          "onnx": check_onnx}  # fmt: skip


def export(model: vitkit.VisionTransformer, directory: Path, to: str) -> Path:
    if to == "onnx":
        from vitkit.weights.onnx_export import export_onnx

        return export_onnx(model, directory / TARGETS[to])
    return export_model(model, directory / TARGETS[to], to=to)


def tolerance(config: vitkit.ViTConfig, to: str) -> float:
    if to == "timm" and config.is_hybrid and config.resnet_numerics == "google":
        return HYBRID_TIMM_TOLERANCE
    if to == "onnx" and config.resnet_layers:  # onnxruntime's own conv kernels, 16+ deep
        return ONNX_RESNET_TOLERANCE
    return TOLERANCE


def exported_and_checked(kind: str, to: str, directory: Path) -> float:
    """Export KINDS[kind] to `to` and read it back with the format's client: max |difference|."""
    model = randomised(KINDS[kind])
    directory.mkdir(parents=True, exist_ok=True)
    path = export(model, directory, to)
    error = CHECKS[to](model, path, images(model.config))
    assert error <= tolerance(model.config, to), f"{kind} -> {to}: {error:.3e}"
    return error


def named_formats(message: str) -> list[str]:
    """The formats a refusal names as holding the model."""
    match = re.search(re.escape(HOLDING_FORMATS) + r" ([\w, ]+)$", message)
    assert match, f"the refusal names no format that holds the model: {message}"
    return match.group(1).split(", ")


@pytest.mark.parametrize("to", FORMATS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_export_matrix(tmp_path: Path, kind: str, to: str) -> None:
    """Each cell writes what the format's client reads back alike, or refuses with the one
    expected reason and names formats that then succeed."""
    if (kind, to) not in REFUSED:
        error = exported_and_checked(kind, to, tmp_path / to)
        print(f"\n| {kind} | {to} | max |diff| {error:.2e} |")
        return
    with pytest.raises(CheckpointError) as refusal:
        export(randomised(KINDS[kind]), tmp_path, to)
    message = str(refusal.value)
    assert re.search(REFUSED[kind, to], message), message
    assert list(tmp_path.iterdir()) == []  # nothing written
    holding = named_formats(message)
    assert to not in holding and "vitkit" in holding
    done = [f"{name} {exported_and_checked(kind, name, tmp_path / name):.2e}" for name in holding]
    print(f"\n| {kind} | {to} | refused: {message.split(': ', 1)[1]} -> {', '.join(done)} |")
