"""timm's own folder layout (config.json + model.safetensors), checked against timm itself: a
folder vitkit writes loads with `timm.create_model("local-dir:...", pretrained=True)` alone and
gives vitkit's logits and preprocessing; a folder timm writes (`save_for_hf`, a hub repository's
layout) loads in vitkit with no options; vitkit -> folder -> vitkit is exact; every bad value in
config.json is refused in one line naming the key."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.data
import torch
from PIL import Image
from timm.models._hub import save_for_hf

import vitkit
from vitkit import CheckpointError
from vitkit.cli.main import main
from vitkit.data import eval_transform
from vitkit.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from vitkit.weights.export import export_model
from vitkit.weights.load import detect_format

from helpers import compare_outputs as compare
from helpers import randomise_

TOLERANCE = 1e-5


def images(size: tuple[int, int] = (32, 32), seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(seed))


def names(count: int) -> tuple[str, ...]:
    return tuple(f"class {index}" for index in range(count))


def load_in_timm(folder: Path) -> torch.nn.Module:
    """The folder as timm loads it: the name alone, nothing else."""
    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


def odd_vit(**fields: object) -> vitkit.VisionTransformer:
    """A plain ViT of no paper width (128, 4 heads), a non-square image, a [class] token that is
    not read (average pooling without fc_norm: keys timm's "token" models have too), tanh-GELU,
    LayerScale starting at 0.1: everything a bare state dict cannot say. Random weights, class
    names, ImageNet statistics."""
    config = vitkit.ViTConfig(
        **{
            **dict(img_size=(32, 48), patch_size=8, width=128, depth=2, num_heads=4),
            **dict(mlp_dim=256, num_classes=5, classifier="gap", gelu="tanh"),
            **dict(layer_scale_init=0.1),
            **fields,
        }
    )
    preprocessing = Preprocessing(resolution=config.img_size, mean=IMAGENET_MEAN,
                                  std=IMAGENET_STD, interpolation="bicubic")  # fmt: skip
    model = randomise_(vitkit.VisionTransformer(config, preprocessing=preprocessing), seed=2)
    model.class_names = names(config.num_classes)
    return model.eval()


# ---- vitkit -> timm ------------------------------------------------------------------------


@pytest.mark.parametrize("numerics", ["google", "timm"])
def test_the_demo_hybrid_loads_in_timm_in_one_line(tmp_path: Path, numerics: str) -> None:
    """R+ViT-CIFAR/4 (timm's root-only hybrid, whose registered weights timm reads from Google's
    .npz by a custom loader) from its folder: timm's logits, its data config, its transform's
    output and its label names are vitkit's. In Google's numerics the kernels are rescaled for
    timm's weight standardisation and GroupNorm's eps differs (1e-6 against timm's 1e-5): about
    5e-7 here; in timm's numerics the outputs agree to the bit."""
    model = vitkit.create_model("R+ViT-CIFAR/4", resnet_numerics=numerics)
    model = randomise_(model, seed=5).eval()
    model.class_names = names(10)
    model.preprocessing = Preprocessing(resolution=32, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                        interpolation="bicubic")  # fmt: skip
    folder = export_model(model, tmp_path / "r_cifar", to="timm")
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "model.safetensors"]
    reference = load_in_timm(folder)
    error = compare(reference, model, images(), f"R+ViT-CIFAR/4 ({numerics}) -> timm local-dir")
    assert error <= TOLERANCE
    assert tuple(reference.pretrained_cfg["label_names"]) == model.class_names

    data_config = timm.data.resolve_data_config({}, model=reference)
    preprocessing = model.preprocessing
    assert data_config["input_size"] == (3, *preprocessing.resolution)
    assert tuple(data_config["mean"]) == preprocessing.mean
    assert tuple(data_config["std"]) == preprocessing.std
    assert data_config["interpolation"] == preprocessing.interpolation
    assert (data_config["crop_pct"], data_config["crop_mode"]) == (1.0, "squash")
    pixels = np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)  # another size and aspect ratio than the model's
    expected = eval_transform(preprocessing)(image)
    got = timm.data.create_transform(**data_config)(image)
    assert got.shape == expected.shape == (3, 32, 32)
    assert (got - expected).abs().max() <= 1e-5


