"""The ViTs people hold today, made by timm itself with random weights (no downloads): LayerScale
models (timm's registers models, DeiT III), DINOv2 with and without registers, CLIP's image tower.
Each is read from its state dict within 1e-5 of timm's own forward at its native size and at
another (each side resizing the position embeddings its own way), and written back out for timm.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

import vitkit
from vitkit.weights.export import export_model

from helpers import compare_outputs, randomise_

TOLERANCE = 1e-5
TINY = dict(embed_dim=64, depth=2, num_heads=4, num_classes=5)

# timm's registered name -> (patch size, the ViTConfig fields vitkit must read off its keys).
FAMILIES: dict[str, tuple[int, dict[str, object]]] = {
    "vit_medium_patch16_reg4_gap_256": (
        16,
        dict(layer_scale_init=1e-5, reg_tokens=4, class_token=False, classifier="gap"),
    ),
    "deit3_small_patch16_224": (
        16,
        dict(layer_scale_init=1e-5, no_embed_class=True, classifier="token"),
    ),
    "vit_small_patch14_dinov2": (14, dict(layer_scale_init=1e-5, classifier="token")),
    "vit_small_patch14_reg4_dinov2": (
        14,
        dict(layer_scale_init=1e-5, reg_tokens=4, no_embed_class=True, classifier="token"),
    ),
    "vit_base_patch16_clip_224": (
        16,
        dict(pre_norm=True, patch_bias=False, layer_norm_eps=1e-5, classifier="token"),
    ),
    "vit_base_patch16_siglip_224": (16, dict(classifier="map", class_token=False)),
}


def spread_layer_scale_(model: nn.Module, name: str) -> None:
    """LayerScale factors (parameters whose name holds `name`) around 1, far from their start
    (1e-5), so that a branch scaled wrongly shows in the outputs."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if name in key:
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=generator))


def timm_model(name: str, img_size: int) -> nn.Module:
    """A tiny random model of timm's `name`, its LayerScale factors far from their start so that
    a branch that is scaled wrongly shows."""
    model = timm.create_model(name, pretrained=False, img_size=img_size, **TINY)
    randomise_(model, seed=0)
    spread_layer_scale_(model, ".gamma")
    return model.eval()


def images(size: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))


def saved(model: nn.Module, path: Path) -> Path:
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("name", list(FAMILIES))
def test_read_with_timm_outputs_at_its_size_and_another(tmp_path: Path, name: str) -> None:
    patch, fields = FAMILIES[name]
    reference = timm_model(name, 4 * patch)
    path = saved(reference, tmp_path / f"{name}.safetensors")
    pooling = {"classifier": "token"} if fields.get("classifier") == "token" else {}
    model = vitkit.load_model(path, num_heads=4, **pooling)
    for field, value in fields.items():
        assert getattr(model.config, field) == value, field
    assert compare_outputs(reference, model, images(4 * patch), name) <= TOLERANCE

    # Another size: timm resizes the position embeddings as it loads a state dict into a model
    # built for that size (checkpoint_filter_fn); vitkit as it loads with img_size.
    other = 6 * patch
    resized = timm.create_model(name, pretrained=False, img_size=other, **TINY).eval()
    resized.load_state_dict(checkpoint_filter_fn(reference.state_dict(), resized))
    model = vitkit.load_model(path, num_heads=4, img_size=other, **pooling)
    assert compare_outputs(resized, model, images(other), f"{name} at {other} px") <= TOLERANCE


def build_printed(model: vitkit.VisionTransformer, path: Path) -> nn.Module:
    """Run the line `vitkit convert --to timm` prints, with only timm imported."""
    from vitkit.weights.timm import timm_create_model_call

    namespace: dict[str, object] = {"timm": timm}
    exec(timm_create_model_call(model.config, path=path), namespace)  # noqa: S102
    return namespace["model"].eval()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_written_back_for_timm(tmp_path: Path, name: str) -> None:
    patch, fields = FAMILIES[name]
    reference = timm_model(name, 4 * patch)
    pooling = {"classifier": "token"} if fields.get("classifier") == "token" else {}
    model = vitkit.load_model(saved(reference, tmp_path / "in.safetensors"), num_heads=4, **pooling)
    written = export_model(model, tmp_path / "out.safetensors", to="timm")
    rebuilt = build_printed(model, written)
    assert compare_outputs(rebuilt, model, images(4 * patch), f"{name} written") <= TOLERANCE


def test_a_format_without_layer_scale_refuses_it_naming_the_field(tmp_path: Path) -> None:
    model = vitkit.create_model("ViT-Test/8", layer_scale_init=1e-5, gelu="tanh")
    with pytest.raises(vitkit.CheckpointError, match="layer_scale_init") as error:
        export_model(model, tmp_path / "out.npz", to="npz")
    assert "formats that hold this model: timm, vitkit" in str(error.value)
    assert not any(tmp_path.iterdir())


