"""transformers' SigLIP image towers, checked against transformers itself (weights/hf_siglip.py):
tiny random `SiglipVisionModel`s, `SiglipModel`s and `SiglipForImageClassification`s (no
downloads), read by `vitkit.load_model`, must give transformers' pooled output (the attention
pooling head's) and last hidden state (vitkit's `forward_features`) within 1e-5, at their own
size and at a smaller and a larger one (transformers resizing the position embeddings at every
call, vitkit as it loads); and vitkit's attention-pooled models, written out, must be read by
transformers with the same outputs. Run with -s for each max |difference|.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_hf_clip import (
    OTHER_SIZES,
    SIZE,
    TEXT,
    TOLERANCE,
    TOWER,
    Pooled,
    edited,
    holding,
    images,
    load_quietly,
)
from torch import nn
from transformers import (
    AutoModel,
    Siglip2VisionConfig,
    Siglip2VisionModel,
    SiglipConfig,
    SiglipForImageClassification,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

import vitkit
from vitkit.weights.export import export_model
from vitkit.weights.hf_clip import ImageTowerOnlyWarning
from vitkit.weights.hf_siglip import UnpooledTowerWarning

from helpers import compare_outputs, randomise_

ACTIVATIONS = {"gelu_pytorch_tanh": "tanh", "gelu": "exact"}


def siglip_vision(activation: str = "gelu_pytorch_tanh", seed: int = 0, **fields: object):
    """A tiny random SiglipVisionModel; every parameter randomised (LayerNorms away from 1 and
    0, the probe and the fused in_proj far from their start)."""
    config = SiglipVisionConfig(**{**TOWER, "hidden_act": activation, **fields})
    return randomise_(SiglipVisionModel(config), seed=seed).eval()


def siglip_config(activation: str = "gelu_pytorch_tanh", **fields: object) -> SiglipConfig:
    vision = {**TOWER, "hidden_act": activation}
    return SiglipConfig(vision_config=vision, text_config=TEXT, **fields)


class Calling(nn.Module):
    """A function of the images as a module, for `compare_outputs`."""

    def __init__(self, function) -> None:
        super().__init__()
        self.function = function

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.function(pixels)


def hidden_state(tower: nn.Module) -> Calling:
    return Calling(lambda x: tower(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state)


def assert_same_tower(tower: nn.Module, path: Path, label: str) -> None:
    """The tower read from `path` gives `tower`'s pooled output and last hidden state (vitkit's
    tokens after the final norm) at every size."""
    for size in (SIZE, *OTHER_SIZES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageTowerOnlyWarning)
            model = vitkit.load_model(path, img_size=size)
        x = images(size)
        assert compare_outputs(Pooled(tower), model, x, f"{label} at {size} px") <= TOLERANCE
        tokens = Calling(model.forward_features)
        error = compare_outputs(hidden_state(tower), tokens, x, f"{label} tokens at {size} px")
        assert error <= TOLERANCE


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_siglip_vision_model_read_at_its_size_and_others(tmp_path: Path, activation: str) -> None:
    reference = siglip_vision(activation)
    reference.save_pretrained(tmp_path / "siglip")
    config = load_quietly(tmp_path / "siglip").config  # nothing is left out: no warning
    assert (config.classifier, config.class_token, config.pre_norm, config.patch_bias) == (
        "map", False, False, True
    )  # fmt: skip
    assert (config.gelu, config.layer_norm_eps, config.num_classes) == (
        ACTIVATIONS[activation], 1e-6, 0
    )  # fmt: skip
    assert config.pos_embed_interpolation == "bicubic_no_antialias"
    assert_same_tower(reference, tmp_path / "siglip", f"SiglipVisionModel {activation}")


def test_the_comparison_sees_the_interpolation(tmp_path: Path) -> None:
    """Control: the same weights resized by vitkit's other modes (timm's antialiased bicubic,
    whose PyTorch kernel is also another cubic, a=-0.5 for -0.75, and Google's bilinear), in a
    dynamic-size model, miss transformers' outputs where the grid shrinks and where it grows, so
    the tests above would catch a reader that chose either; transformers' own mode matches in
    the dynamic forward too."""
    reference = siglip_vision(seed=1)
    reference.save_pretrained(tmp_path / "siglip")
    loaded = load_quietly(tmp_path / "siglip")
    for mode in ("bicubic_no_antialias", "bicubic", "bilinear"):
        config = dataclasses.replace(loaded.config, pos_embed_interpolation=mode,
                                     dynamic_img_size=True)  # fmt: skip
        model = vitkit.VisionTransformer(config)
        model.load_state_dict(loaded.state_dict())
        model.eval()
        for size in OTHER_SIZES:
            error = compare_outputs(Pooled(reference), model, images(size), f"{mode} at {size}")
            if mode == "bicubic_no_antialias":
                assert error <= TOLERANCE
            else:
                assert error > 1e-3


def test_the_hubs_older_layout_is_read(tmp_path: Path) -> None:
    """Files on the Hub prefix the tower's keys with "vision_model." (transformers 5 saves a
    SiglipVisionModel without), as pytorch_model.bin."""
    reference = siglip_vision("gelu", seed=2)
    reference.save_pretrained(tmp_path / "hub")
    state = {f"vision_model.{key}": value for key, value in reference.state_dict().items()}
    (tmp_path / "hub" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "hub" / "pytorch_model.bin")
    assert_same_tower(reference, tmp_path / "hub", "Hub-layout SiglipVisionModel")


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_a_siglip_models_image_tower_is_read_and_the_rest_named(
    tmp_path: Path, activation: str
) -> None:
    reference = randomise_(SiglipModel(siglip_config(activation)), seed=3).eval()
    reference.save_pretrained(tmp_path / "siglip")
    with pytest.warns(ImageTowerOnlyWarning) as record:
        model = vitkit.load_model(tmp_path / "siglip")
    assert len(record) == 1
    message = str(record[0].message)
    print(f"\n{message}")
    assert "\n" not in message
    for named in ("text tower (text_model.*)", "logit_scale", "logit_bias",
                  "SigLIP's image embeddings"):  # fmt: skip
        assert named in message
    assert (model.config.gelu, model.config.classifier) == (ACTIVATIONS[activation], "map")
    assert_same_tower(reference.vision_model, tmp_path / "siglip", f"SiglipModel {activation}")
    image_features = Calling(lambda x: reference.get_image_features(pixel_values=x).pooler_output)
    assert compare_outputs(image_features, model, images(SIZE), "get_image_features") <= TOLERANCE


def test_the_hubs_sparse_config_takes_siglip_defaults(tmp_path: Path) -> None:
    """The Hub's SigLIP config.json records little (google/siglip-base-patch16-224's
    vision_config: patch_size only); transformers takes SiglipVisionConfig's defaults for the
    rest, and so does vitkit. Here every field at its default is left out."""
    sizes = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    vision = {name: TOWER[name] for name in sizes}
    reference = randomise_(SiglipModel(SiglipConfig(vision_config=vision, text_config=TEXT)))
    reference.save_pretrained(tmp_path / "siglip")
    path = tmp_path / "siglip" / "config.json"
    content = json.loads(path.read_text())
    content["vision_config"] = {"model_type": "siglip_vision_model", **vision}
    path.write_text(json.dumps(content))
    as_transformers_reads_it = SiglipModel.from_pretrained(tmp_path / "siglip").eval()
    with pytest.warns(ImageTowerOnlyWarning):
        model = vitkit.load_model(tmp_path / "siglip")
    assert (model.config.img_size, model.config.patch_size, model.config.gelu) == (
        (224, 224), 16, "tanh"
    )  # fmt: skip
    tower = as_transformers_reads_it.vision_model
    assert compare_outputs(Pooled(tower), model, images(224), "sparse config") <= TOLERANCE


@pytest.mark.parametrize("use_head", [True, False], ids=["with-head", "without-head"])
def test_siglip_for_image_classification_is_read_as_the_mean_token(
    tmp_path: Path, use_head: bool
) -> None:
    """Its logits read the mean of last_hidden_state (vitkit's "gap"), never the attention
    pooling its tower may hold, which is left out with a warning naming it."""
    config = siglip_config(num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"})
    config.vision_config.vision_use_head = use_head
    reference = randomise_(SiglipForImageClassification(config), seed=4).eval()
    reference.save_pretrained(tmp_path / "classifier")
    if use_head:
        with pytest.warns(ImageTowerOnlyWarning, match=r"vision_model\.head\.\*") as record:
            model = vitkit.load_model(tmp_path / "classifier")
        assert len(record) == 1 and "\n" not in str(record[0].message)
    else:
        model = load_quietly(tmp_path / "classifier")
    assert (model.config.classifier, model.config.num_classes) == ("gap", 3)
    assert model.class_names == ("cat", "dog", "fox")
    for size in (SIZE, *OTHER_SIZES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageTowerOnlyWarning)
            model = vitkit.load_model(tmp_path / "classifier", img_size=size)
        logits = Calling(lambda x: reference(pixel_values=x, interpolate_pos_encoding=True).logits)
        label = f"SiglipForImageClassification {'with' if use_head else 'without'} head at {size}"
        assert compare_outputs(logits, model, images(size), label) <= TOLERANCE


def test_a_tower_without_its_head_is_read_with_the_mean_token(tmp_path: Path) -> None:
    """vision_use_head=false: transformers gives no pooled output; vitkit says in one line that
    it averages last_hidden_state, which its tokens equal."""
    reference = siglip_vision(seed=5, vision_use_head=False)
    reference.save_pretrained(tmp_path / "siglip")
    with pytest.warns(UnpooledTowerWarning) as record:
        model = vitkit.load_model(tmp_path / "siglip")
    message = str(record[0].message)
    print(f"\n{message}")
    assert len(record) == 1 and "\n" not in message and "vision_use_head=false" in message
    assert model.config.classifier == "gap"
    x = images(SIZE)
    assert reference(pixel_values=x).pooler_output is None
    tokens = Calling(model.forward_features)
    assert compare_outputs(hidden_state(reference), tokens, x, "headless tokens") <= TOLERANCE
    mean = Calling(lambda x: hidden_state(reference)(x).mean(dim=1))
    assert compare_outputs(mean, model, x, "headless mean token") <= TOLERANCE


def test_siglip2_naflex_is_refused_naming_its_model_type(tmp_path: Path) -> None:
    fields = {name: value for name, value in TOWER.items() if name != "image_size"}
    config = Siglip2VisionConfig(**fields, num_patches=16)  # a 4x4 table, resized per image
    randomise_(Siglip2VisionModel(config)).save_pretrained(tmp_path / "naflex")
    with pytest.raises(vitkit.CheckpointError, match="'siglip2_vision_model'") as error:
        vitkit.load_model(tmp_path / "naflex")
    message = str(error.value)
    print(f"\n{message}")
    assert "\n" not in message and "NaFlex" in message and str(tmp_path / "naflex") in message


# ---- written back for transformers ----


def written_and_reloaded(model: vitkit.VisionTransformer, path: Path) -> SiglipVisionModel:
    """`model` exported as a transformers directory and loaded by transformers, every key used."""
    export_model(model, path, to="hf")
    assert json.loads((path / "config.json").read_text())["architectures"] == ["SiglipVisionModel"]
    assert type(AutoModel.from_pretrained(path)) is SiglipVisionModel
    rebuilt, info = SiglipVisionModel.from_pretrained(path, output_loading_info=True)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    return rebuilt.eval()


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_written_back_for_transformers(tmp_path: Path, activation: str) -> None:
    siglip_vision(activation, seed=6).save_pretrained(tmp_path / "source")
    model = load_quietly(tmp_path / "source")
    rebuilt = written_and_reloaded(model, tmp_path / "written")
    for size in (SIZE, OTHER_SIZES[1]):
        resized = load_quietly(tmp_path / "source", img_size=size)
        label = f"SigLIP {activation} written, at {size} px"
        assert compare_outputs(Pooled(rebuilt), resized, images(size), label) <= TOLERANCE
    again = load_quietly(tmp_path / "written")  # and read back by vitkit, tensor for tensor
    assert again.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_a_vitkit_map_model_is_written_for_transformers(tmp_path: Path) -> None:
    """A model made by vitkit (exact GELU, eps 1e-3: numerics transformers' SigLIP can name)."""
    model = vitkit.create_model("ViT-Test/8", img_size=SIZE, classifier="map", class_token=False,
                                gelu="exact", layer_norm_eps=1e-3, num_classes=0)  # fmt: skip
    randomise_(model, seed=7).eval()
    rebuilt = written_and_reloaded(model, tmp_path / "written")
    assert (rebuilt.config.hidden_act, rebuilt.config.layer_norm_eps) == ("gelu", 1e-3)
    error = compare_outputs(Pooled(rebuilt), model, images(SIZE), "vitkit map model written")
    assert error <= TOLERANCE


def test_a_timm_siglip_tower_is_written_for_transformers(tmp_path: Path) -> None:
    """timm's SigLIP tower -> vitkit -> transformers, the same function."""
    import timm

    tower = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, img_size=SIZE,
                              patch_size=8, embed_dim=64, depth=2, num_heads=4,
                              num_classes=0)  # fmt: skip
    randomise_(tower, seed=8).eval()
    save_file(tower.state_dict(), str(tmp_path / "timm.safetensors"))
    model = vitkit.load_model(tmp_path / "timm.safetensors", num_heads=4)
    rebuilt = written_and_reloaded(model, tmp_path / "written")
    error = compare_outputs(Pooled(rebuilt), tower, images(SIZE), "timm SigLIP tower written")
    assert error <= TOLERANCE


def test_a_siglip_tower_with_a_head_is_refused_naming_num_classes(tmp_path: Path) -> None:
    siglip_vision().save_pretrained(tmp_path / "source")
    model = load_quietly(tmp_path / "source", num_classes=5)
    with pytest.raises(vitkit.CheckpointError, match="num_classes=5") as error:
        export_model(model, tmp_path / "out", to="hf")
    message = str(error.value)
    print(f"\n{message}")
    assert "SiglipVisionModel has no classifier" in message and "\n" not in message
    assert holding(error) == ["timm", "vitkit"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(pre_norm=True), "pre_norm"),
        (dict(qkv_bias=False), "qkv_bias"),
        (dict(class_token=True), "class_token"),
        (dict(reg_tokens=4), "reg_tokens"),
        (dict(layer_scale_init=1e-5), "layer_scale_init"),
        (dict(img_size=(32, 48)), "img_size"),
    ],
)
def test_a_map_model_siglip_cannot_hold_is_refused_naming_the_field(
    tmp_path: Path, fields: dict, named: str
) -> None:
    base = dict(img_size=SIZE, classifier="map", class_token=False, num_classes=0)
    model = vitkit.create_model("ViT-Test/8", **{**base, **fields})
    with pytest.raises(vitkit.CheckpointError, match=named) as error:
        export_model(model, tmp_path / "out", to="hf")
    assert "SiglipVisionModel" in str(error.value) and "\n" not in str(error.value)
    assert "vitkit" in holding(error) and "hf" not in holding(error)