# A CLIP tower's numerics (pre-norm, no patch bias, quick GELU, eps 1e-5), whose eps only timm's
# CLIP name carries: JSON cannot. (Average pooling: a random [class] token's output would barely
# depend on the image.)
CLIP = dict(pre_norm=True, patch_bias=False, gelu="quick", layer_norm_eps=1e-5)


@pytest.mark.parametrize("fields", [{}, CLIP], ids=["odd", "clip"])
def test_a_folder_round_trips_with_no_options(tmp_path: Path, fields: dict) -> None:
    """What a bare state dict loses (heads of no paper width, a non-square image, the pooling,
    the GELU, LayerScale's start, the preprocessing, the class names) comes back from the folder
    with no options and no warning, every tensor exact; and timm computes the same model."""
    model = odd_vit(**fields)
    folder = export_model(model, tmp_path / "odd", to="timm")
    assert detect_format(folder) == "timm"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UnrecordedPoolingWarning, nor any other
        loaded = vitkit.load_model(folder)
    # How position embeddings are resized to other sizes is the reader's choice (timm's bicubic),
    # which no file records.
    interpolation = model.config.pos_embed_interpolation
    assert dataclasses.replace(loaded.config, pos_embed_interpolation=interpolation) == model.config
    assert loaded.preprocessing == model.preprocessing
    assert loaded.class_names == model.class_names
    got, want = loaded.state_dict(), model.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[key], want[key]) for key in want)
    reference = load_in_timm(folder)
    assert compare(reference, model, images((32, 48)), "odd ViT -> timm local-dir") <= TOLERANCE


@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_another_layer_norm_eps_is_refused_in_folder_form_only(tmp_path: Path, eps: float) -> None:
    """timm's JSON model_args cannot hold a LayerNorm eps other than 1e-6 (Hugging Face's 1e-12;
    1e-5 only for CLIP's pre-norm towers, by name): the folder is refused in one line naming it,
    nothing written; the bare file still holds the model."""
    model = odd_vit(layer_norm_eps=eps)
    with pytest.raises(CheckpointError) as caught:
        export_model(model, tmp_path / "eps", to="timm")
    message = str(caught.value)
    assert "\n" not in message and f"layer_norm_eps={eps!r}" in message
    assert not (tmp_path / "eps").exists()
    assert export_model(model, tmp_path / "eps.safetensors", to="timm").is_file()


