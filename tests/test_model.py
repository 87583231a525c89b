"""The model and its registry, checked against the official parameter counts and timm."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from torch import nn

import vitkit
from vitkit.errors import ConfigError
from vitkit.models.config import PRESETS, VARIANTS

PAPER_NAMES = [f"ViT-{v}/{p}" for v in ("Ti", "S", "B", "L", "H") for p in (8, 14, 16, 32)]


def _timm_twin(config: vitkit.ViTConfig) -> nn.Module:
    """timm's VisionTransformer with the same architecture (exact GELU, eps 1e-6 in both)."""
    return timm.models.vision_transformer.VisionTransformer(
        img_size=config.img_size,
        patch_size=config.patch_size,
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_dim / config.width,
        num_classes=config.num_classes,
        dynamic_img_size=config.dynamic_img_size,
        class_token=config.class_token,
        global_pool="token" if config.classifier == "token" else "avg",
        fc_norm=False,  # vitkit's "gap" pools after the final norm, as Google's code
    )


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_has_every_paper_name() -> None:
    assert set(PAPER_NAMES) <= set(vitkit.list_models())
    table1 = {"B": (768, 12, 12, 3072), "L": (1024, 24, 16, 4096), "H": (1280, 32, 16, 5120)}
    for variant, (width, depth, heads, mlp) in table1.items():
        config = vitkit.get_config(f"ViT-{variant}/16")
        assert (config.width, config.depth, config.num_heads, config.mlp_dim) == (
            width, depth, heads, mlp,
        )  # fmt: skip


def test_official_parameter_counts() -> None:
    # Numbers of Google's vit_jax code (and timm) for 224 px, 1000 classes.
    with torch.device("meta"):
        assert _num_params(vitkit.create_model("ViT-B/16")) == 86_567_656
        assert _num_params(vitkit.create_model("ViT-L/16")) == 304_326_632


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_matches_timm_and_runs(name: str) -> None:
    config = vitkit.get_config(name)
    with torch.device("meta"):
        model = vitkit.VisionTransformer(config)
        assert _num_params(model) == _num_params(_timm_twin(config))
        logits = model(torch.empty(2, config.in_chans, *config.img_size))
    assert logits.shape == (2, config.num_classes)


def test_same_outputs_as_timm_with_same_weights() -> None:
    config = vitkit.get_config("ViT-Test/8", img_size=(32, 48))  # non-square
    torch.manual_seed(0)
    reference = _timm_twin(config).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model = vitkit.VisionTransformer(config).eval()
    model.load_state_dict(reference.state_dict())
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert (model(images) - reference(images)).abs().max() <= 1e-5


def test_fresh_head_is_zero_and_reset_drops_pre_logits() -> None:
    model = vitkit.create_model("ViT-Test/8", representation_size=32, num_classes=7)
    assert isinstance(model.pre_logits, nn.Sequential)
    assert torch.count_nonzero(model(torch.randn(2, 3, 32, 32))) == 0
    model.reset_classifier(3)
    assert isinstance(model.pre_logits, nn.Identity)
    assert model.head.out_features == 3 and model.head.in_features == 64
    assert model.config.num_classes == 3 and model.config.representation_size is None


def test_features_and_pre_logits() -> None:
    model = vitkit.create_model("ViT-Test/8", representation_size=32, classifier="gap")
    tokens = model.forward_features(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 1 + 16, 64)
    assert model.forward_head(tokens, pre_logits=True).shape == (2, 32)
    assert len(model.forward_intermediates(torch.randn(1, 3, 32, 32))) == model.config.depth
    features = vitkit.create_model("ViT-Test/8", num_classes=0)(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 64)


def test_size_errors_name_sizes_and_remedy() -> None:
    model = vitkit.create_model("ViT-B/16", img_size=224)
    with pytest.raises(ValueError, match=r"30x224 is not a multiple of the patch size 16"):
        model(torch.empty(1, 3, 30, 224, device="meta"))
    with pytest.raises(ValueError, match=r"built for 224x224 images but got 256x256.*img_size"):
        model(torch.empty(1, 3, 256, 256, device="meta"))
    with pytest.raises(ValueError, match="Expected 3 input channels"):
        model(torch.empty(1, 224, 224, 3, device="meta"))
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        vitkit.create_model("ViT-B/16", img_size=200)


