"""Hugging Face transformers ViT directories, checked against transformers itself: small models
with every parameter randomised, saved by `save_pretrained`, read by `vitkit.load_model`, must
give transformers' logits (and `ViTModel`'s pooler output) in transformers' numerics: the GELU
named by hidden_act and the LayerNorm eps of config.json (1e-12 by default)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import ViTConfig as HFViTConfig
from transformers import ViTForImageClassification, ViTModel

import vitkit
from vitkit import CheckpointError
from vitkit.models.vit import VisionTransformer
from vitkit.weights.export import export_model
from vitkit.weights.hf import hf_to_vitkit
from vitkit.weights.state_dict import load_checked

from helpers import randomise_

TOLERANCE = 1e-5
SMALL = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    image_size=32,
    patch_size=8,
    num_labels=5,
)


def hf_config(**overrides: object) -> HFViTConfig:
    return HFViTConfig(**{**SMALL, **overrides})


def images(config: HFViTConfig, seed: int = 1) -> torch.Tensor:
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(3, 3, height, width, generator=torch.Generator().manual_seed(seed))


def hf_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(pixel_values=x)
    return out.logits if hasattr(out, "logits") else out.pooler_output


def save_hf(model: nn.Module, directory: Path, fmt: str) -> Path:
    """save_pretrained, as model.safetensors; "bin" gives a pytorch_model.bin directory like the
    older files on the Hub (transformers 5 writes safetensors only, whatever
    safe_serialization says), made from the same tensors with `torch.save`."""
    if fmt == "safetensors":
        model.save_pretrained(directory)
        assert (directory / "model.safetensors").is_file()
        return directory
    model.save_pretrained(directory, safe_serialization=False)
    if not (directory / "pytorch_model.bin").is_file():
        weights = directory / "model.safetensors"
        torch.save(load_file(str(weights)), directory / "pytorch_model.bin")
        weights.unlink()
    return directory


def compare(expected: torch.Tensor, model: nn.Module, x: torch.Tensor, label: str) -> float:
    with torch.no_grad():
        got = model(x)
    assert got.shape == expected.shape
    # The outputs must carry signal, or agreement would prove nothing.
    assert expected.std() > 0.05 and (expected[0] - expected[1]).abs().max() > 0.05
    error = (got - expected).abs().max().item()
    print(f"\n{label}: max |vitkit - transformers| = {error:.3e} (max {expected.abs().max():.2f})")
    return error


CASES: dict[str, dict] = {
    "gelu": {},
    "gelu_pytorch_tanh": dict(hidden_act="gelu_pytorch_tanh"),
    "gelu_new": dict(hidden_act="gelu_new"),
    "32x48-no-qkv-bias": dict(image_size=[32, 48], qkv_bias=False),
    "eps-1e-2": dict(layer_norm_eps=1e-2),
    "patch-size-pair": dict(patch_size=[8, 8]),
}


@functools.cache
def classifier(case: str) -> nn.Module:
    """The randomised ViTForImageClassification of CASES[case], built once (tests only read it)."""
    return randomise_(ViTForImageClassification(hf_config(**CASES[case]))).eval()


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("case", list(CASES))
def test_classifier_logits_match_transformers(tmp_path: Path, case: str, fmt: str) -> None:
    reference = classifier(case)
    x = images(reference.config)
    model = vitkit.load_model(save_hf(reference, tmp_path, fmt))
    assert not model.training
    hf = reference.config
    assert model.config.layer_norm_eps == hf.layer_norm_eps
    assert model.config.gelu == ("exact" if hf.hidden_act == "gelu" else "tanh")
    assert model.config.qkv_bias == hf.qkv_bias
    assert model.config.num_classes == hf.num_labels
    error = compare(hf_output(reference, x), model, x, f"HF classifier {case} ({fmt})")
    assert error <= TOLERANCE


@pytest.mark.parametrize("case", ["gelu", "gelu_pytorch_tanh", "eps-1e-2"])
def test_comparison_sees_the_numerics(tmp_path: Path, case: str) -> None:
    """Control: the wrong GELU or LayerNorm eps gives a measurably different output, so the
    equivalence tests above would catch a loader that ignored config.json's numerics."""
    reference = classifier(case)
    x = images(reference.config)
    loaded = vitkit.load_model(save_hf(reference, tmp_path, "safetensors"))
    config = loaded.config
    if case == "eps-1e-2":
        config = dataclasses.replace(config, layer_norm_eps=1e-12)
    else:
        config = dataclasses.replace(config, gelu="tanh" if config.gelu == "exact" else "exact")
    wrong = VisionTransformer(config).eval()
    wrong.load_state_dict(loaded.state_dict())
    assert compare(hf_output(reference, x), wrong, x, f"HF {case}, wrong numerics") > 1e-4


