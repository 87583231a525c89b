"""transformers' CLIP image towers, checked against transformers itself (weights/hf_clip.py):
tiny random `CLIPVisionModel`s and `CLIPModel`s (no downloads), saved by `save_pretrained` or in
the Hub's older layout, read by `vitkit.load_model`, must give transformers' pooled output and
last hidden state within 1e-5, at their own size and at a smaller and a larger one (transformers
resizing the position embeddings at every call, vitkit as it loads), for quick and exact GELU; and
vitkit's CLIP towers, written out, must be read by transformers with the same outputs. Run with
-s for each max |difference|.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (
    AutoModel,
    CLIPConfig,
    CLIPForImageClassification,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

import vitkit
from vitkit.models.pos_embed import resize_pos_embed
from vitkit.weights.export import HOLDING_FORMATS, export_model
from vitkit.weights.hf_clip import ImageTowerOnlyWarning

from helpers import compare_outputs, randomise_

TOLERANCE = 1e-5
# 32 px in 8 px patches: a 4x4 grid; 24 px shrinks it to 3x3 (where antialiasing would tell two
# bicubics apart), 48 px grows it to 6x6.
SIZE, OTHER_SIZES = 32, (24, 48)
TOWER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             image_size=SIZE, patch_size=8)  # fmt: skip
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
ACTIVATIONS = {"quick_gelu": "quick", "gelu": "exact"}


def clip_vision(activation: str = "quick_gelu", seed: int = 0) -> CLIPVisionModel:
    """A tiny random CLIPVisionModel; every parameter randomised (LayerNorms away from 1 and 0)."""
    model = CLIPVisionModel(CLIPVisionConfig(**TOWER, hidden_act=activation))
    return randomise_(model, seed=seed).eval()


def clip_config(activation: str = "quick_gelu") -> CLIPConfig:
    return CLIPConfig(
        vision_config={**TOWER, "hidden_act": activation}, text_config=TEXT, projection_dim=24
    )


class Pooled(nn.Module):
    """A CLIP image tower's pooled output (the [class] token through post_layernorm), at any
    size: what a vitkit model without a head returns."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower(pixel_values=pixels, interpolate_pos_encoding=True).pooler_output


def images(size: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))