def test_dynamic_size_matches_timm_dynamic() -> None:
    """dynamic_img_size resizes the position embeddings on the fly; with bicubic interpolation
    that is what timm's dynamic_img_size does."""
    config = vitkit.get_config(
        "ViT-Test/8", dynamic_img_size=True, pos_embed_interpolation="bicubic"
    )
    torch.manual_seed(0)
    reference = _timm_twin(config).eval()
    with torch.no_grad():
        reference.pos_embed.normal_(std=0.5)
    model = vitkit.VisionTransformer(config).eval()
    model.load_state_dict(reference.state_dict())
    for size in [(32, 32), (48, 64), (40, 24)]:
        images = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert (model(images) - reference(images)).abs().max() <= 1e-5, size


def test_stochastic_depth_is_linear_and_train_only() -> None:
    model = vitkit.create_model("ViT-Test/8", drop_path=0.2, depth=5)
    rates = [block.drop_path.rate for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    images = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model.forward_features(images), model.forward_features(images))
    model.train()
    torch.manual_seed(0)
    first = model.forward_features(images)
    assert not torch.equal(first, model.forward_features(images))


def test_drop_path_keeps_the_expectation() -> None:
    from vitkit.models.layers import DropPath

    layer = DropPath(0.3).train()
    torch.manual_seed(0)
    out = layer(torch.ones(200_000, 1))
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.7))
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)


def test_tanh_gelu_option() -> None:
    model = vitkit.create_model("ViT-Test/8", gelu="tanh")
    assert model.blocks[0].mlp.act.approximate == "tanh"
    assert vitkit.create_model("ViT-Test/8").blocks[0].mlp.act.approximate == "none"