# ---- files from strangers ----


@pytest.mark.parametrize(
    "edit, removed, named",
    [
        ({"hidden_size": "64"}, "", "hidden_size"),
        ({"num_attention_heads": 3}, "", "num_attention_heads"),
        ({"num_hidden_layers": 2.5}, "", "num_hidden_layers"),
        ({"num_channels": True}, "", "num_channels"),
        ({"layer_norm_eps": "1e-6"}, "", "layer_norm_eps"),
        ({"layer_norm_eps": -1.0}, "", "layer_norm_eps"),
        ({"hidden_act": "relu"}, "", "hidden_act"),
        ({"hidden_act": ["gelu"]}, "", "hidden_act"),
        ({"image_size": [32, 32]}, "", "image_size"),
        ({"image_size": 36}, "", "image_size"),
        ({"image_size": 48}, "", "image_size"),  # more positions than the file holds
        ({"patch_size": "8"}, "", "patch_size"),
        ({"vision_use_head": "yes"}, "", "vision_use_head"),
        ({"vision_use_head": False}, "", "vision_use_head=false, but the weights hold"),
        ({}, "intermediate_size", "intermediate_size=3072"),  # SiglipVisionConfig's default
        ({}, "num_hidden_layers", "num_hidden_layers=12"),
    ],
)
def test_bad_siglip_vision_config_values_are_one_line_naming_the_field(
    tmp_path: Path, edit: dict, removed: str, named: str
) -> None:
    path = edited(tmp_path, siglip_vision(), edit, removed)
    with pytest.raises(vitkit.CheckpointError, match=named) as error:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnpooledTowerWarning)
            vitkit.load_model(path)
    message = str(error.value)
    print(f"\n{message}")
    assert "\n" not in message and str(path) in message