# ---- transformers' DINOv2, with and without registers ----


def hf_dinov2(registers: int) -> nn.Module:
    """A tiny random transformers DINOv2 for 56 px (4x4 patches of 14), LayerScale factors far
    from their start."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56,
                 patch_size=14, layerscale_value=1e-5)  # fmt: skip
    if registers:
        model = Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(num_register_tokens=registers, **sizes)
        )
    else:
        model = Dinov2Model(Dinov2Config(**sizes))
    randomise_(model, seed=0)
    spread_layer_scale_(model, ".lambda1")
    return model.eval()


class Pooled(nn.Module):
    """A transformers backbone's pooled output (the normalised [class] token), which a vitkit
    model without a head returns."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).pooler_output


@pytest.mark.parametrize("registers", [0, 4])
def test_transformers_dinov2_read_at_its_size_and_others(tmp_path: Path, registers: int) -> None:
    reference = hf_dinov2(registers)
    reference.save_pretrained(tmp_path / "dinov2")
    model = vitkit.load_model(tmp_path / "dinov2")
    assert (model.config.reg_tokens, model.config.layer_scale_init) == (registers, 1e-5)
    label = f"transformers DINOv2, {registers} registers"
    assert compare_outputs(Pooled(reference), model, images(56), label) <= TOLERANCE
    with torch.no_grad():  # every token, not only the pooled one
        tokens = reference(pixel_values=images(56)).last_hidden_state
        error = (model.forward_features(images(56)) - tokens).abs().max().item()
    assert error <= TOLERANCE
    # transformers resizes the position embeddings at every call; vitkit as it loads. 42 px
    # shrinks the grid (where antialiasing tells the two bicubics apart), 84 px grows it.
    for other in (42, 84):
        resized = vitkit.load_model(tmp_path / "dinov2", img_size=other)
        error = compare_outputs(Pooled(reference), resized, images(other), f"{label} at {other}")
        assert error <= TOLERANCE


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_written_back_for_transformers(tmp_path: Path, registers: int) -> None:
    from transformers import AutoModel

    reference = hf_dinov2(registers)
    reference.save_pretrained(tmp_path / "source")
    model = vitkit.load_model(tmp_path / "source")
    export_model(model, tmp_path / "written", to="hf")
    rebuilt = AutoModel.from_pretrained(tmp_path / "written").eval()
    assert type(rebuilt) is type(reference)
    error = compare_outputs(Pooled(rebuilt), model, images(56), f"DINOv2 {registers} written")
    assert error <= TOLERANCE


def test_a_dinov2_with_a_head_is_refused_for_transformers_naming_the_pooling(
    tmp_path: Path,
) -> None:
    path = saved(timm_model("vit_small_patch14_dinov2", 56), tmp_path / "d.safetensors")
    model = vitkit.load_model(path, num_heads=4, classifier="token")
    with pytest.raises(vitkit.CheckpointError, match="Dinov2ForImageClassification") as error:
        export_model(model, tmp_path / "out", to="hf")
    assert "formats that hold this model: timm, vitkit" in str(error.value)


def assert_edited_config_is_refused(
    model: torch.nn.Module, folder: Path, edits: dict[str, object], named: str
) -> None:
    """`model` saved to `folder` with `edits` made to its config.json: load_model refuses it in
    one line naming the folder and `named`."""
    model.save_pretrained(folder)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edits}))
    with pytest.raises(vitkit.CheckpointError, match=named) as error:
        vitkit.load_model(folder)
    assert "\n" not in str(error.value) and str(folder) in str(error.value)


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("mlp_ratio", "4", "mlp_ratio"),
        ("mlp_ratio", 1e9, "mlp_ratio"),
        ("use_swiglu_ffn", True, "use_swiglu_ffn"),
        ("hidden_act", "silu", "hidden_act"),
        ("num_attention_heads", 3, "num_attention_heads"),
        ("layerscale_value", -1.0, "layerscale_value"),
        ("image_size", 70, "image_size"),
    ],
)
def test_bad_dinov2_config_values_are_one_line_naming_the_field(
    tmp_path: Path, field: str, value: object, named: str
) -> None:
    assert_edited_config_is_refused(hf_dinov2(0), tmp_path / "dinov2", {field: value}, named)