def test_config_is_frozen_and_validated() -> None:
    config = vitkit.get_config("vit-b_16")  # case and Google's file-name style
    assert config == PRESETS["ViT-B/16"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.width = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        dataclasses.replace(config, num_heads=7)
    with pytest.raises(ValueError, match="needs class_token=True"):
        dataclasses.replace(config, class_token=False)
    with pytest.raises(KeyError, match="Unknown model 'ViT-X/16'"):
        vitkit.get_config("ViT-X/16")
    with pytest.raises(TypeError, match="hidden_size"):
        vitkit.create_model("ViT-B/16", hidden_size=3)
    assert set(VARIANTS) == {"Ti", "S", "B", "L", "H"}


# ---- Every field is checked for type, range and choice, and named when wrong (issue 15) ----

B16 = PRESETS["ViT-B/16"]
BAD_FIELDS: dict[str, tuple[dict[str, object], str]] = {
    "heads-zero": (dict(num_heads=0), "num_heads must be between 1 and 16777216, got 0"),
    "heads-not-dividing": (dict(num_heads=7), "width 768 is not divisible by num_heads 7"),
    "patch-zero": (dict(patch_size=0), "patch_size must be between 1"),
    "width-negative": (dict(width=-768), "width must be between 1"),
    "depth-string": (dict(depth="12"), "depth must be an integer, got '12'"),
    "depth-bool": (dict(depth=True), "depth must be an integer, got True"),
    "mlp-float": (dict(mlp_dim=3072.0), "mlp_dim must be an integer, got 3072.0"),
    "classes-huge": (dict(num_classes=10**30), "num_classes must be between 0 and 16777216"),
    "classes-negative": (dict(num_classes=-1), "num_classes must be between 0"),
    "channels-none": (dict(in_chans=None), "in_chans must be an integer, got None"),
    "eps-nan": (dict(layer_norm_eps=float("nan")), "layer_norm_eps must be in (0, inf), got nan"),
    "eps-zero": (dict(layer_norm_eps=0.0), "layer_norm_eps must be in (0, inf), got 0.0"),
    "eps-string": (dict(layer_norm_eps="1e-6"), "layer_norm_eps must be a number, got '1e-6'"),
    "dropout-inf": (dict(dropout=float("inf")), "dropout must be in [0, 1), got inf"),
    "drop-path-negative": (dict(drop_path=-0.1), "drop_path must be in [0, 1), got -0.1"),
    "attention-dropout-one": (dict(attention_dropout=1), "attention_dropout must be in [0, 1)"),
    "qkv-bias-string": (dict(qkv_bias="yes"), "qkv_bias must be true or false, got 'yes'"),
    "class-token-int": (dict(class_token=1), "class_token must be true or false, got 1"),
    "dynamic-none": (dict(dynamic_img_size=None), "dynamic_img_size must be true or false"),
    "classifier-unknown": (dict(classifier="cls"), "classifier must be one of 'token', 'gap'"),
    "gelu-list": (
        dict(gelu=["exact"]),
        "gelu must be one of 'exact', 'tanh', 'quick', got ['exact']",
    ),
    "interpolation-unknown": (
        dict(pos_embed_interpolation="nearest"),
        "pos_embed_interpolation must be one of",
    ),
    "image-three-sides": (dict(img_size=[224, 224, 3]), "img_size must be an integer or a ["),
    "image-string": (dict(img_size="224"), "img_size must be an integer, got '224'"),
    "image-zero": (dict(img_size=(0, 224)), "img_size must be between 1"),
    "image-not-a-multiple": (dict(img_size=200), "img_size 200x200 is not a multiple of the patch"),
    "representation-zero": (dict(representation_size=0), "representation_size must be between 1"),
    "resnet-layers-string": (dict(resnet_layers="3,4,9"), "resnet_layers must be a list"),
    "resnet-layers-too-deep": (dict(resnet_layers=(3,) * 9), "resnet_layers"),
    "resnet-layers-empty-stage": (dict(resnet_layers=(3, 0)), "resnet_layers"),
    "resnet-width-odd": (
        dict(resnet_layers=(3, 4, 9), patch_size=1, resnet_width=48),
        "resnet_width 48 is not a multiple of GroupNorm's 32 groups",
    ),
    "resnet-numerics-unknown": (dict(resnet_numerics="keras"), "resnet_numerics must be one of"),
    "token-without-class-token": (dict(class_token=False), "classifier='token' needs class_token"),
    "reg-tokens-negative": (dict(reg_tokens=-1), "reg_tokens must be between 0"),
    "reg-tokens-float": (dict(reg_tokens=4.0), "reg_tokens must be an integer, got 4.0"),
    "no-embed-class-string": (dict(no_embed_class="no"), "no_embed_class must be true or false"),
    "fc-norm-int": (dict(fc_norm=1), "fc_norm must be true or false, got 1"),
    "fc-norm-token": (dict(fc_norm=True), "fc_norm=True needs classifier='gap'"),
}


@pytest.mark.parametrize("case", BAD_FIELDS)
def test_every_bad_field_is_a_config_error_naming_it(case: str) -> None:
    overrides, message = BAD_FIELDS[case]
    with pytest.raises(ConfigError) as error:
        dataclasses.replace(B16, **overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_every_field_is_checked() -> None:
    from vitkit.models.config import _CHECKS

    assert list(_CHECKS) == [field.name for field in dataclasses.fields(vitkit.ViTConfig)]


def test_every_problem_is_listed_at_once() -> None:
    """A file with several bad fields is fixed in one pass, not one error at a time."""
    with pytest.raises(ConfigError) as error:
        dataclasses.replace(B16, num_heads=0, patch_size="16", gelu=None)
    message = str(error.value)
    assert "num_heads" in message and "patch_size" in message and "gelu" in message


def test_numpy_and_list_values_are_normalised() -> None:
    """Sizes read off numpy shapes become ints, JSON lists become tuples: the config equals one
    written by hand (and so compares and hashes alike)."""
    import numpy as np

    config = dataclasses.replace(
        B16, width=np.int64(768), img_size=[224, 224], resnet_layers=[], patch_size=4,
        layer_norm_eps=1,
    )  # fmt: skip
    assert type(config.width) is int and config.img_size == (224, 224)
    assert config.resnet_layers == () and type(config.layer_norm_eps) is float
    assert config == dataclasses.replace(B16, resnet_layers=(), patch_size=4, layer_norm_eps=1.0)


@pytest.mark.parametrize("name", vitkit.list_models())
def test_shapes_known_before_building_are_the_models(name: str) -> None:
    """Checkpoints are compared with `expected_shapes` (one block, on the meta device) before a
    model is built; it must list exactly the built model's keys and shapes, in its order."""
    from vitkit.weights.state_dict import expected_shapes

    config = vitkit.get_config(name, num_classes=7, representation_size=48)
    with torch.device("meta"):
        model = vitkit.VisionTransformer(config)
    shapes = [(key, tuple(tensor.shape)) for key, tensor in model.state_dict().items()]
    assert list(expected_shapes(config).items()) == shapes
