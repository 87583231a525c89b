"""Exports (`vitkit convert`, `export_model`), checked by the library each format belongs to: a
Hugging Face directory must load in transformers, a timm state dict into `timm.create_model`
strictly, and both give vitkit's logits; a Google .npz must have the keys and shapes of Google's
own file and load back exactly. What a format cannot express is refused, and nothing is written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from transformers import ViTForImageClassification, ViTModel

import vitkit
from vitkit import CheckpointError
from vitkit.cli.main import main
from vitkit.weights.export import HOLDING_FORMATS, export_model, holding_formats
from vitkit.weights.timm import TIMM_MODEL_NAME, timm_model_kwargs

from helpers import OFFICIAL_FIXTURE, randomise_

TOLERANCE = 1e-5


@torch.no_grad()
def random_model(
    seed: int = 0, preprocessing: vitkit.Preprocessing | None = None, **fields: object
) -> vitkit.VisionTransformer:
    """A small vitkit model with every parameter random (the head is zero at init): LayerNorm
    weights around 1, matrices at std 1/sqrt(fan_in), so that every weight matters."""
    config = vitkit.ViTConfig(
        **{
            **dict(img_size=32, patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=128),
            **dict(num_classes=5),
            **fields,
        }
    )
    model = vitkit.VisionTransformer(config, preprocessing=preprocessing)
    return randomise_(model, seed).eval()


def images(config: vitkit.ViTConfig, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, config.in_chans, *config.img_size, generator=generator)


def max_difference(expected: torch.Tensor, got: torch.Tensor, label: str) -> float:
    assert got.shape == expected.shape
    # The outputs must carry signal, or agreement would prove nothing.
    assert expected.std() > 0.05 and (expected[0] - expected[1]).abs().max() > 0.05
    error = (got - expected).abs().max().item()
    print(f"\n{label}: max |difference| = {error:.3e} (max {expected.abs().max():.2f})")
    return error


def run_cli(*args: str | Path) -> int:
    return main([str(arg) for arg in args])


# --- Hugging Face -------------------------------------------------------------------------------

HF_CASES: dict[str, dict] = {
    "exact-gelu": {},
    "tanh-gelu-eps-1e-12": dict(gelu="tanh", layer_norm_eps=1e-12),
    "32x48-no-qkv-bias-1-channel": dict(
        img_size=(32, 48),
        qkv_bias=False,
        in_chans=1,
        preprocessing=vitkit.Preprocessing(
            resolution=(32, 48), mean=(0.5,), std=(0.25,), interpolation="bicubic"
        ),
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_export_loads_in_transformers(tmp_path: Path, case: str) -> None:
    model = random_model(**HF_CASES[case])
    export_model(model, tmp_path / "hf", to="hf")
    reference, info = ViTForImageClassification.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    x = images(model.config)
    with torch.no_grad():
        expected = reference.eval()(pixel_values=x).logits
        error = max_difference(expected, model(x), f"HF export {case}")
    assert error <= TOLERANCE
    # ... and vitkit reads it back with the same config, and the same preprocessing from the
    # processor file.
    loaded = vitkit.load_model(tmp_path / "hf")
    assert loaded.config == model.config and loaded.preprocessing == model.preprocessing


def test_hf_export_of_features_with_pre_logits_is_a_vit_model(tmp_path: Path) -> None:
    """Without a head, the pre-logits layer is ViTModel's pooler (Linear + tanh on the token)."""
    model = random_model(num_classes=0, representation_size=48)
    export_model(model, tmp_path / "hf", to="hf")
    reference, info = ViTModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = images(model.config)
    with torch.no_grad():
        expected = reference.eval()(pixel_values=x).pooler_output
        got = model.forward_head(model.forward_features(x), pre_logits=True)
    assert max_difference(expected, got, "HF export ViTModel pooler") <= TOLERANCE


def test_torchvision_to_hf_on_the_command_line(tmp_path: Path) -> None:
    """torchvision file -> vitkit convert -> transformers gives torchvision's logits."""
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

    reference = TorchvisionViT(
        image_size=32, patch_size=8, num_layers=2, num_heads=3, hidden_dim=192, mlp_dim=256
    )
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for param in reference.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    assert run_cli("convert", tmp_path / "vit.pth", tmp_path / "hf", "--to", "hf") == 0
    hf = ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference.eval()(x)
        error = max_difference(expected, hf(pixel_values=x).logits, "torchvision -> HF")
    assert error <= TOLERANCE