@pytest.mark.parametrize(
    "edit, named",
    [
        ({"vision_config.hidden_act": "silu"}, "vision_config.hidden_act"),
        ({"vision_config.hidden_size": None}, "vision_config.hidden_size"),
        ({"vision_config.vision_use_head": None}, "vision_config.vision_use_head"),
        ({"vision_config": [1, 2]}, "vision_config must be an object"),
        ({"model_type": "siglip2"}, "'siglip2'"),
    ],
)
def test_bad_siglip_model_config_values_are_one_line_naming_the_field(
    tmp_path: Path, edit: dict, named: str
) -> None:
    reference = randomise_(SiglipModel(siglip_config()))
    path = edited(tmp_path, reference, edit)
    with pytest.raises(vitkit.CheckpointError, match=named) as error:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageTowerOnlyWarning)
            vitkit.load_model(path)
    message = str(error.value)
    print(f"\n{message}")
    assert "\n" not in message and str(path) in message


@pytest.mark.parametrize(
    "change, named",
    [
        ("misshapen", r"head\.attention\.in_proj_weight: expected shape \(192, 64\)"),
        ("missing", r"missing key 'head\.attention\.in_proj_bias'"),
        ("twice", r"'post_layernorm\.weight'.*held twice"),
    ],
)
def test_bad_siglip_tensors_are_one_line_naming_the_key(
    tmp_path: Path, change: str, named: str
) -> None:
    siglip_vision().save_pretrained(tmp_path / "siglip")
    weights = tmp_path / "siglip" / "model.safetensors"
    state = load_file(weights)
    if change == "misshapen":
        state["head.attention.in_proj_weight"] = state["head.attention.in_proj_weight"][:128]
    elif change == "missing":
        del state["head.attention.in_proj_bias"]
    else:
        state["vision_model.post_layernorm.weight"] = state["post_layernorm.weight"].clone()
    save_file(state, str(weights))
    with pytest.raises(vitkit.CheckpointError, match=named) as error:
        vitkit.load_model(tmp_path / "siglip")
    assert "\n" not in str(error.value) and str(tmp_path / "siglip") in str(error.value)