def load_quietly(path: Path, **options: object) -> vitkit.VisionTransformer:
    """`vitkit.load_model`, failing on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return vitkit.load_model(path, **options)


def assert_same_tower(tower: nn.Module, path: Path, label: str, **options: object) -> None:
    """The tower read from `path` gives `tower`'s pooled output and last hidden state (vitkit's
    tokens after the last block, before the final norm) at every size."""
    for size in (SIZE, *OTHER_SIZES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageTowerOnlyWarning)
            model = vitkit.load_model(path, img_size=size, **options)
        x = images(size)
        assert compare_outputs(Pooled(tower), model, x, f"{label} at {size} px") <= TOLERANCE
        with torch.no_grad():
            expected = tower(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
            got = model.forward_intermediates(x, indices=[-1])[0]
        error = (got - expected).abs().max().item()
        print(f"{label} at {size} px, last_hidden_state: max |vitkit - reference| = {error:.3e}")
        assert error <= TOLERANCE


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_clip_vision_model_read_at_its_size_and_others(tmp_path: Path, activation: str) -> None:
    reference = clip_vision(activation)
    reference.save_pretrained(tmp_path / "clip")
    model = load_quietly(tmp_path / "clip")  # nothing is left out: no warning
    config = model.config
    assert (config.pre_norm, config.patch_bias, config.class_token, config.classifier) == (
        True, False, True, "token"
    )  # fmt: skip
    assert (config.gelu, config.layer_norm_eps, config.num_classes) == (
        ACTIVATIONS[activation], 1e-5, 0
    )  # fmt: skip
    assert config.pos_embed_interpolation == "bicubic_no_antialias"
    assert_same_tower(reference, tmp_path / "clip", f"CLIPVisionModel {activation}")


def test_the_hubs_older_layout_is_read(tmp_path: Path) -> None:
    """Files on the Hub prefix the tower's keys with "vision_model." (transformers 5 saves
    without), and older ones hold the position_ids buffer, as pytorch_model.bin."""
    reference = clip_vision("gelu", seed=3)
    reference.save_pretrained(tmp_path / "hub")
    state = {f"vision_model.{key}": value for key, value in reference.state_dict().items()}
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    (tmp_path / "hub" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "hub" / "pytorch_model.bin")
    load_quietly(tmp_path / "hub")
    assert_same_tower(reference, tmp_path / "hub", "Hub-layout CLIPVisionModel")


def test_the_comparison_sees_the_activation(tmp_path: Path) -> None:
    """Control: quick GELU's weights read as exact GELU give measurably other outputs, so the
    tests above would catch a reader that ignored hidden_act."""
    reference = clip_vision("quick_gelu")
    path = edited(tmp_path, reference, {"hidden_act": "gelu"})
    model = vitkit.load_model(path)
    assert compare_outputs(Pooled(reference), model, images(SIZE), "read as exact") > 1e-3


def test_a_key_held_with_and_without_the_prefix_is_refused(tmp_path: Path) -> None:
    reference = clip_vision()
    reference.save_pretrained(tmp_path / "clip")
    state = dict(reference.state_dict())
    state["vision_model.pre_layrnorm.weight"] = state["pre_layrnorm.weight"]
    torch.save(state, tmp_path / "clip" / "pytorch_model.bin")
    (tmp_path / "clip" / "model.safetensors").unlink()
    with pytest.raises(vitkit.CheckpointError, match="pre_layrnorm.weight.*held twice"):
        vitkit.load_model(tmp_path / "clip")


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_a_clip_models_image_tower_is_read_and_the_rest_named(
    tmp_path: Path, activation: str
) -> None:
    reference = randomise_(CLIPModel(clip_config(activation)), seed=1).eval()
    reference.save_pretrained(tmp_path / "clip")
    with pytest.warns(ImageTowerOnlyWarning) as record:
        model = vitkit.load_model(tmp_path / "clip")
    assert len(record) == 1
    message = str(record[0].message)
    print(f"\n{message}")
    assert "\n" not in message
    for named in ("text tower", "text_projection.weight", "logit_scale",
                  "visual_projection.weight (24, 64)", "not CLIP's image embeddings"):  # fmt: skip
        assert named in message
    assert (model.config.gelu, model.config.width) == (ACTIVATIONS[activation], 64)
    assert_same_tower(reference.vision_model, tmp_path / "clip", f"CLIPModel {activation}")


def test_a_vision_model_with_projection_names_the_projection(tmp_path: Path) -> None:
    config = CLIPVisionConfig(**TOWER, projection_dim=24)
    reference = randomise_(CLIPVisionModelWithProjection(config), seed=4).eval()
    reference.save_pretrained(tmp_path / "clip")
    with pytest.warns(ImageTowerOnlyWarning, match=r"visual_projection.weight \(24, 64\)") as got:
        vitkit.load_model(tmp_path / "clip")
    assert "text tower" not in str(got[0].message)
    assert_same_tower(reference.vision_model, tmp_path / "clip", "CLIPVisionModelWithProjection")


def test_an_older_vision_config_dict_overrides_as_in_transformers(tmp_path: Path) -> None:
    """Older CLIPModel files hold vision_config_dict beside vision_config; transformers takes
    the dict's values, with CLIPVisionConfig's defaults for what it leaves out (here
    hidden_act: quick GELU, though vision_config says exact)."""
    reference = randomise_(CLIPModel(clip_config("quick_gelu")), seed=5).eval()
    reference.save_pretrained(tmp_path / "clip")
    path = tmp_path / "clip" / "config.json"
    content = json.loads(path.read_text())
    content["vision_config"]["hidden_act"] = "gelu"
    content["vision_config_dict"] = TOWER
    path.write_text(json.dumps(content))
    as_transformers_reads_it = CLIPModel.from_pretrained(tmp_path / "clip").eval()
    assert as_transformers_reads_it.config.vision_config.hidden_act == "quick_gelu"
    with pytest.warns(ImageTowerOnlyWarning):
        model = vitkit.load_model(tmp_path / "clip")
    assert model.config.gelu == "quick"
    assert_same_tower(
        as_transformers_reads_it.vision_model, tmp_path / "clip", "vision_config_dict"
    )


def test_position_embeddings_are_resized_as_transformers_resizes_them() -> None:
    """transformers' bicubic without antialiasing, exactly; the antialiased one (timm's) differs
    where the grid shrinks, so the choice is seen, not hidden in the tolerance."""
    embeddings = clip_vision().embeddings
    table = embeddings.position_embedding.weight[None]  # (1, 17, 64)
    for size in OTHER_SIZES:
        grid = size // 8
        with torch.no_grad():
            expected = embeddings.interpolate_pos_encoding(
                torch.zeros(1, grid**2 + 1, 64), size, size
            )
            got = resize_pos_embed(table, new_grid=(grid, grid), mode="bicubic_no_antialias")
            antialiased = resize_pos_embed(table, new_grid=(grid, grid), mode="bicubic")
        assert (got - expected).abs().max().item() <= 1e-6
        if size < SIZE:
            assert (antialiased - expected).abs().max().item() > 1e-2


def test_clip_for_image_classification_is_refused_naming_its_pooling(tmp_path: Path) -> None:
    config = CLIPConfig(vision_config=TOWER, text_config=TEXT, num_labels=3)
    randomise_(CLIPForImageClassification(config)).save_pretrained(tmp_path / "classifier")
    with pytest.raises(vitkit.CheckpointError, match="CLIPForImageClassification") as error:
        vitkit.load_model(tmp_path / "classifier")
    assert "\n" not in str(error.value) and str(tmp_path / "classifier") in str(error.value)


# ---- written back for transformers ----


def written_and_reloaded(model: vitkit.VisionTransformer, path: Path) -> CLIPVisionModel:
    """`model` exported as a transformers directory and loaded by transformers, every key used."""
    export_model(model, path, to="hf")
    assert json.loads((path / "config.json").read_text())["architectures"] == ["CLIPVisionModel"]
    assert type(AutoModel.from_pretrained(path)) is CLIPVisionModel
    rebuilt, info = CLIPVisionModel.from_pretrained(path, output_loading_info=True)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    return rebuilt.eval()


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_written_back_for_transformers(tmp_path: Path, activation: str) -> None:
    clip_vision(activation).save_pretrained(tmp_path / "source")
    model = load_quietly(tmp_path / "source")
    rebuilt = written_and_reloaded(model, tmp_path / "written")
    label = f"CLIP {activation} written"
    assert compare_outputs(Pooled(rebuilt), model, images(SIZE), label) <= TOLERANCE
    again = load_quietly(tmp_path / "written")  # and read back by vitkit, tensor for tensor
    assert again.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_a_vitkit_clip_tower_is_written_for_transformers(tmp_path: Path) -> None:
    """A model made by vitkit (tanh GELU, eps 1e-3: numerics transformers' CLIP can name)."""
    model = vitkit.create_model("ViT-Test/8", img_size=SIZE, pre_norm=True, patch_bias=False,
                                gelu="tanh", layer_norm_eps=1e-3, num_classes=0)  # fmt: skip
    randomise_(model, seed=6).eval()
    rebuilt = written_and_reloaded(model, tmp_path / "written")
    assert rebuilt.config.hidden_act == "gelu_pytorch_tanh"
    error = compare_outputs(Pooled(rebuilt), model, images(SIZE), "vitkit CLIP tower written")
    assert error <= TOLERANCE


def test_a_timm_clip_tower_is_written_for_transformers(tmp_path: Path) -> None:
    """timm's CLIP tower (OpenAI's quick GELU) -> vitkit -> transformers, the same function."""
    import timm
    from safetensors.torch import save_file

    tower = timm.create_model("vit_base_patch16_clip_224", pretrained=False, img_size=SIZE,
                              patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0,
                              act_layer="quick_gelu")  # fmt: skip
    randomise_(tower, seed=8).eval()
    save_file(tower.state_dict(), str(tmp_path / "timm.safetensors"))
    model = vitkit.load_model(tmp_path / "timm.safetensors", num_heads=4, gelu="quick",
                              classifier="token")  # fmt: skip
    rebuilt = written_and_reloaded(model, tmp_path / "written")
    error = compare_outputs(Pooled(rebuilt), tower, images(SIZE), "timm CLIP tower written")
    assert error <= TOLERANCE


def holding(error: pytest.ExceptionInfo) -> list[str]:
    return str(error.value).split(HOLDING_FORMATS)[1].strip().split(", ")


def test_a_clip_tower_with_a_head_is_refused_naming_num_classes(tmp_path: Path) -> None:
    clip_vision().save_pretrained(tmp_path / "source")
    model = load_quietly(tmp_path / "source", num_classes=5)
    with pytest.raises(vitkit.CheckpointError, match="num_classes=5") as error:
        export_model(model, tmp_path / "out", to="hf")
    assert "CLIPVisionModel has no classifier" in str(error.value)
    assert "\n" not in str(error.value)
    assert holding(error) == ["timm", "vitkit"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(patch_bias=True), "patch_bias"),
        (dict(qkv_bias=False), "qkv_bias"),
        (dict(layer_scale_init=1e-5), "layer_scale_init"),
        (dict(img_size=(32, 48)), "img_size"),
    ],
)
def test_a_pre_norm_model_clip_cannot_hold_is_refused_naming_the_field(
    tmp_path: Path, fields: dict, named: str
) -> None:
    base = dict(img_size=SIZE, pre_norm=True, patch_bias=False, num_classes=0)
    model = vitkit.create_model("ViT-Test/8", **{**base, **fields})
    with pytest.raises(vitkit.CheckpointError, match=named) as error:
        export_model(model, tmp_path / "out", to="hf")
    assert "CLIPVisionModel" in str(error.value) and "\n" not in str(error.value)
    assert "vitkit" in holding(error) and "hf" not in holding(error)


