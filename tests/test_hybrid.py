"""ResNet + ViT hybrids: parameter counts (Google's and timm's), equivalence with timm's hybrid ViTs
(randomised), official-layout .npz files written here from the architecture's description, the
ResNet's numerics against an independent numpy reference, and the errors."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import vitkit
from vitkit import CheckpointError
from vitkit.models import resnet
from vitkit.models.complexity import count_params
from vitkit.models.pos_embed import resize_pos_embed
from vitkit.weights.google import write_npz
from vitkit.weights.registry import get_pretrained, list_pretrained
from vitkit.weights.state_dict import load_checked
from vitkit.weights.timm import timm_to_vitkit

from helpers import randomise_

TOLERANCE = 1e-5
TIMM_TWINS = {
    "R50+ViT-B/16": "vit_base_r50_s16_224",
    "R50+ViT-L/32": "vit_large_r50_s32_224",
    "R26+ViT-S/32": "vit_small_r26_s32_224",
    "R26+ViT-B/32": "vit_base_r26_s32_224",
    "R+ViT-Ti/16": "vit_tiny_r_s16_p8_224",
}


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_r50_b16_has_the_official_parameter_count() -> None:
    with torch.device("meta"):
        model = vitkit.create_model("R50+ViT-B/16", img_size=224, num_classes=1000)
    assert _num_params(model) == 98_659_112
    assert count_params(model.config) == 98_659_112
    assert model.config.grid_size == (14, 14) and model.pos_embed.shape == (1, 197, 768)


@pytest.mark.parametrize("name", list(TIMM_TWINS))
def test_presets_match_timm_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        model = vitkit.create_model(name, num_classes=1000)
        reference = timm.create_model(TIMM_TWINS[name], pretrained=False, num_classes=1000)
        assert _num_params(model) == _num_params(reference) == count_params(model.config)
        assert model.pos_embed.shape == reference.pos_embed.shape


def _timm_hybrid(name: str, **kwargs: object) -> torch.nn.Module:
    model = timm.create_model(name, pretrained=False, num_classes=7, **kwargs)
    return randomise_(model).eval()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("vit_base_r50_s16_224", dict(depth=2, img_size=(64, 96))),  # non-square, non-default
        ("vit_small_r26_s32_224", dict(depth=2, img_size=96)),
        ("vit_tiny_r_s16_p8_224", dict(img_size=64)),
    ],
)
def test_logits_match_timm(tmp_path: Path, name: str, kwargs: dict) -> None:
    reference = _timm_hybrid(name, **kwargs)
    path = tmp_path / "hybrid.safetensors"
    save_file({key: value.contiguous() for key, value in reference.state_dict().items()}, path)
    size = kwargs["img_size"]
    size = (size, size) if isinstance(size, int) else size
    # timm files do not record the image size: non-square grids need it (as for plain ViTs).
    config, state = timm_to_vitkit(load_file(str(path)), img_size=size)
    model = vitkit.VisionTransformer(config).eval()
    load_checked(model, state, source=str(path), strict=True)
    if size[0] == size[1]:
        model = vitkit.load_model(path)
    assert model.config.resnet_numerics == "timm" and model.config.img_size == size
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), model(x)
    # The outputs must carry signal, or agreement would prove nothing (GroupNorm after every
    # randomised conv evens the images out, hence the smaller difference between them).
    assert expected.std() > 0.05 and (expected[0] - expected[1]).abs().max() > 0.01
    error = (got - expected).abs().max().item()
    print(f"\n{name} {size}: max |vitkit - timm| = {error:.3e}")
    assert error <= TOLERANCE


# --- An official-layout checkpoint, written from the description of vit_jax's hybrid -----------

SMALL = dict(layers=(3, 4, 9), root=32, width=64, depth=2, heads=4, mlp=128, grid=4, classes=5)


def _official_arrays(seed: int = 0, layers: tuple[int, ...] = SMALL["layers"]) -> dict:
    """Random arrays under the key names and shapes of Google's R50+ViT files (GroupNorm
    parameters as (1, 1, 1, C)), for a small transformer."""
    rng = np.random.default_rng(seed)
    root, width, mlp = SMALL["root"], SMALL["width"], SMALL["mlp"]
    heads = SMALL["heads"]
    arrays: dict[str, np.ndarray] = {}

    def conv(key: str, k: int, cin: int, cout: int) -> None:
        arrays[f"{key}/kernel"] = rng.normal(0.1, 1.0, (k, k, cin, cout)).astype(np.float32)

    def gn(key: str, chans: int) -> None:
        arrays[f"{key}/scale"] = (1 + 0.2 * rng.normal(size=(1, 1, 1, chans))).astype(np.float32)
        arrays[f"{key}/bias"] = (0.1 * rng.normal(size=(1, 1, 1, chans))).astype(np.float32)

    conv("conv_root", 7, 3, root)
    gn("gn_root", root)
    chans = root
    for i, units in enumerate(layers):
        stage_width = root * 2**i
        for j in range(units):
            unit = f"block{i + 1}/unit{j + 1}"
            if j == 0:
                conv(f"{unit}/conv_proj", 1, chans, 4 * stage_width)
                gn(f"{unit}/gn_proj", 4 * stage_width)
            conv(f"{unit}/conv1", 1, chans, stage_width)
            gn(f"{unit}/gn1", stage_width)
            conv(f"{unit}/conv2", 3, stage_width, stage_width)
            gn(f"{unit}/gn2", stage_width)
            conv(f"{unit}/conv3", 1, stage_width, 4 * stage_width)
            gn(f"{unit}/gn3", 4 * stage_width)
            chans = 4 * stage_width

    def dense(key: str, *shape: int, scale: float) -> None:
        arrays[f"{key}/kernel"] = (rng.normal(size=shape) * scale).astype(np.float32)

    def bias(key: str, *shape: int) -> None:
        arrays[f"{key}/bias"] = (0.1 * rng.normal(size=shape)).astype(np.float32)

    dense("embedding", 1, 1, chans, width, scale=chans**-0.5)
    bias("embedding", width)
    arrays["cls"] = rng.normal(size=(1, 1, width)).astype(np.float32)
    tokens = SMALL["grid"] ** 2 + 1
    arrays["Transformer/posembed_input/pos_embedding"] = rng.normal(size=(1, tokens, width)).astype(
        np.float32
    )
    for name in ("Transformer/encoder_norm",):
        arrays[f"{name}/scale"] = (1 + 0.2 * rng.normal(size=width)).astype(np.float32)
        bias(name, width)
    for b in range(SMALL["depth"]):
        block = f"Transformer/encoderblock_{b}"
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            arrays[f"{block}/{norm}/scale"] = (1 + 0.2 * rng.normal(size=width)).astype(np.float32)
            bias(f"{block}/{norm}", width)
        attn = f"{block}/MultiHeadDotProductAttention_1"
        for name in ("query", "key", "value"):
            dense(f"{attn}/{name}", width, heads, width // heads, scale=width**-0.5)
            bias(f"{attn}/{name}", heads, width // heads)
        dense(f"{attn}/out", heads, width // heads, width, scale=width**-0.5)
        bias(f"{attn}/out", width)
        dense(f"{block}/MlpBlock_3/Dense_0", width, mlp, scale=width**-0.5)
        bias(f"{block}/MlpBlock_3/Dense_0", mlp)
        dense(f"{block}/MlpBlock_3/Dense_1", mlp, width, scale=mlp**-0.5)
        bias(f"{block}/MlpBlock_3/Dense_1", width)
    dense("head", width, SMALL["classes"], scale=width**-0.5)
    bias("head", SMALL["classes"])
    return arrays


@pytest.fixture(scope="module")
def official_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hybrid") / "R50_small.npz"
    np.savez(path, **_official_arrays())
    return path


def test_official_layout_loads_and_runs(official_npz: Path, tmp_path: Path) -> None:
    arrays = dict(np.load(official_npz))
    model = vitkit.load_model(official_npz)
    config = model.config
    assert config.resnet_layers == (3, 4, 9) and config.resnet_width == SMALL["root"]
    assert config.resnet_numerics == "google" and config.gelu == "tanh"
    assert config.total_stride == 16 and config.img_size == (64, 64)
    assert config.grid_size == (4, 4)
    assert _num_params(model) == sum(a.size for a in arrays.values()) == count_params(config)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, SMALL["classes"]) and logits.std() > 0.05

    # Round trip: vitkit -> Google's layout -> vitkit, same outputs.
    again = vitkit.load_model(write_npz(model, tmp_path / "again.npz"))
    with torch.no_grad():
        assert torch.equal(again(x), logits)


def test_official_layout_at_higher_resolution(official_npz: Path) -> None:
    """Fine-tuning at 96 px: the ResNet's 4x4 grid becomes 6x6, and the position embeddings are
    resized on it (Google's bilinear)."""
    model = vitkit.load_model(official_npz, img_size=96, num_classes=3)
    assert model.config.grid_size == (6, 6) and model.pos_embed.shape == (1, 37, SMALL["width"])
    posemb = torch.from_numpy(np.load(official_npz)["Transformer/posembed_input/pos_embedding"])
    expected = resize_pos_embed(posemb, new_grid=(6, 6), old_grid=(4, 4))
    assert torch.equal(model.pos_embed.detach(), expected)
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 96, 96))
    assert features.shape == (1, 37, SMALL["width"])
    with pytest.raises(ValueError, match="total stride"):
        model(torch.randn(1, 3, 100, 100))