def test_a_clip_towers_activation_is_stated_or_warned(tmp_path: Path) -> None:
    """timm's CLIP towers compute quick GELU from OpenAI's weights and exact GELU from
    OpenCLIP's, with the same keys: read as exact with a one-line warning naming gelu='quick',
    as quick when told, and written to timm's folder with the activation named, so that it is
    read back without a word."""
    from vitkit.weights.state_dict import UnrecordedActivationWarning

    quick = timm.create_model(
        "vit_base_patch16_clip_224", pretrained=False, img_size=32, act_layer="quick_gelu", **TINY
    )
    path = saved(randomise_(quick, seed=0).eval(), tmp_path / "openai.safetensors")
    with pytest.warns(UnrecordedActivationWarning, match="gelu='quick'"):
        guessed = vitkit.load_model(path, num_heads=4, classifier="token")
    assert guessed.config.gelu == "exact"
    told = vitkit.load_model(path, num_heads=4, classifier="token", gelu="quick")
    assert compare_outputs(quick.eval(), told, images(32), "OpenAI-style CLIP tower") <= TOLERANCE
    assert compare_outputs(quick, guessed, images(32), "read as exact") > 1e-3

    export_model(told, tmp_path / "folder", to="timm")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = vitkit.load_model(tmp_path / "folder")
    assert again.config.gelu == "quick"
    with pytest.raises(vitkit.CheckpointError, match="gelu='exact' contradicts"):
        vitkit.load_model(tmp_path / "folder", gelu="exact")


# ---- DINOv3: rotary position embeddings ----


def hf_dinov3(registers: int = 4) -> nn.Module:
    """A tiny random transformers DINOv3 for 64 px (4x4 patches of 16)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, image_size=64, patch_size=16,
                             num_register_tokens=registers, layerscale_value=1e-5)  # fmt: skip
    model = randomise_(DINOv3ViTModel(config), seed=0)
    spread_layer_scale_(model, ".lambda1")
    return model.eval()


@pytest.mark.parametrize("registers", [0, 4])
def test_transformers_dinov3_read_at_its_size_and_others(tmp_path: Path, registers: int) -> None:
    reference = hf_dinov3(registers)
    reference.save_pretrained(tmp_path / "dinov3")
    model = vitkit.load_model(tmp_path / "dinov3")
    assert (model.config.pos_embed_type, model.config.reg_tokens) == ("rope_2d", registers)
    assert not [name for name in model.state_dict() if "pos" in name]  # nothing learned
    label = f"transformers DINOv3, {registers} registers"
    assert compare_outputs(Pooled(reference), model, images(64), label) <= TOLERANCE
    with torch.no_grad():
        tokens = reference(pixel_values=images(64)).last_hidden_state
        assert (model.forward_features(images(64)) - tokens).abs().max().item() <= TOLERANCE
    # Rotary positions are computed for any grid: another size needs no resize, not even a
    # square one (transformers computes the angles for each input's grid).
    for size in [(48, 48), (96, 80)]:
        resized = vitkit.load_model(tmp_path / "dinov3", img_size=size)
        pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
        error = compare_outputs(Pooled(reference), resized, pixels, f"{label} at {size}")
        assert error <= TOLERANCE


def test_dinov3_written_back_for_transformers(tmp_path: Path) -> None:
    from transformers import AutoModel

    reference = hf_dinov3()
    reference.save_pretrained(tmp_path / "source")
    model = vitkit.load_model(tmp_path / "source")
    export_model(model, tmp_path / "written", to="hf")
    rebuilt = AutoModel.from_pretrained(tmp_path / "written").eval()
    assert type(rebuilt) is type(reference)
    error = compare_outputs(Pooled(rebuilt), model, images(64), "DINOv3 written")
    assert error <= TOLERANCE


def test_rotary_positions_matter_and_rotate_the_patches_only() -> None:
    """The control: without the rotation the outputs move (so agreement above is not luck), and
    the [class] token's own query and key are never turned."""
    from vitkit.models.positions import PositionScheme

    model = vitkit.create_model("ViT-Test/8", pos_embed_type="rope_2d", reg_tokens=2)
    randomise_(model, seed=4).eval()
    scheme = model.position_scheme
    cos, sin = scheme.attention_positions((4, 4), torch.device("cpu"))
    query, key = torch.randn(2, 4, 3 + 16, 16), torch.randn(2, 4, 3 + 16, 16)
    turned_query, turned_key = scheme.rotate(query, key, (cos, sin))
    assert torch.equal(turned_query[:, :, :3], query[:, :, :3])
    assert (turned_query[:, :, 3:] - query[:, :, 3:]).abs().max() > 0.1
    with torch.no_grad():
        rotated = model(images(32))
        for block in model.blocks:
            block.attn.scheme = PositionScheme(model.config)
        assert (model(images(32)) - rotated).abs().max() > 1e-3


