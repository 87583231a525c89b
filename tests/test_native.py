"""vitkit's own format (`save_pretrained` + `load_model`): every config field, the preprocessing
record and every weight bit survive the round trip, files of format_version 1 still load, and
damaged directories fail with errors that name the culprit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.errors import CheckpointError
from vitkit.models.preprocessing import Preprocessing
from vitkit.models.vit import VisionTransformer
from vitkit.weights.load import detect_format
from vitkit.weights.native import FORMAT_VERSION, save_pretrained

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RECORD = Preprocessing(
    resolution=(32, 48), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic"
)


@pytest.fixture
def model() -> VisionTransformer:
    """A model far from the defaults, every parameter random (the head is zero at init)."""
    config = vitkit.ViTConfig(
        img_size=(32, 48),
        patch_size=8,
        width=64,
        depth=2,
        num_heads=4,
        mlp_dim=96,
        num_classes=7,
        classifier="gap",
        class_token=False,
        representation_size=48,
        gelu="tanh",
        layer_norm_eps=1e-5,
        dropout=0.1,
        dynamic_img_size=True,
        pos_embed_interpolation="bicubic",
    )
    torch.manual_seed(0)
    model = VisionTransformer(config, preprocessing=RECORD)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.5)
    return model.eval()


@pytest.fixture
def saved(model: VisionTransformer, tmp_path: Path) -> Path:
    return save_pretrained(model, tmp_path / "model")


def test_round_trip_keeps_config_and_outputs(model: VisionTransformer, saved: Path) -> None:
    assert sorted(path.name for path in saved.iterdir()) == ["config.json", "model.safetensors"]
    assert detect_format(saved) == "vitkit"
    loaded = vitkit.load_model(saved)
    assert loaded.config == model.config
    assert loaded.preprocessing == RECORD
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_config_json_is_plain_and_versioned(model: VisionTransformer, saved: Path) -> None:
    content = json.loads((saved / "config.json").read_text())
    assert content["format"] == "vitkit" and content["format_version"] == FORMAT_VERSION
    assert content["config"]["img_size"] == [32, 48]
    assert "mean" not in content["config"]  # the weights' record, not the architecture's
    assert content["preprocessing"] == {
        "resolution": [32, 48],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "interpolation": "bicubic",
        "resize": "whole image to resolution, no crop",
    }


def test_load_at_another_resolution_with_a_new_head(saved: Path) -> None:
    loaded = vitkit.load_model(saved, img_size=48, num_classes=3)
    assert loaded.config.img_size == (48, 48)
    assert loaded.preprocessing == Preprocessing(  # the weights' statistics, at the new size
        resolution=(48, 48), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic"
    )
    assert loaded.pos_embed.shape == (1, 36, 64)
    assert loaded(torch.randn(1, 3, 48, 48)).shape == (1, 3)


def test_corrupt_weights_are_an_error_naming_the_file(saved: Path) -> None:
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or truncated"):
        vitkit.load_model(saved)


def test_unparsable_config_is_an_error_naming_the_file(saved: Path) -> None:
    (saved / "config.json").write_text('{"format": "vitkit", ')
    with pytest.raises(CheckpointError, match=r"config\.json: unreadable"):
        vitkit.load_model(saved)


def edit_config(directory: Path, edit) -> None:
    content = json.loads((directory / "config.json").read_text())
    edit(content)
    (directory / "config.json").write_text(json.dumps(content))


def test_unknown_and_missing_fields_are_named(saved: Path) -> None:
    def rename_width(content: dict) -> None:
        content["config"]["hidden_size"] = content["config"].pop("width")

    edit_config(saved, rename_width)
    with pytest.raises(CheckpointError) as error:
        vitkit.load_model(saved)
    assert "config.json" in str(error.value)
    assert "unknown field(s) hidden_size" in str(error.value)
    assert "missing field(s) width" in str(error.value)


def test_invalid_field_values_are_an_error(saved: Path) -> None:
    edit_config(saved, lambda content: content["config"].update(classifier="token"))
    with pytest.raises(CheckpointError, match=r"config\.json: .*class_token=True"):
        vitkit.load_model(saved)


def test_a_newer_format_version_asks_for_an_upgrade(saved: Path) -> None:
    edit_config(saved, lambda content: content.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="newer vitkit"):
        vitkit.load_model(saved)


def test_a_hugging_face_directory_is_still_hugging_face(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 64}))
    assert detect_format(tmp_path) == "hf"


# Class names: a top-level "class_names" list beside the config, one string per head output.

NAMES = ("cat", "dog", "bird", "fish", "frog", "horse", "ship")  # the fixture's 7 classes


def test_class_names_round_trip(model: VisionTransformer, tmp_path: Path) -> None:
    assert model.class_names is None
    model.class_names = NAMES
    directory = save_pretrained(model, tmp_path / "named")
    assert json.loads((directory / "config.json").read_text())["class_names"] == list(NAMES)
    assert vitkit.load_model(directory).class_names == NAMES


def test_no_names_no_field(saved: Path) -> None:
    assert "class_names" not in json.loads((saved / "config.json").read_text())
    assert vitkit.load_model(saved).class_names is None


def test_names_passed_to_save_pretrained_win(model: VisionTransformer, tmp_path: Path) -> None:
    model.class_names = NAMES
    names = [name.upper() for name in NAMES]
    directory = save_pretrained(model, tmp_path / "named", class_names=names)
    assert vitkit.load_model(directory).class_names == tuple(names)


@pytest.mark.parametrize(
    "names, fragment",
    [(["cat", "dog"], "2 class names, but the head has 7"), ([1] * 7, "class name 0 is a int")],
)
def test_names_that_do_not_fit_are_not_written(
    model: VisionTransformer, tmp_path: Path, names: list, fragment: str
) -> None:
    with pytest.raises(CheckpointError, match=fragment):
        save_pretrained(model, tmp_path / "named", class_names=names)
    model.class_names = tuple(names)
    with pytest.raises(CheckpointError, match=f"model.class_names: {fragment}"):
        save_pretrained(model, tmp_path / "named")
    assert not (tmp_path / "named").exists()  # checked before anything is written


@pytest.mark.parametrize(
    "value, fragment",
    [
        (["cat"] * 6, "6 class names, but the head has 7"),
        (["cat"] * 6 + [None], "class name 6 is a NoneType"),
        ("cat,dog", "must be a list of 7 class names, not a str"),
        ({"0": "cat"}, "not a dict"),
        (list(range(10**5)), "100000 class names"),
    ],
)
def test_bad_class_names_are_an_error_naming_file_and_field(
    saved: Path, value: object, fragment: str
) -> None:
    edit_config(saved, lambda content: content.update(class_names=value))
    with pytest.raises(CheckpointError) as error:
        vitkit.load_model(saved)
    message = str(error.value)
    assert f'{saved / "config.json"}: "class_names"' in message and fragment in message
    assert "\n" not in message


def test_a_new_head_drops_the_names(model: VisionTransformer, tmp_path: Path) -> None:
    """The names labelled the old head's outputs; a new, untrained head has none, even with as
    many outputs (load_model(num_classes=...) and reset_classifier alike)."""
    model.class_names = NAMES
    directory = save_pretrained(model, tmp_path / "named")
    assert vitkit.load_model(directory, num_classes=7).class_names is None
    assert vitkit.load_model(directory, img_size=48).class_names == NAMES  # same head
    model.reset_classifier(7)
    assert model.class_names is None


def test_a_config_written_before_the_later_fields_still_loads(tmp_path: Path) -> None:
    """Runs saved by earlier vitkit versions lack every field added since: registers, fc_norm,
    no_embed_class, the position type, LayerScale, the pre-norm and the patch and key biases."""
    model = vitkit.create_model("ViT-Test/8", num_classes=3, img_size=16)
    vitkit.save_pretrained(model, tmp_path)
    config_file = tmp_path / "config.json"
    content = json.loads(config_file.read_text())
    for field in ("reg_tokens", "no_embed_class", "fc_norm", "pos_embed_type", "layer_scale_init",
                  "pre_norm", "patch_bias", "key_bias"):  # fmt: skip
        del content["config"][field]
    config_file.write_text(json.dumps(content))
    assert vitkit.load_model(tmp_path).config == model.config


# ---------------------------------------------------------------------------------------------
# format_version 1: mean and std were ViTConfig fields, and what vitkit read back.


def as_format_version_1(content: dict, mean: list[float], std: list[float]) -> None:
    """`content` (a config.json of today) as vitkit wrote it with format_version 1: mean and std
    among the "config" fields, and a "preprocessing" block for other readers that vitkit did not
    read (always bilinear, at the config's img_size)."""
    content["format_version"] = 1
    content["config"].update(mean=mean, std=std)
    content["preprocessing"] = {
        "resolution": content["config"]["img_size"],
        "mean": mean,
        "std": std,
        "interpolation": "bilinear",
        "resize": "whole image to resolution, no crop",
    }


def test_a_format_version_1_file_loads_with_its_mean_and_std(
    model: VisionTransformer, saved: Path
) -> None:
    mean, std = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]
    edit_config(saved, lambda content: as_format_version_1(content, mean, std))
    loaded = vitkit.load_model(saved)
    assert loaded.config == model.config
    assert loaded.preprocessing == Preprocessing(resolution=(32, 48), mean=mean, std=std)
    assert vitkit.load_model(saved, img_size=48).preprocessing.resolution == (48, 48)


