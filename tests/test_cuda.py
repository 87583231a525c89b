"""On a CUDA GPU: the model, the batched augmentation, compile and whole training runs in each
precision agree with the CPU or run through. Skipped without a GPU (CI has none); run by
benchmarks/gpu_check.sh on a GPU machine."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.data.augment import AugmentConfig, TrainAugment
from vitkit.training.trainer import train

from helpers import tiny

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("cache_in_tmp"),
]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_float32():
    """fp32 matmuls in fp32, not TF32, while a test compares with the CPU."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double().cpu() - expected.double()).norm() / expected.double().norm()).item()


@pytest.mark.parametrize("name", ["ViT-S/16", "R26+ViT-S/32"])
def test_the_model_on_the_gpu_computes_what_it_computes_on_the_cpu(name: str) -> None:
    torch.manual_seed(0)
    model = vitkit.create_model(name, img_size=64, num_classes=10).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head would compare zeros
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        gpu = model.to(CUDA)
        got = gpu(images.to(CUDA))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got_bf16 = gpu(images.to(CUDA))
    assert _relative_error(got, expected) < 1e-4
    assert _relative_error(got_bf16.float(), expected) < 3e-2  # bf16 operands: 1e-3 .. 1e-2


def test_augmentation_on_the_gpu_draws_what_it_draws_on_the_cpu() -> None:
    """The draws are keyed, not taken from a device's generator: the same crops, flips and
    mixing on either device, up to the sampler's float arithmetic."""
    augment = TrainAugment(
        AugmentConfig(resolution=(32, 32), num_classes=10, mixup_alpha=0.8, cutmix_alpha=1.0)
    )
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8, generator=generator)
    labels = torch.arange(16) % 10
    for step in range(4):
        cpu_inputs, cpu_targets = augment(images, labels, key=(1, step))
        gpu_inputs, gpu_targets = augment(images.to(CUDA), labels.to(CUDA), key=(1, step))
        assert (gpu_inputs.cpu() - cpu_inputs).abs().max() < 1e-3
        assert (gpu_targets.cpu() - cpu_targets).abs().max() < 1e-6


def test_compiled_model_on_the_gpu_matches_eager() -> None:
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-S/16", img_size=64, num_classes=10).to(CUDA).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)
    images = torch.randn(8, 3, 64, 64, device=CUDA)
    with torch.no_grad():
        expected = model(images)
        model.compile()
        got = model(images)
    assert _relative_error(got, expected.cpu()) < 1e-4


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_training_run_on_the_gpu_finishes_and_resumes(
    precision: str, image_tree: Path, tmp_path: Path
) -> None:
    """A whole tiny run on the GPU in each precision (fp16 with its loss scaler), then the same
    command with more steps resumes it from its last checkpoint."""
    config = tiny(image_tree, device="cuda", precision=precision, steps=6)
    summary = train(config, tmp_path / "run")
    assert summary.complete and summary.steps == 6 and 0 <= summary.top1 <= 1
    assert math.isfinite(summary.seconds)
    longer = dataclasses.replace(config, steps=8)
    assert train(longer, tmp_path / "run", force=True).steps == 8
    model = vitkit.load_model(tmp_path / "run")
    assert all(torch.isfinite(value).all() for value in model.state_dict().values())