def test_group_norm_params_load_as_vectors_too(official_npz: Path, tmp_path: Path) -> None:
    arrays = {key: (value.reshape(-1) if "/gn" in key else value)
              for key, value in np.load(official_npz).items()}  # fmt: skip
    np.savez(tmp_path / "flat.npz", **arrays)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = vitkit.load_model(official_npz)(x)
        b = vitkit.load_model(tmp_path / "flat.npz")(x)
    assert torch.equal(a, b)


def test_tf_same_padding_matters(official_npz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Symmetric padding (PyTorch's usual) instead of TF 'SAME' changes the outputs visibly."""
    model = vitkit.load_model(official_npz)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        same = model(x)

    def symmetric(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
        pad = (kernel - 1) // 2
        return F.pad(x, [pad] * 4, value=value)

    monkeypatch.setattr(resnet, "pad_same", symmetric)
    with torch.no_grad():
        sym = model(x)
    difference = (same - sym).abs().max().item()
    print(f"\nmax |TF-SAME - symmetric| = {difference:.3f} (|logits| max {same.abs().max():.2f})")
    assert difference > 0.05


# --- One StdConv and the max-pool against numpy ---------------------------------------------------


def _numpy_std_conv_same(x: np.ndarray, kernel_hwio: np.ndarray, stride: int) -> np.ndarray:
    """Google's StdConv (HWIO kernel standardised over H, W, in; eps added to the std) with
    TF 'SAME' padding, by explicit sums in float64. x: (C, H, W) -> (out, H', W')."""
    k = kernel_hwio.astype(np.float64)
    k = k - k.mean(axis=(0, 1, 2))
    k = k / (k.std(axis=(0, 1, 2)) + 1e-5)
    size = kernel_hwio.shape[0]
    chans, height, width = x.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + size - height, 0)
    pad_w = max((out_w - 1) * stride + size - width, 0)
    padded = np.zeros((chans, height + pad_h, width + pad_w))
    padded[:, pad_h // 2 : pad_h // 2 + height, pad_w // 2 : pad_w // 2 + width] = x
    out = np.zeros((kernel_hwio.shape[3], out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            window = padded[:, i * stride : i * stride + size, j * stride : j * stride + size]
            out[:, i, j] = np.einsum("chw,hwco->o", window, k)
    return out


@pytest.mark.parametrize(
    ("kernel", "stride", "size"), [(7, 2, 10), (7, 2, 9), (3, 2, 8), (3, 1, 5)]
)
def test_std_conv_same_matches_numpy(kernel: int, stride: int, size: int) -> None:
    rng = np.random.default_rng(kernel + size)
    x = rng.normal(size=(3, size, size)).astype(np.float32)
    kernel_hwio = rng.normal(0.2, 1.0, (kernel, kernel, 3, 4)).astype(np.float32)
    conv = resnet.StdConv2d(3, 4, kernel, stride=stride, numerics="google")
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel_hwio).permute(3, 2, 0, 1))
        got = conv(torch.from_numpy(x)[None])[0].double().numpy()
    expected = _numpy_std_conv_same(x, kernel_hwio, stride)
    error = np.abs(got - expected).max()
    print(f"\nStdConv {kernel}x{kernel}/{stride} on {size}px: max |torch - numpy| = {error:.2e}")
    assert got.shape == expected.shape and error <= 1e-4


def test_max_pool_same_pads_with_minus_infinity() -> None:
    x = -torch.rand(1, 1, 6, 6) - 1  # all negative: zero padding would win the max
    pooled = F.max_pool2d(resnet.pad_same(x, 3, 2, value=-math.inf), 3, 2)
    # TF 'SAME' on 6 px with k=3, s=2 pads 0 at the top/left and 1 at the bottom/right.
    reference = np.array(
        [[x[0, 0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max().item() for j in range(3)]
         for i in range(3)]
    )  # fmt: skip
    assert np.allclose(pooled[0, 0].numpy(), reference)


# --- Errors and the registry ---------------------------------------------------------------------


def test_a_typed_layout_must_be_a_named_resnet(tmp_path: Path) -> None:
    """A layout typed over a preset is checked against the named ResNets (a typo is caught);
    one read from a file is the file's, but must be sane."""
    with pytest.raises(ValueError, match=r"unknown ResNet stage layout.*\(3, 4, 5\).*known"):
        vitkit.get_config("R50+ViT-B/16", resnet_layers=(3, 4, 5))
    np.savez(tmp_path / "odd.npz", **_official_arrays(layers=(3, 4, 5)))
    assert vitkit.load_model(tmp_path / "odd.npz").config.resnet_layers == (3, 4, 5)
    for insane in [(1,) * 9, (65,), (0, 2)]:
        with pytest.raises(vitkit.ConfigError, match="resnet_layers"):
            vitkit.ViTConfig(resnet_layers=insane, patch_size=1, img_size=4 * 2**9)


def test_any_stage_layout_in_a_google_file_matches_timm(tmp_path: Path) -> None:
    """Issue 16 point 2: a Google hybrid .npz with two stages of two units (no preset) loads, its
    layout read from the file, and computes what timm's ResNetV2 hybrid with that layout computes
    when timm's own reader of Google's .npz loads the same file (vitkit in timm's numerics)."""
    from functools import partial

    from timm.layers import StdConv2dSame
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer_hybrid import _create_vision_transformer_hybrid

    np.savez(tmp_path / "r22.npz", **_official_arrays(layers=(2, 2)))
    model = vitkit.load_model(tmp_path / "r22.npz")
    assert model.config.resnet_layers == (2, 2) and model.config.img_size == (32, 32)
    backbone = ResNetV2(
        layers=(2, 2), num_classes=0, global_pool="", preact=False, stem_type="same",
        conv_layer=partial(StdConv2dSame, eps=1e-8), width_factor=SMALL["root"] / 64,
    )  # fmt: skip
    reference = _create_vision_transformer_hybrid(
        "vit_base_r50_s16_224", backbone=backbone, img_size=32, embed_dim=SMALL["width"],
        depth=SMALL["depth"], num_heads=SMALL["heads"], mlp_ratio=SMALL["mlp"] / SMALL["width"],
        num_classes=SMALL["classes"],
    ).eval()  # fmt: skip
    reference.load_pretrained(str(tmp_path / "r22.npz"))
    timm_numerics = vitkit.VisionTransformer(
        dataclasses.replace(model.config, resnet_numerics="timm", gelu="exact")
    ).eval()
    timm_numerics.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, got = reference(x), timm_numerics(x)
    assert expected.std() > 0.05 and (expected[0] - expected[1]).abs().max() > 0.01
    error = (got - expected).abs().max().item()
    print(f"\nGoogle-layout R(2,2) hybrid .npz: max |vitkit - timm| = {error:.3e}")
    assert error <= TOLERANCE

    # The same timm model's own state dict, with its (2, 2) layout, loads too (timm's numerics).
    save_file(randomise_(reference).state_dict(), tmp_path / "r22.safetensors")
    from_timm = vitkit.load_model(tmp_path / "r22.safetensors", num_heads=SMALL["heads"])
    assert from_timm.config.resnet_layers == (2, 2)
    assert from_timm.config.resnet_numerics == "timm"
    with torch.no_grad():
        error = (from_timm(x) - reference(x)).abs().max().item()
    print(f"timm R(2,2) hybrid state dict: max |vitkit - timm| = {error:.3e}")
    assert error <= TOLERANCE


def test_resnet_keys_without_root_match_no_hybrid(official_npz: Path, tmp_path: Path) -> None:
    arrays = dict(np.load(official_npz))
    del arrays["conv_root/kernel"]
    np.savez(tmp_path / "rootless.npz", **arrays)
    with pytest.raises(CheckpointError, match="conv_root.*matches no"):
        vitkit.load_model(tmp_path / "rootless.npz")
    arrays = dict(np.load(official_npz))
    del arrays["block2/unit3/conv2/kernel"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(CheckpointError, match="block2/unit3/conv2/kernel"):
        vitkit.load_model(tmp_path / "missing.npz")


def test_registered_hybrid_weights_name_a_buildable_preset() -> None:
    hybrids = [name for name in list_pretrained() if name.startswith("R50+ViT-B/16@")]
    assert hybrids
    for name in hybrids:
        weights = get_pretrained(name)
        config = vitkit.get_config(weights.architecture, img_size=weights.resolution)
        assert (
            config.resnet_layers == (3, 4, 9)
            and config.grid_size == (weights.resolution // 16,) * 2
        )
