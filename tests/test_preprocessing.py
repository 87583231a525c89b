"""The `Preprocessing` record (resolution, mean, std, interpolation): checked like a config, carried
by the model beside its `ViTConfig`, set by `load_model` from each format's metadata, kept at the
model's resolution, and recorded by every writer that can hold it (vitkit, Hugging Face, the timm
call `vitkit convert` prints, ONNX metadata)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import vitkit
from vitkit import CheckpointError, ConfigError, Preprocessing
from vitkit.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from vitkit.weights.export import export_model
from vitkit.weights.timm import timm_create_model_call

from helpers import randomise_

# Neither Google's nor ImageNet's, and bicubic: a record no default could produce by chance.
ODD = Preprocessing(resolution=(32, 32), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6),
                    interpolation="bicubic")  # fmt: skip


def odd_model(**fields: object) -> vitkit.VisionTransformer:
    model = vitkit.create_model("ViT-Test/8", num_classes=5, **fields)
    model.preprocessing = dataclasses.replace(ODD, resolution=model.config.img_size)
    return randomise_(model, seed=0).eval()


# --- The record -------------------------------------------------------------------------------

BAD_FIELDS = {
    "mean-string": (dict(mean="0.5"), "mean must be a list of numbers, got '0.5'"),
    "mean-empty": (dict(mean=(), std=()), "mean must be a list of numbers, got ()"),
    "mean-short": (dict(mean=(0.5,)), "mean and std need one value per input channel each"),
    "mean-inf": (dict(mean=(0.5, float("inf"), 0.5)), "mean must be in (-inf, inf), got inf"),
    "std-nan": (dict(std=(0.5, float("nan"), 0.5)), "std must be in (0, inf), got nan"),
    "std-zero": (dict(std=(0.5, 0.0, 0.5)), "std must be in (0, inf), got 0.0"),
    "resolution-three-sides": (dict(resolution=(1, 2, 3)), "resolution must be an integer or a"),
    "resolution-zero": (dict(resolution=(0, 32)), "resolution must be between 1"),
    "interpolation-unknown": (dict(interpolation="area"), "interpolation must be one of"),
}


@pytest.mark.parametrize("case", BAD_FIELDS)
def test_every_bad_field_is_a_config_error_naming_it(case: str) -> None:
    changes, message = BAD_FIELDS[case]
    with pytest.raises(ConfigError) as error:
        dataclasses.replace(Preprocessing.google(32), **changes)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_values_are_normalised_and_the_record_is_frozen() -> None:
    record = Preprocessing(resolution=[32, 48], mean=[0, 1, 0.5], std=(1, 1, 1))
    assert record.resolution == (32, 48) and record.mean == (0.0, 1.0, 0.5)
    assert record == Preprocessing(resolution=(32, 48), mean=(0.0, 1.0, 0.5), std=(1.0,) * 3)
    assert Preprocessing.google(32).resolution == (32, 32)
    assert Preprocessing.imagenet((16, 24)).mean == IMAGENET_MEAN
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.mean = (0.5,) * 3  # type: ignore[misc]


def test_a_file_s_names_appear_in_its_errors() -> None:
    names = {"mean": "image_mean (preprocessor_config.json)"}
    values = dict(resolution=32, mean="x", std=[0.5] * 3)
    with pytest.raises(ConfigError, match=r"image_mean \(preprocessor_config\.json\) must be"):
        Preprocessing.from_fields(values, names=names)
    with pytest.raises(ConfigError, match="missing std"):
        Preprocessing.from_fields(dict(resolution=32, mean=[0.5] * 3), names={})


# --- The model carries it ---------------------------------------------------------------------


def test_a_new_model_takes_google_s_inputs_at_its_resolution() -> None:
    assert vitkit.create_model("ViT-Test/8").preprocessing == Preprocessing.google(32)
    model = vitkit.create_model("ViT-Test/8", img_size=(16, 24))
    assert model.preprocessing == Preprocessing.google((16, 24))
    grey = vitkit.create_model("ViT-Test/8", in_chans=1)
    assert grey.preprocessing.mean == (0.5,) and grey.preprocessing.std == (0.5,)


def test_the_record_must_fit_the_model_s_channels() -> None:
    model = vitkit.create_model("ViT-Test/8")
    with pytest.raises(ConfigError, match=r"one value per input channel \(in_chans=3\), got 1"):
        model.preprocessing = Preprocessing(resolution=32, mean=(0.5,), std=(0.5,))
    with pytest.raises(ConfigError, match="in_chans=1"):
        vitkit.VisionTransformer(
            vitkit.get_config("ViT-Test/8", in_chans=1), preprocessing=Preprocessing.google(32)
        )


def test_the_record_survives_copies_and_a_new_head() -> None:
    model = odd_model()
    assert copy.deepcopy(model).preprocessing == model.preprocessing
    averaged = torch.optim.swa_utils.AveragedModel(model)  # the trainer's EMA copies the model
    assert averaged.module.preprocessing == model.preprocessing
    model.reset_classifier(3)
    assert model.preprocessing == dataclasses.replace(ODD, resolution=(32, 32))


# --- load_model sets it -----------------------------------------------------------------------


def test_google_files_take_minus_one_to_one_and_follow_img_size(official_fixture: Path) -> None:
    path = official_fixture / "params.npz"
    model = vitkit.load_model(path)
    assert model.preprocessing == Preprocessing.google(model.config.img_size)
    resized = vitkit.load_model(path, img_size=32, num_classes=3)
    assert resized.preprocessing == Preprocessing.google(32)


def timm_hub_directory(directory: Path, **overlay: object) -> Path:
    """What a timm hub repository holds (timm's own `save_for_hf`): model.safetensors and a
    config.json whose pretrained_cfg has the weights' preprocessing."""
    from timm.models._hub import save_for_hf

    reference = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3, depth=2,
        pretrained_cfg_overlay=overlay,
    )  # fmt: skip
    save_for_hf(randomise_(reference), directory, safe_serialization=True)
    return directory / "model.safetensors"