def test_format_version_1_reads_the_config_fields_not_the_block(saved: Path) -> None:
    """vitkit read a version 1 file's config fields; its "preprocessing" block was for others."""

    def edit(content: dict) -> None:
        as_format_version_1(content, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
        del content["preprocessing"]

    edit_config(saved, edit)
    assert vitkit.load_model(saved).preprocessing.mean == (0.1, 0.2, 0.3)


def test_format_version_1_without_mean_is_missing_a_field(saved: Path) -> None:
    def edit(content: dict) -> None:
        as_format_version_1(content, [0.5] * 3, [0.5] * 3)
        del content["config"]["mean"]

    edit_config(saved, edit)
    with pytest.raises(CheckpointError, match=r"config\.json: missing field\(s\) mean"):
        vitkit.load_model(saved)


def test_mean_among_the_config_fields_of_version_2_is_unknown(saved: Path) -> None:
    edit_config(saved, lambda content: content["config"].update(mean=[0.5] * 3))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown field\(s\) mean"):
        vitkit.load_model(saved)


def test_version_2_needs_the_preprocessing_record(saved: Path) -> None:
    edit_config(saved, lambda content: content.pop("preprocessing"))
    with pytest.raises(CheckpointError, match=r'config\.json: "preprocessing" must be an object'):
        vitkit.load_model(saved)


def test_bad_preprocessing_values_are_named(saved: Path) -> None:
    edit_config(saved, lambda content: content["preprocessing"].update(interpolation="area"))
    with pytest.raises(CheckpointError, match=r"preprocessing\.interpolation must be one of"):
        vitkit.load_model(saved)
    edit_config(saved, lambda content: content["preprocessing"].update(size=3))
    with pytest.raises(CheckpointError, match=r'"preprocessing": unknown field\(s\) size'):
        vitkit.load_model(saved)