@pytest.mark.parametrize("pooler_output_size", [None, 48])
def test_vit_model_pooler_output(tmp_path: Path, pooler_output_size: int | None) -> None:
    """ViTModel's pooler (Linear + tanh on the [class] token) is the paper's pre-logits layer:
    vitkit loads it as num_classes=0, representation_size=pooler width."""
    config = hf_config(pooler_output_size=pooler_output_size)
    reference = randomise_(ViTModel(config, add_pooling_layer=True), seed=2).eval()
    x = images(config)
    model = vitkit.load_model(save_hf(reference, tmp_path, "safetensors"))
    assert model.config.num_classes == 0
    assert model.config.representation_size == (pooler_output_size or config.hidden_size)
    error = compare(hf_output(reference, x), model, x, f"HF ViTModel pooler {pooler_output_size}")
    assert error <= TOLERANCE


def test_vit_model_without_pooler(tmp_path: Path) -> None:
    config = hf_config()
    reference = randomise_(ViTModel(config, add_pooling_layer=False), seed=3).eval()
    x = images(config)
    with torch.no_grad():
        expected = reference(pixel_values=x).last_hidden_state[:, 0]
    model = vitkit.load_model(save_hf(reference, tmp_path, "safetensors"))
    assert model.config.num_classes == 0 and model.config.representation_size is None
    assert compare(expected, model, x, "HF ViTModel without pooler") <= TOLERANCE


@pytest.mark.parametrize("kind", ["classifier", "pooler"])
def test_in_memory_transformers5_names(kind: str) -> None:
    """transformers 5 modules name their weights vit.layers.N.attention.q_proj, ... (the files
    keep the Hub's names); `hf_to_vitkit` reads a live model's state_dict too."""
    if kind == "classifier":
        reference = classifier("gelu")
    else:
        reference = randomise_(ViTModel(hf_config(), add_pooling_layer=True), seed=4).eval()
    state = reference.state_dict()
    prefix = "vit." if kind == "classifier" else ""
    assert f"{prefix}layers.0.attention.q_proj.weight" in state
    assert f"{prefix}layers.1.mlp.fc2.bias" in state
    config, converted = hf_to_vitkit(reference.config.to_dict(), state)
    model = VisionTransformer(config)
    load_checked(model, converted, source="in-memory transformers model")
    x = images(reference.config)
    error = compare(hf_output(reference, x), model.eval(), x, f"HF in-memory {kind}")
    assert error <= TOLERANCE


def test_pooler_activation_other_than_tanh_is_refused(tmp_path: Path) -> None:
    reference = randomise_(ViTModel(hf_config(pooler_act="relu")), seed=5).eval()
    with pytest.raises(CheckpointError, match="pooler_act='relu'"):
        vitkit.load_model(save_hf(reference, tmp_path, "safetensors"))


def test_non_gelu_activation_is_refused(tmp_path: Path) -> None:
    reference = randomise_(ViTForImageClassification(hf_config(hidden_act="relu")), seed=6)
    with pytest.raises(CheckpointError, match="hidden_act 'relu'"):
        vitkit.load_model(save_hf(reference, tmp_path, "safetensors"))


def test_normalisation_read_from_the_image_processor(tmp_path: Path) -> None:
    """preprocessor_config.json's image_mean/std and resample become the model's preprocessing;
    vitkit's preprocessing then gives what transformers' ViTImageProcessor gives (image already
    at the model's size)."""
    import numpy as np
    from PIL import Image
    from transformers import ViTImageProcessor

    from vitkit.data import eval_transform

    config = hf_config()
    save_hf(randomise_(ViTForImageClassification(config)), tmp_path, "safetensors")
    default = vitkit.load_model(tmp_path).preprocessing
    assert default == vitkit.Preprocessing.google(config.image_size)  # processor default

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    processor = ViTImageProcessor(
        image_mean=mean, image_std=std, size=config.image_size, resample=3
    )
    processor.save_pretrained(tmp_path)
    model = vitkit.load_model(tmp_path)
    assert model.preprocessing.mean == pytest.approx(mean)
    assert model.preprocessing.std == pytest.approx(std)
    assert model.preprocessing.interpolation == "bicubic"
    assert model.preprocessing.resolution == (config.image_size, config.image_size)

    size = config.image_size
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), np.uint8))
    expected = processor(image, return_tensors="pt")["pixel_values"][0]
    got = eval_transform(model.preprocessing)(image)
    assert (got - expected).abs().max() <= 1e-5


# ---------------------------------------------------------------------------------------------
# Class names: transformers' id2label/label2id, read and written.

NAMES = ("tabby cat", "golden retriever", "crane", "crane", "école")  # repeats, as ImageNet's


