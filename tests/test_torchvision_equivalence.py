"""torchvision state dicts, checked against torchvision itself: small
`torchvision.models.vision_transformer.VisionTransformer`s with every parameter randomised, saved
with `torch.save(state_dict)`, read by `vitkit.load_model`, must give torchvision's logits in its
numerics (exact GELU, LayerNorm eps 1e-6, the [class] token's row in the position embedding)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

import vitkit
from vitkit import CheckpointError
from vitkit.weights.load import detect_format

from helpers import compare_outputs as compare
from helpers import randomise_

TOLERANCE = 1e-5
SMALL = dict(
    image_size=32,
    patch_size=8,
    num_layers=2,
    num_heads=4,
    hidden_dim=64,
    mlp_dim=128,
    num_classes=5,
)


def make_torchvision(seed: int = 0, **overrides: object) -> nn.Module:
    return randomise_(TorchvisionViT(**{**SMALL, **overrides}), seed).eval()


def images(size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))


CASES: dict[str, dict] = {
    "small": {},
    "representation": dict(representation_size=48),
    "image-48-patch-16": dict(image_size=48, patch_size=16, num_classes=3),
}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_torchvision(tmp_path: Path, case: str, suffix: str) -> None:
    reference = make_torchvision(**CASES[case])
    path = tmp_path / f"vit{suffix}"
    if suffix == ".pth":
        torch.save(reference.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    assert detect_format(path) == "torchvision"
    model = vitkit.load_model(path, num_heads=4)
    assert not model.training
    config = model.config
    assert (config.width, config.depth, config.num_heads) == (64, 2, 4)
    assert config.img_size == (reference.image_size,) * 2
    assert config.patch_size == reference.patch_size
    assert config.representation_size == reference.representation_size
    assert (config.gelu, config.layer_norm_eps, config.classifier) == ("exact", 1e-6, "token")
    assert model.preprocessing == vitkit.Preprocessing.imagenet(config.img_size)
    x = images(reference.image_size)
    assert compare(reference, model, x, f"torchvision {case} {suffix}") <= TOLERANCE


def test_paper_width_needs_no_num_heads(tmp_path: Path) -> None:
    """ViT-Ti's width (192) tells the heads (3), as for torchvision's own vit_b_16 (768 -> 12)."""
    reference = make_torchvision(seed=2, hidden_dim=192, num_heads=3, mlp_dim=256)
    torch.save(reference.state_dict(), tmp_path / "tiny.pth")
    model = vitkit.load_model(tmp_path / "tiny.pth")
    assert model.config.num_heads == 3
    assert compare(reference, model, images(32), "torchvision width 192") <= TOLERANCE


def test_comparison_sees_the_head_split(tmp_path: Path) -> None:
    """Control: with 2 heads instead of 4 the logits differ, so the comparison could fail."""
    reference = make_torchvision(seed=3)
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="num_heads"):
        vitkit.load_model(tmp_path / "vit.pth")
    wrong = compare(
        reference, vitkit.load_model(tmp_path / "vit.pth", num_heads=2), images(32), "2"
    )
    assert wrong > 1e-3


def test_legacy_mlp_names_and_wrappers(tmp_path: Path) -> None:
    """Files from torchvision < 0.13 name the MLP layers linear_1/linear_2; training checkpoints
    nest the weights under "model" and DDP prefixes "module."."""
    reference = make_torchvision(seed=4)
    state = {}
    for key, value in reference.state_dict().items():
        key = key.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2.")
        state["module." + key] = value
    assert any("linear_1" in key for key in state)
    torch.save({"model": state, "epoch": 7}, tmp_path / "checkpoint.pth")
    assert detect_format(tmp_path / "checkpoint.pth") == "torchvision"
    model = vitkit.load_model(tmp_path / "checkpoint.pth", num_heads=4)
    assert compare(reference, model, images(32), "torchvision legacy names") <= TOLERANCE


def test_format_can_be_forced_and_timm_is_still_timm(tmp_path: Path) -> None:
    reference = make_torchvision(seed=5)
    path = tmp_path / "weights.ckpt"  # a suffix that tells nothing
    torch.save(reference.state_dict(), path)
    with pytest.raises(CheckpointError, match="pass format="):
        vitkit.load_model(path)
    model = vitkit.load_model(path, format="torchvision", num_heads=4)
    assert compare(reference, model, images(32), "torchvision format=") <= TOLERANCE

    timm_like = {"patch_embed.proj.weight": torch.zeros(64, 3, 8, 8), "pos_embed": torch.zeros(1)}
    torch.save(timm_like, tmp_path / "timm.pth")
    assert detect_format(tmp_path / "timm.pth") == "timm"


def test_conv_stem_is_refused(tmp_path: Path) -> None:
    from torchvision.models.vision_transformer import ConvStemConfig

    stem = [ConvStemConfig(out_channels=32, kernel_size=3, stride=8)]
    reference = TorchvisionViT(**SMALL, conv_stem_configs=stem)
    torch.save(reference.state_dict(), tmp_path / "stem.pth")
    with pytest.raises(CheckpointError, match="convolutional stem") as error:
        vitkit.load_model(tmp_path / "stem.pth", format="torchvision", num_heads=4)
    assert "stem.pth" in str(error.value)