# ---- config.json from strangers ----


def edited(tmp_path: Path, reference: nn.Module, edit: dict, removed: str = "") -> Path:
    """`reference` saved with config.json's fields changed by `edit` (a "vision_config." prefix
    reaches into CLIPModel's) and the field `removed` taken out."""
    reference.save_pretrained(tmp_path / "clip")
    path = tmp_path / "clip" / "config.json"
    content = json.loads(path.read_text())
    for name, value in {**edit, removed: None}.items():
        if not name:
            continue
        *parents, field = name.split(".")
        target = content
        for parent in parents:
            target = target[parent]
        if name == removed:
            del target[field]
        else:
            target[field] = value
    path.write_text(json.dumps(content))
    return tmp_path / "clip"


@pytest.mark.parametrize(
    "edit, removed, named",
    [
        ({"hidden_size": "64"}, "", "hidden_size"),
        ({"num_attention_heads": 3}, "", "num_attention_heads"),
        ({"num_hidden_layers": 2.5}, "", "num_hidden_layers"),
        ({"num_channels": True}, "", "num_channels"),
        ({"layer_norm_eps": "1e-5"}, "", "layer_norm_eps"),
        ({"layer_norm_eps": -1.0}, "", "layer_norm_eps"),
        ({"hidden_act": "relu"}, "", "hidden_act"),
        ({"hidden_act": ["gelu"]}, "", "hidden_act"),
        ({"image_size": [32, 32]}, "", "image_size"),
        ({"image_size": 36}, "", "image_size"),
        ({"image_size": 48}, "", "image_size"),  # more positions than the file holds
        ({"patch_size": "8"}, "", "patch_size"),
        ({}, "intermediate_size", "'intermediate_size'"),
        ({}, "num_hidden_layers", "'num_hidden_layers'"),
    ],
)
def test_bad_clip_vision_config_values_are_one_line_naming_the_field(
    tmp_path: Path, edit: dict, removed: str, named: str
) -> None:
    path = edited(tmp_path, clip_vision(), edit, removed)
    with pytest.raises(vitkit.CheckpointError, match=named) as error:
        vitkit.load_model(path)
    message = str(error.value)
    print(f"\n{message}")
    assert "\n" not in message and str(path) in message


