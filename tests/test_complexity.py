"""`count_flops` and `count_params` against independent counts of the real model.

FLOPs are compared with PyTorch's own `torch.utils.flop_counter.FlopCounterMode`. Its registry
covers convolution, the matrix products and the fused CUDA attention kernels (flash, efficient,
cuDNN), but not the fused CPU kernel `_scaled_dot_product_flash_attention_for_cpu`, which
`scaled_dot_product_attention` picks on CPU: counted as is, attention's q @ k^T and
softmax @ v would be missing. Forcing the "math" SDPA backend makes the same attention run as
plain batched matmuls (`aten.bmm`), which the counter does count, so every term is compared.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import vitkit
from vitkit.models.complexity import count_flops, count_params

CASES = [
    ("ViT-Test/8", {}),
    ("ViT-Test/8", {"num_classes": 0}),
    ("ViT-Test/8", {"img_size": (32, 64), "qkv_bias": False}),
    ("ViT-Ti/16", {"img_size": 64}),
    # Google's fixture layout: no [class] token, average pooling, pre-logits layer.
    ("ViT-S/32", {"img_size": 96, "classifier": "gap", "class_token": False,
                  "representation_size": 32}),
    # The position-embedding variants of the paper's Table 8 (and big_vision's sin-cos).
    ("ViT-Test/8", {"pos_embed_type": "learned_2d"}),
    ("ViT-Test/8", {"pos_embed_type": "relative", "img_size": (32, 48)}),
    ("ViT-Test/8", {"pos_embed_type": "none"}),
    ("ViT-Test/8", {"pos_embed_type": "sincos_2d"}),
    # No transformer at all: the data-scale experiment's ResNet with a pooled head.
    ("BiT-R26-CIFAR", {"img_size": 32}),
]  # fmt: skip


def counted_flops(model: vitkit.VisionTransformer) -> int:
    """FLOPs of one forward pass of one image, as FlopCounterMode counts them."""
    images = torch.zeros(1, model.config.in_chans, *model.config.img_size)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    return counter.get_total_flops()


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_counts_match_the_built_model(name: str, overrides: dict) -> None:
    model = vitkit.create_model(name, **overrides).eval()
    assert count_flops(model.config) == counted_flops(model)
    assert count_params(model.config) == sum(p.numel() for p in model.parameters())


def test_vit_b16_at_224(capsys: pytest.CaptureFixture[str]) -> None:
    model = vitkit.create_model("ViT-B/16").eval()
    flops = count_flops(model.config)
    assert flops == counted_flops(model)
    assert count_params(model.config) == sum(p.numel() for p in model.parameters())
    # The figure usually quoted for ViT-B/16 at 224 px is 17.6 G multiply-adds.
    assert flops / 2e9 == pytest.approx(17.6, abs=0.05)
    with capsys.disabled():
        print(f"\nViT-B/16 at 224 px: {flops / 1e9:.2f} GFLOPs ({flops:,} FLOPs) per image")