def test_timm_weights_take_the_pretrained_cfg_beside_them(tmp_path: Path) -> None:
    weights = timm_hub_directory(tmp_path, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                 interpolation="bicubic")  # fmt: skip
    model = vitkit.load_model(weights)
    expected = dataclasses.replace(Preprocessing.imagenet(32), interpolation="bicubic")
    assert model.preprocessing == expected
    assert vitkit.load_model(weights, img_size=48).preprocessing.resolution == (48, 48)


def test_timm_weights_without_a_timm_config_take_google_s_inputs(tmp_path: Path) -> None:
    weights = timm_hub_directory(tmp_path, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))  # not timm's
    assert vitkit.load_model(weights).preprocessing == Preprocessing.google(32)
    (tmp_path / "config.json").unlink()
    assert vitkit.load_model(weights).preprocessing == Preprocessing.google(32)


def test_a_bad_pretrained_cfg_is_named(tmp_path: Path) -> None:
    weights = timm_hub_directory(tmp_path, std=(0.5, 0.0, 0.5))
    with pytest.raises(CheckpointError) as error:
        vitkit.load_model(weights)
    message = str(error.value)
    assert str(weights) in message and "config.json" in message
    assert "pretrained_cfg.std must be in (0, inf), got 0.0" in message


# --- Every writer that can records it ---------------------------------------------------------


@pytest.mark.parametrize("to", ["vitkit", "hf"])
def test_the_record_round_trips_through_the_writers_that_hold_it(tmp_path: Path, to: str) -> None:
    model = odd_model()
    loaded = vitkit.load_model(export_model(model, tmp_path / to, to=to))
    assert loaded.preprocessing == model.preprocessing
    assert loaded.config == model.config


def test_a_google_file_holds_no_record(tmp_path: Path) -> None:
    """An .npz holds parameters only, and every Google file is read as taking [-1, 1]."""
    model = odd_model(gelu="tanh", classifier="token")
    loaded = vitkit.load_model(export_model(model, tmp_path / "model.npz", to="npz"))
    assert loaded.preprocessing == Preprocessing.google(32)


def test_the_printed_timm_call_carries_the_record(tmp_path: Path) -> None:
    """`vitkit convert --to timm` prints a call whose pretrained_cfg is the model's record, so
    that timm's own data config preprocesses as vitkit does; read back with the config.json of a
    timm hub repository, the record is the model's again."""
    from timm.data import resolve_data_config
    from timm.models._hub import save_for_hf

    model = odd_model()
    path = export_model(model, tmp_path / "model.safetensors", to="timm")
    namespace: dict[str, object] = {"timm": timm}
    call = timm_create_model_call(model.config, path=path, preprocessing=model.preprocessing)
    exec(call, namespace)  # noqa: S102 - the printed text, run as printed
    reference = namespace["model"]
    data_config = resolve_data_config(model=reference)
    assert data_config["input_size"] == (3, 32, 32)
    assert data_config["mean"] == ODD.mean and data_config["std"] == ODD.std
    assert data_config["interpolation"] == "bicubic"
    save_for_hf(reference, tmp_path / "hub", safe_serialization=True)
    loaded = vitkit.load_model(tmp_path / "hub" / "model.safetensors", num_heads=4)
    assert loaded.preprocessing == model.preprocessing


def test_onnx_metadata_is_the_record(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    from vitkit.weights.onnx_export import onnx_metadata

    metadata = onnx_metadata(odd_model())
    assert json.loads(metadata["image_size"]) == [32, 32]
    assert json.loads(metadata["mean"]) == list(ODD.mean)
    assert json.loads(metadata["std"]) == list(ODD.std)
    assert metadata["interpolation"] == "bicubic"


def test_a_state_dict_file_alone_is_google_s(tmp_path: Path) -> None:
    """A timm file without a config.json beside it records nothing: Google's [-1, 1]."""
    model = odd_model()
    path = tmp_path / "model.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    assert vitkit.load_model(path, num_heads=4).preprocessing == Preprocessing.google(32)
