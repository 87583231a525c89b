"""Packed sequences of images of different sizes (NaViT): equal to one forward pass per image,
however the images are split into sequences; token dropping; what packing refuses."""

from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit import VisionTransformer
from vitkit.models.packing import forward_packed

from helpers import random_test_vit

SIZES = [(32, 32), (16, 48), (40, 24), (8, 8), (24, 64)]  # multiples of 8, several aspect ratios


def random_model(**fields: object) -> VisionTransformer:
    """A ViT-Test/8 that takes any size (dynamic_img_size), every parameter random."""
    return random_test_vit(dynamic_img_size=True, **fields)


def mixed_images(sizes: list[tuple[int, int]] = SIZES) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(3, height, width, generator=generator) for height, width in sizes]


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"classifier": "gap", "class_token": False},
        {"reg_tokens": 2, "no_embed_class": True},
        {"pos_embed_type": "learned_2d", "classifier": "gap", "fc_norm": True},
        {"pos_embed_type": "sincos_2d", "representation_size": 32},
        {"pos_embed_type": "none"},
    ],
)
@pytest.mark.parametrize("max_tokens", [None, 40, 100])
def test_packed_logits_equal_one_forward_per_image(
    fields: dict[str, object], max_tokens: int | None
) -> None:
    model = random_model(**fields)
    images = mixed_images()
    with torch.no_grad():
        expected = torch.cat([model(image.unsqueeze(0)) for image in images])
        packed = forward_packed(model, images, max_tokens=max_tokens)
        features = forward_packed(model, images, max_tokens=max_tokens, pre_logits=True)
        one_by_one = torch.cat(
            [model.forward_head(model.forward_features(x[None]), pre_logits=True) for x in images]
        )
    assert packed.shape == (len(images), 10) and expected.std() > 0.1
    torch.testing.assert_close(packed, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features, one_by_one, atol=1e-5, rtol=1e-5)


def test_a_hybrid_packs_too() -> None:
    model = vitkit.create_model("R+ViT-CIFAR/4", dynamic_img_size=True).eval()
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.normal_()
        images = mixed_images([(32, 32), (16, 48), (64, 16)])
        expected = torch.cat([model(image.unsqueeze(0)) for image in images])
        torch.testing.assert_close(forward_packed(model, images), expected, atol=1e-5, rtol=1e-5)


def test_token_dropping_keeps_a_share_of_each_image_and_trains() -> None:
    model = random_model(classifier="gap", class_token=False).train()
    images = mixed_images()
    seen: list[int] = []
    original = model.blocks[0].forward

    def counting(tokens: torch.Tensor, positions: object, mask: torch.Tensor) -> torch.Tensor:
        seen.append(int(mask[0, 0].diagonal().sum()))  # every real or padding token
        return original(tokens, positions, mask)

    model.blocks[0].forward = counting  # type: ignore[method-assign]
    generator = torch.Generator().manual_seed(0)
    logits = forward_packed(model, images, keep=0.5, generator=generator)
    patches = [height * width // 64 for height, width in SIZES]
    assert seen == [sum(max(1, count // 2) for count in patches)]
    logits.sum().backward()
    assert model.patch_embed.proj.weight.grad is not None
    with torch.no_grad():
        full = forward_packed(model.eval(), images)
    assert not torch.allclose(logits.detach(), full, atol=1e-3)


def test_what_packing_refuses() -> None:
    model = random_model()
    with pytest.raises(ValueError, match="no images"):
        forward_packed(model, [])
    with pytest.raises(ValueError, match=r"image 1 has shape \(1, 3, 8, 8\)"):
        forward_packed(model, [torch.zeros(3, 8, 8), torch.zeros(1, 3, 8, 8)])
    with pytest.raises(ValueError, match="keep=0"):
        forward_packed(model, mixed_images(), keep=0)
    with pytest.raises(ValueError, match="image 0 has 17 tokens, more than max_tokens=10"):
        forward_packed(model, mixed_images(), max_tokens=10)
    with pytest.raises(ValueError, match="relative positions"):
        forward_packed(random_model(pos_embed_type="relative"), mixed_images())
    with pytest.raises(ValueError, match="drop_path=0"):
        forward_packed(random_model(drop_path=0.1).train(), mixed_images())
    fixed = vitkit.create_model("ViT-Test/8").eval()
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        forward_packed(fixed, mixed_images())