# --- timm ---------------------------------------------------------------------------------------

TIMM_CASES: dict[str, dict] = {
    "token": {},
    "gap-no-class-token": dict(classifier="gap", class_token=False),
    "gap-with-class-token": dict(classifier="gap"),
    "tanh-gelu-eps-1e-12-features": dict(gelu="tanh", layer_norm_eps=1e-12, num_classes=0),
    "no-qkv-bias-32x48": dict(qkv_bias=False, img_size=(32, 48)),
    # 49 / 44 * 44 is 48.99...: an mlp_ratio that timm's int(embed_dim * mlp_ratio) turns into 49.
    "mlp-dim-49-width-44": dict(width=44, num_heads=4, mlp_dim=49),
}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("case", list(TIMM_CASES))
def test_timm_export_loads_into_timm_strictly(tmp_path: Path, case: str, suffix: str) -> None:
    model = random_model(**TIMM_CASES[case])
    path = export_model(model, tmp_path / f"timm{suffix}", to="timm")
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, weights_only=True)
    reference = timm.create_model(
        TIMM_MODEL_NAME, pretrained=False, **timm_model_kwargs(model.config)
    )
    reference.load_state_dict(state, strict=True)
    x = images(model.config)
    with torch.no_grad():
        error = max_difference(reference.eval()(x), model(x), f"timm export {case} {suffix}")
    assert error <= TOLERANCE


def test_convert_to_timm_prints_how_to_build_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export_model(random_model(gelu="tanh"), tmp_path / "vitkit", to="vitkit")
    target = tmp_path / "timm.safetensors"
    assert run_cli("convert", tmp_path / "vitkit", target, "--to", "timm") == 0
    out = capsys.readouterr().out
    assert f"wrote {target}" in out
    assert "timm.create_model('vit_base_patch16_224'" in out and "act_layer='gelu_tanh'" in out


# --- Google .npz --------------------------------------------------------------------------------


def test_npz_export_has_googles_keys_and_shapes(tmp_path: Path) -> None:
    """Google's fixture (gap pooling, pre-logits) -> vitkit -> .npz: the same keys with the same
    shapes and values as Google's file, and the fixture's logits when read back."""
    original = OFFICIAL_FIXTURE / "params.npz"
    model = vitkit.load_model(original)
    exported = export_model(model, tmp_path / "exported.npz", to="npz")
    with np.load(original) as want, np.load(exported) as got:
        assert sorted(got.files) == sorted(want.files)
        for key in want.files:
            assert got[key].shape == want[key].shape, key
            assert got[key].dtype == np.float32, key
            np.testing.assert_array_equal(got[key], want[key].astype(np.float32), err_msg=key)
    reloaded = vitkit.load_model(exported)
    assert reloaded.config == model.config
    nhwc = np.load(OFFICIAL_FIXTURE / "input.npy")
    with torch.no_grad():
        logits = reloaded(torch.from_numpy(nhwc).permute(0, 3, 1, 2))
    expected = torch.from_numpy(np.load(OFFICIAL_FIXTURE / "logits.npy"))
    error = (logits - expected).abs().max().item()  # the fixture's logits are small (std ~0.05)
    print(f"\nnpz round trip: max |vitkit - vit_jax| = {error:.3e}")
    assert error <= TOLERANCE


def test_npz_round_trip_with_class_token(tmp_path: Path) -> None:
    model = random_model(gelu="tanh", representation_size=32)
    source = export_model(model, tmp_path / "source", to="vitkit")
    assert run_cli("convert", source, tmp_path / "m.npz", "--to", "npz") == 0
    reloaded = vitkit.load_model(tmp_path / "m.npz")
    x = images(model.config)
    with torch.no_grad():
        assert max_difference(model(x), reloaded(x), "npz round trip token") <= TOLERANCE


# --- refusals and atomicity ---------------------------------------------------------------------