@pytest.mark.parametrize(
    "edit, removed, named",
    [
        ({"vision_config.hidden_act": "silu"}, "", "vision_config.hidden_act"),
        ({"vision_config.hidden_size": None}, "", "vision_config.hidden_size"),
        ({}, "vision_config.num_attention_heads", "'vision_config.num_attention_heads'"),
        ({"vision_config": [1, 2]}, "", "vision_config must be an object"),
        ({"vision_config_dict": "x"}, "", "vision_config_dict must be an object"),
        ({}, "vision_config", "'vision_config'"),
    ],
)
def test_bad_clip_model_config_values_are_one_line_naming_the_field(
    tmp_path: Path, edit: dict, removed: str, named: str
) -> None:
    reference = randomise_(CLIPModel(clip_config()))
    path = edited(tmp_path, reference, edit, removed)
    with pytest.raises(vitkit.CheckpointError, match=named) as error:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageTowerOnlyWarning)
            vitkit.load_model(path)
    message = str(error.value)
    print(f"\n{message}")
    assert "\n" not in message and str(path) in message


@pytest.mark.parametrize("whole", [False, True], ids=["CLIPVisionModel", "CLIPModel"])
def test_projection_dim_does_not_matter_to_the_image_tower(tmp_path: Path, whole: bool) -> None:
    """projection_dim sizes visual_projection, which is left out: nonsense there is not read."""
    if whole:
        reference = randomise_(CLIPModel(clip_config()), seed=7).eval()
        edit = {"projection_dim": "nonsense", "vision_config.projection_dim": -3}
    else:
        reference, edit = clip_vision(seed=7), {"projection_dim": "nonsense"}
    path = edited(tmp_path, reference, edit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageTowerOnlyWarning)
        model = vitkit.load_model(path)
    tower = reference.vision_model if whole else reference
    assert compare_outputs(Pooled(tower), model, images(SIZE), "projection_dim") <= TOLERANCE