def test_the_cli_prints_the_local_dir_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vitkit convert ... --to timm OUTDIR` prints the one line that loads the folder (no
    labels file: the names are in config.json), and that line, run as printed, loads it."""
    source = export_model(odd_vit(), tmp_path / "source", to="vitkit")
    target = tmp_path / "out"
    assert main(["convert", str(source), str(target), "--to", "timm"]) == 0
    out = capsys.readouterr().out
    line = f'load it with: model = timm.create_model("local-dir:{target}", pretrained=True)'
    assert line in out.splitlines()
    assert "labels" not in out and not list(tmp_path.glob("*.labels.txt"))
    namespace: dict[str, object] = {"timm": timm}
    exec(line.removeprefix("load it with: "), namespace)  # noqa: S102 - run as printed
    assert namespace["model"].pretrained_cfg["label_names"] == list(names(5))


# ---- timm -> vitkit ------------------------------------------------------------------------


def timm_folder(folder: Path, weights: str = "safetensors", **kwargs: object) -> torch.nn.Module:
    """A folder written by timm itself (`save_for_hf`, what a hub repository holds), of a
    randomised timm model built with `kwargs`, with class names."""
    kwargs = {"img_size": 32, "num_classes": 3, "depth": 2, **kwargs}
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    randomise_(reference, seed=4).eval()
    save_for_hf(reference, folder, safe_serialization=weights == "safetensors",
                model_config={"label_names": ["cat", "dog", "bird"]})  # fmt: skip
    return reference


@pytest.mark.parametrize("layout", ["safetensors", "bin", "no model_args"])
def test_a_folder_timm_wrote_loads_with_timm_s_logits(tmp_path: Path, layout: str) -> None:
    """timm's folder of a model whose keys do not show its pooling ([class] token, average
    pooling, no fc_norm): read from its config.json, with the class names and timm's
    preprocessing. A hub snapshot from before model_args ("no model_args") keeps its top-level
    global_pool and its fixed input_size, which say the same."""
    weights = "bin" if layout == "bin" else "safetensors"
    reference = timm_folder(tmp_path, weights, global_pool="avg", fc_norm=False)
    if layout == "no model_args":
        content = json.loads((tmp_path / "config.json").read_text())
        del content["model_args"]
        (tmp_path / "config.json").write_text(json.dumps(content))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = vitkit.load_model(tmp_path)
    assert model.config.classifier == "gap" and model.class_names == ("cat", "dog", "bird")
    assert model.preprocessing == Preprocessing(resolution=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                                                interpolation="bicubic")  # fmt: skip
    assert compare(reference, model, images(), f"timm's folder ({layout})") <= TOLERANCE


# ---- Strangers' config.json ----------------------------------------------------------------


def edited(key: str, value: object) -> Callable[[dict], None]:
    """Set `key` ("a.b" for nested) of a parsed config.json to `value`."""

    def edit(content: dict) -> None:
        *parents, last = key.split(".")
        for parent in parents:
            content = content[parent]
        content[last] = value

    return edit


BAD_VALUES: dict[str, tuple[Callable[[dict], None], str]] = {
    "architecture": (edited("architecture", 7), "architecture"),
    "model_args type": (edited("model_args", [1]), "model_args must be an object"),
    "pretrained_cfg type": (edited("pretrained_cfg", "x"), "pretrained_cfg must be an object"),
    "num_heads type": (edited("model_args.num_heads", "4"), "model_args.num_heads"),
    "num_heads value": (edited("model_args.num_heads", 5), "model_args.num_heads"),
    "img_size type": (edited("model_args.img_size", {"h": 32}), "model_args.img_size"),
    "img_size value": (edited("model_args.img_size", [40, 48]), "model_args.img_size"),
    "global_pool": (edited("model_args.global_pool", "map"), "model_args.global_pool"),
    "global_pools disagree": (edited("global_pool", "token"), "global_pool"),
    "act_layer": (edited("model_args.act_layer", "relu"), "model_args.act_layer"),
    "norm_layer": (edited("model_args.norm_layer", "rmsnorm"), "model_args.norm_layer"),
    "depth": (edited("model_args.depth", 12), "model_args.depth is 12"),
    "class_token": (edited("model_args.class_token", 1), "model_args.class_token"),
    "mlp_ratio": (edited("model_args.mlp_ratio", 4.0), "model_args.mlp_ratio"),
    "init_values": (edited("model_args.init_values", -1), "model_args.init_values"),
    "num_classes": (edited("num_classes", 7), "num_classes is 7"),
    "num_features": (edited("num_features", -1), "num_features"),
    "std": (edited("pretrained_cfg.std", [0.5, 0.0, 0.5]), "pretrained_cfg.std"),
    "label count": (edited("pretrained_cfg.label_names", ["a"]), "pretrained_cfg.label_names"),
    "label type": (edited("pretrained_cfg.label_names", [1, 2, 3, 4, 5]), "label_names"),
    "label gaps": (edited("pretrained_cfg.label_names", {"0": "a", "7": "b"}), "label_names"),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(odd_vit(), tmp_path_factory.mktemp("written") / "folder", to="timm")


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_config_values_are_named(written: Path, tmp_path: Path, case: str) -> None:
    edit, key = BAD_VALUES[case]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((written / "model.safetensors").read_bytes())
    content = json.loads((written / "config.json").read_text())
    edit(content)
    (folder / "config.json").write_text(json.dumps(content))
    with pytest.raises(CheckpointError) as caught:
        vitkit.load_model(folder)
    message = str(caught.value)
    print(f"\n{case}: {message}")
    assert "\n" not in message and "config.json" in message and key in message


@pytest.mark.parametrize(
    ("told", "key"),
    [
        (dict(num_heads=8), "model_args.num_heads"),
        (dict(classifier="token"), "model_args.global_pool"),
    ],
)
def test_options_that_contradict_the_folder_are_refused(
    written: Path, told: dict, key: str
) -> None:
    with pytest.raises(CheckpointError, match=re.escape(key) + ".*contradicts"):
        vitkit.load_model(written, **told)