REFUSALS: dict[str, tuple[str, dict, str]] = {
    "hf-gap": ("hf", dict(classifier="gap", class_token=False), r"\[class\] token"),
    "hf-pre-logits-and-head": ("hf", dict(representation_size=32), "pre-logits"),
    "timm-pre-logits": ("timm", dict(representation_size=32), "pre-logits"),
    "npz-exact-gelu": ("npz", {}, "tanh-GELU"),
    "npz-eps": ("npz", dict(gelu="tanh", layer_norm_eps=1e-12), "eps 1e-6"),
    "npz-gap-with-token": ("npz", dict(gelu="tanh", classifier="gap"), r"\[class\] token"),
    "npz-no-qkv-bias": ("npz", dict(gelu="tanh", qkv_bias=False), "biases"),
    "npz-no-head": ("npz", dict(gelu="tanh", num_classes=0), "head"),
    "npz-non-square": ("npz", dict(gelu="tanh", img_size=(32, 48)), "square"),
}
TARGETS = {"hf": "out_dir", "timm": "out.safetensors", "npz": "out.npz"}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_what_the_target_cannot_express_is_refused(tmp_path: Path, case: str) -> None:
    to, fields, message = REFUSALS[case]
    model = random_model(**fields)
    with pytest.raises(CheckpointError, match=message) as error:
        export_model(model, tmp_path / TARGETS[to], to=to)
    print(f"\n{case}: {error.value}")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a directory


def test_refusal_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "hf"
    code = run_cli("convert", OFFICIAL_FIXTURE / "params.npz", target, "--to", "hf")
    assert code == 2 and not target.exists()
    assert "cannot export to hf" in capsys.readouterr().err


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports go through a temporary file: a writer that fails leaves the previous export, and
    the failure is one line naming it."""
    target = export_model(random_model(), tmp_path / "m.safetensors", to="timm")
    before = target.read_bytes()

    def broken(*args: object, **kwargs: object) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save", broken)
    with pytest.raises(CheckpointError, match="disk full; nothing was written"):
        export_model(random_model(seed=1), target, to="timm")
    assert target.read_bytes() == before
    assert [path.name for path in tmp_path.iterdir()] == ["m.safetensors"]


def test_wrong_destination_names_are_refused(tmp_path: Path) -> None:
    model = random_model(gelu="tanh")
    with pytest.raises(CheckpointError, match=r"\.npz name"):
        export_model(model, tmp_path / "model.bin", to="npz")
    with pytest.raises(CheckpointError, match=r"\.safetensors, \.pth"):
        export_model(model, tmp_path / "model.npz", to="timm")
    assert list(tmp_path.iterdir()) == []


def test_vitkit_round_trip_on_the_command_line(tmp_path: Path) -> None:
    timm_file = export_model(random_model(seed=2), tmp_path / "timm.pth", to="timm")
    args = ("--to", "vitkit", "--num-heads", "4")
    assert run_cli("convert", timm_file, tmp_path / "native", *args) == 0
    reloaded = vitkit.load_model(tmp_path / "native")
    original = vitkit.load_model(timm_file, num_heads=4)
    assert reloaded.config == original.config
    for key, value in original.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_torchvision_source_format_can_be_forced(tmp_path: Path) -> None:
    """--format names the source's format when its file name does not tell."""
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

    reference = TorchvisionViT(
        image_size=32, patch_size=8, num_layers=1, num_heads=4, hidden_dim=64, mlp_dim=128
    )
    torch.save(reference.state_dict(), tmp_path / "weights.ckpt")
    args = ("--to", "vitkit", "--format", "torchvision", "--num-heads", "4")
    assert run_cli("convert", tmp_path / "weights.ckpt", tmp_path / "native", *args) == 0
    assert vitkit.load_model(tmp_path / "native").config.num_heads == 4


def test_a_refusal_names_no_format_that_refuses_the_model_too(tmp_path: Path) -> None:
    """A gap-pooled model with a pre-logits layer (Google's gap checkpoints): timm refuses it, and
    the one line names no other format that would refuse it as well (hf cannot pool by mean)."""
    model = random_model(classifier="gap", representation_size=16)
    with pytest.raises(CheckpointError) as error:
        export_model(model, tmp_path / "m.safetensors", to="timm")
    message = str(error.value)
    holding = holding_formats(model.config)
    assert "hf" not in holding
    named = set(re.findall(r"\b(vitkit|timm|hf|npz)\b", message.partition(HOLDING_FORMATS)[0]))
    assert named <= {"timm", *holding}, message