def named_hf_directory(directory: Path, **overrides: object) -> Path:
    """A transformers classifier whose config.json names its 5 classes."""
    id2label = dict(enumerate(NAMES))
    label2id = {name: index for index, name in id2label.items()}
    config = hf_config(id2label=id2label, label2id=label2id, **overrides)
    return save_hf(randomise_(ViTForImageClassification(config)), directory, "safetensors")


def test_class_names_read_from_id2label(tmp_path: Path) -> None:
    assert vitkit.load_model(named_hf_directory(tmp_path)).class_names == NAMES


def test_transformers_placeholder_labels_mean_no_names(tmp_path: Path) -> None:
    save_hf(randomise_(ViTForImageClassification(hf_config())), tmp_path, "safetensors")
    assert vitkit.load_model(tmp_path).class_names is None  # id2label "LABEL_0".."LABEL_4"


def test_pipeline_prints_the_names_vitkit_wrote(tmp_path: Path) -> None:
    """transformers' own `pipeline("image-classification")` on a directory vitkit wrote gives the
    names and probabilities vitkit gives."""
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    from vitkit.data import eval_transform
    from vitkit.weights.hf import write_hf

    model = vitkit.load_model(named_hf_directory(tmp_path / "source"))
    write_hf(model, tmp_path / "written")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)  # at the model's size: both resize nothing
    results = pipeline("image-classification", model=str(tmp_path / "written"), top_k=5)(image)
    with torch.no_grad():
        inputs = eval_transform(model.preprocessing)(image)[None]
        probabilities = model(inputs).softmax(dim=-1)[0]
    top = probabilities.topk(5)
    expected = [NAMES[index] for index in top.indices.tolist()]
    assert [result["label"] for result in results] == expected
    scores = torch.tensor([result["score"] for result in results])
    assert (scores - top.values).abs().max() <= TOLERANCE


def test_hf_to_hf_keeps_the_names(tmp_path: Path) -> None:
    from vitkit.weights.hf import write_hf

    write_hf(vitkit.load_model(named_hf_directory(tmp_path / "a")), tmp_path / "b")
    reloaded = ViTForImageClassification.from_pretrained(tmp_path / "b")
    assert reloaded.config.id2label == dict(enumerate(NAMES))
    assert reloaded.config.label2id["tabby cat"] == 0


def test_hf_to_npz_to_hf_keeps_the_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Google's .npz holds parameters only (vit_jax would carry any other member into training),
    so `vitkit convert` writes the names into a labels file beside it, which the next read
    takes: transformers sees the names again after the round trip."""
    from vitkit.cli.main import main

    google_numerics = dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    source = named_hf_directory(tmp_path / "a", **google_numerics)
    assert main(["convert", str(source), str(tmp_path / "b.npz"), "--to", "npz"]) == 0
    assert f"wrote {tmp_path / 'b.labels.txt'} (the 5 class names)" in capsys.readouterr().out
    assert (tmp_path / "b.labels.txt").read_text().splitlines() == list(NAMES)
    with np.load(tmp_path / "b.npz") as params:  # parameters only: float arrays
        assert all(params[key].dtype == np.float32 for key in params)
    assert main(["convert", str(tmp_path / "b.npz"), str(tmp_path / "c"), "--to", "hf"]) == 0
    config = ViTForImageClassification.from_pretrained(tmp_path / "c").config
    assert config.id2label == dict(enumerate(NAMES))
    assert vitkit.load_model(tmp_path / "c").class_names == NAMES


def test_a_labels_file_that_does_not_fit_is_named(tmp_path: Path) -> None:
    google_numerics = dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    model = vitkit.load_model(named_hf_directory(tmp_path / "a", **google_numerics))
    written = export_model(model, tmp_path / "b.npz", to="npz")
    (tmp_path / "b.labels.txt").write_text("only\ntwo\n")
    with pytest.raises(CheckpointError, match=r"b\.labels\.txt: 2 labels, but the model has 5"):
        vitkit.load_model(written)


@pytest.mark.parametrize(
    "id2label, fragment",
    [
        ({"0": "a", "1": "b", "2": "c", "3": "d", "7": "e"}, "keys must be 0..4"),
        ({"0": "a", "1": "b"}, "got 2 keys"),
        ({str(i): i for i in range(5)}, "class name 0 is a int"),
        (["a", "b", "c", "d", "e"], "must be an object"),
    ],
)
def test_bad_id2label_is_refused_naming_it(tmp_path: Path, id2label: object, fragment: str) -> None:
    import json

    directory = named_hf_directory(tmp_path)
    content = json.loads((directory / "config.json").read_text())
    content["id2label"] = id2label
    (directory / "config.json").write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match="config.json: id2label") as error:
        vitkit.load_model(directory)
    assert fragment in str(error.value) and "\n" not in str(error.value)