def timm_dinov3(img_size: int = 64) -> nn.Module:
    """A tiny random timm DINOv3 (timm's Eva), with query/value biases to show their order."""
    model = timm.create_model("vit_small_patch16_dinov3", pretrained=False, img_size=img_size,
                              qkv_bias=True, **TINY)  # fmt: skip
    randomise_(model, seed=0)
    spread_layer_scale_(model, ".gamma_")
    return model.eval()


@pytest.mark.parametrize("pooling", ["token", "gap"])
def test_timm_dinov3_read_and_written_at_sizes_it_was_not_built_for(
    tmp_path: Path, pooling: str
) -> None:
    reference = timm_dinov3()
    reference.reset_classifier(5, global_pool="token" if pooling == "token" else "avg")
    path = saved(reference, tmp_path / "dinov3.safetensors")
    model = vitkit.load_model(path, num_heads=4, classifier=pooling, img_size=64)
    assert (model.config.pos_embed_type, model.config.reg_tokens) == ("rope_2d", 4)
    assert compare_outputs(reference, model, images(64), f"timm DINOv3 {pooling}") <= TOLERANCE
    # timm's DINOv3 takes any size (dynamic_img_size): rotary positions need no resize.
    wide = torch.randn(2, 3, 48, 96, generator=torch.Generator().manual_seed(5))
    other = vitkit.load_model(path, num_heads=4, classifier=pooling, img_size=(48, 96))
    assert compare_outputs(reference, other, wide, f"timm DINOv3 {pooling} 48x96") <= TOLERANCE
    written = export_model(model, tmp_path / "out.safetensors", to="timm")
    rebuilt = build_printed(model, written)
    assert compare_outputs(rebuilt, model, images(64), "timm DINOv3 written") <= TOLERANCE


def test_timm_dinov3_pooling_is_warned_with_timms_default(tmp_path: Path) -> None:
    from vitkit.weights.state_dict import UnrecordedPoolingWarning

    path = saved(timm_dinov3(), tmp_path / "dinov3.safetensors")
    with pytest.warns(UnrecordedPoolingWarning, match=r"average pooling .*classifier='token'"):
        model = vitkit.load_model(path, num_heads=4)
    assert model.config.classifier == "gap"  # timm's vit_*_dinov3 default to global_pool='avg'


def test_dinov3_has_no_key_bias_in_any_format(tmp_path: Path) -> None:
    """DINOv3's keys have no bias, and its rotary embedding would turn one with each key's
    position: the fused projection's keys' third is left out of the computation, so it learns
    nothing, and a model whose every parameter moved (as after fine-tuning) still equals its
    exports to transformers and timm."""
    from transformers import AutoModel

    hf_dinov3().save_pretrained(tmp_path / "source")
    model = vitkit.load_model(tmp_path / "source", num_classes=0)
    assert model.config.key_bias is False
    qkv = model.blocks[0].attn.qkv
    model(images(64)).sum().backward()
    assert qkv.bias.grad[64:128].abs().max() == 0 and qkv.bias.grad[:64].abs().max() > 0
    moved = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=moved))
    export_model(model, tmp_path / "hf", to="hf")
    rebuilt = AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert compare_outputs(Pooled(rebuilt), model.eval(), images(64), "moved DINOv3") <= TOLERANCE
    model.reset_classifier(5)
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)
    written = export_model(model, tmp_path / "timm.safetensors", to="timm")
    error = compare_outputs(build_printed(model, written), model, images(64), "moved to timm")
    assert error <= TOLERANCE


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("use_gated_mlp", True, "use_gated_mlp"),
        ("rope_theta", 10000.0, "rope_theta"),
        ("hidden_act", "silu", "hidden_act"),
        ("key_bias", "no", "key_bias"),
        ("value_bias", False, "value_bias"),
        ("proj_bias", False, "proj_bias"),
        ("intermediate_size", "128", "intermediate_size"),
        ("num_attention_heads", 3, "num_attention_heads"),
        ("layerscale_value", -1.0, "layerscale_value"),
    ],
)
def test_bad_dinov3_config_values_are_one_line_naming_the_field(
    tmp_path: Path, field: str, value: object, named: str
) -> None:
    assert_edited_config_is_refused(hf_dinov3(), tmp_path / "dinov3", {field: value}, named)


def test_timm_eva_with_a_position_table_is_refused_in_one_line(tmp_path: Path) -> None:
    """An Eva with a learned table beside its rotary embedding (EVA-02) places tokens otherwise
    than DINOv3: refused, naming it, never read as a DINOv3."""
    state = dict(timm_dinov3().state_dict())
    state["pos_embed"] = torch.zeros(1, 1 + 4 + 16, 64)
    path = tmp_path / "eva02.safetensors"
    save_file(state, str(path))
    with pytest.raises(vitkit.CheckpointError, match="EVA-02") as error:
        vitkit.load_model(path, num_heads=4)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
