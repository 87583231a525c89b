"""ONNX export (`export_onnx`, `vitkit export-onnx`), checked by running the graph in onnxruntime,
an independent runtime, on the inputs given to the PyTorch model: max |diff| <= 1e-4."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import vitkit
from vitkit import CheckpointError
from vitkit.cli.main import main
from vitkit.weights.onnx_export import INPUT_NAME, export_onnx

from helpers import OFFICIAL_FIXTURE

TOLERANCE = 1e-4


def run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: images.numpy()})[0]


def compare(model: torch.nn.Module, path: Path, images: torch.Tensor, label: str) -> float:
    with torch.no_grad():
        expected = model(images).numpy()
    got = run_onnx(path, images)
    assert got.shape == expected.shape
    # The outputs must carry signal, or agreement would prove nothing (Google's fixture has small
    # logits, std about 0.05, hence the low bar).
    assert expected.std() > 0.01
    error = float(np.abs(got - expected).max())
    print(f"\n{label}: max |onnxruntime - vitkit| = {error:.3e} (max {np.abs(expected).max():.2f})")
    return error


@torch.no_grad()
def random_model() -> vitkit.VisionTransformer:
    """A small model with every parameter random (LayerNorm weights around 1, no zero head)."""
    model = vitkit.create_model("ViT-Test/8", num_classes=5, representation_size=24, gelu="tanh")
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if "norm" in name and name.endswith("weight"):
            param.copy_(1.0 + 0.2 * noise)
        elif param.ndim >= 2 and name != "pos_embed":
            param.copy_(noise / math.sqrt(param[0].numel()))
        else:
            param.copy_(0.3 * noise)
    return model.eval()


def test_dynamic_batch_by_default_matches_pytorch(tmp_path: Path) -> None:
    model = random_model()
    path = export_onnx(model, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary files
    generator = torch.Generator().manual_seed(1)
    for batch in (5, 1):
        images = torch.randn(batch, 3, 32, 32, generator=generator)
        assert compare(model, path, images, f"ONNX dynamic batch {batch}") <= TOLERANCE


def test_metadata_records_preprocessing_and_class_names(tmp_path: Path) -> None:
    """What a consumer of the .onnx file alone needs, read back by onnx and by onnxruntime."""
    model = random_model()
    model.class_names = ("cat", "dog", "crane", "crane", "école")
    path = export_onnx(model, tmp_path / "model.onnx")
    expected = {
        "class_names": list(model.class_names),
        "image_size": [32, 32],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    from_onnx = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    from_onnxruntime = session.get_modelmeta().custom_metadata_map
    for metadata in (from_onnx, from_onnxruntime):
        assert {key: json.loads(metadata[key]) for key in expected} == expected
        assert metadata["interpolation"] == "bilinear"


def test_no_class_names_no_metadata_entry(tmp_path: Path) -> None:
    path = export_onnx(random_model(), tmp_path / "model.onnx", batch_size=3)
    metadata = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    assert "class_names" not in metadata and json.loads(metadata["image_size"]) == [32, 32]


def test_command_line_at_another_resolution(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Google's fixture at 96 px (position embeddings resized), with a fixed batch of 2."""
    path = tmp_path / "fixture.onnx"
    checkpoint = OFFICIAL_FIXTURE / "params.npz"
    code = main(["export-onnx", str(checkpoint), str(path), "--img-size", "96", "--batch", "2"])
    assert code == 0
    captured = capsys.readouterr()
    assert "images (2, 3, 96, 96)" in captured.out
    assert f"exporting {checkpoint} to ONNX (this takes a few seconds)" in captured.err
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 96, 96]
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(2)) * 2 - 1
    model = vitkit.load_model(checkpoint, img_size=96)
    assert compare(model, path, images, "ONNX Google fixture at 96 px") <= TOLERANCE


def test_command_line_default_is_a_dynamic_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fixture.onnx"
    assert main(["export-onnx", str(OFFICIAL_FIXTURE / "params.npz"), str(path)]) == 0
    assert "images (batch, 3, 64, 64)" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"


def test_a_name_without_onnx_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"\.onnx name"):
        export_onnx(random_model(), tmp_path / "model.bin")
    assert list(tmp_path.iterdir()) == []
