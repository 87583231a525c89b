"""The inspection figures' arithmetic, checked against values computed by hand or by another
implementation: attention rollout, mean attention distance, position-embedding similarity, the
embedding filters' principal components, and the attention weights the model exposes (against
transformers' own `output_attentions`)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hf_equivalence import hf_config  # noqa: I001 (a sibling test module)
from transformers import ViTModel

import vitkit
from vitkit.analysis.attention import (
    attention_rollout,
    mean_attention_distance,
    patch_distances,
    rollout_matrix,
)
from vitkit.analysis.embeddings import embedding_filter_components, position_similarity
from vitkit.analysis.report import write_figures
from vitkit.models import create_model

from helpers import randomise_


def random_attention(batch: int, heads: int, tokens: int, seed: int = 0) -> torch.Tensor:
    logits = torch.randn(
        batch, heads, tokens, tokens, generator=torch.Generator().manual_seed(seed)
    )
    return logits.softmax(dim=-1)


def test_rollout_of_identity_attention_is_the_identity() -> None:
    identity = torch.eye(5).expand(2, 3, 5, 5)
    rollout = rollout_matrix([identity, identity, identity])
    assert torch.equal(rollout, torch.eye(5).expand(2, 5, 5))
    # From the [class] token (token 0), identity attention reaches no patch at all.
    assert torch.equal(attention_rollout([identity], 1, "token"), torch.zeros(2, 4))


def test_rollout_is_the_product_of_residual_averaged_attention() -> None:
    layers = [random_attention(1, 4, 5, seed) for seed in range(3)]
    expected = np.eye(5)
    for layer in layers:  # numpy, written out: 0.5 * mean-over-heads + 0.5 * I, later layers left
        mixed = 0.5 * layer[0].numpy().astype(np.float64).mean(axis=0) + 0.5 * np.eye(5)
        expected = mixed @ expected
    got = rollout_matrix(layers)[0].double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    from_class_token = attention_rollout(layers, 1, "token")[0].double().numpy()
    np.testing.assert_allclose(from_class_token, expected[0, 1:], atol=1e-6)
    pooled = attention_rollout(layers, 0, "gap")[0].double().numpy()
    np.testing.assert_allclose(pooled, expected.mean(axis=0), atol=1e-6)


def test_mean_attention_distance_of_uniform_attention_by_hand() -> None:
    # A 2x2 grid of 16-px patches: from any patch the others lie 16, 16 and 16*sqrt(2) px away
    # (and itself at 0); uniform attention averages them: 16 * (2 + sqrt(2)) / 4.
    uniform = torch.full((3, 2, 4, 4), 0.25)
    expected = 16 * (2 + math.sqrt(2)) / 4
    distance = mean_attention_distance([uniform, uniform], (2, 2), 16, num_prefix_tokens=0)
    assert distance.shape == (2, 2)
    torch.testing.assert_close(distance, torch.full((2, 2), expected))
    # With a [class] token taking half of every row: renormalised over the patches, the same.
    with_class = torch.cat([torch.full((3, 2, 5, 1), 0.5), torch.full((3, 2, 5, 4), 0.125)], -1)
    distance = mean_attention_distance([with_class], (2, 2), 16, num_prefix_tokens=1)
    torch.testing.assert_close(distance, torch.full((1, 2), expected))
    # Attending only to itself: distance 0.
    own = torch.eye(4).expand(1, 2, 4, 4)
    assert mean_attention_distance([own], (2, 2), 16, 0).abs().max() == 0


def test_patch_distances_on_a_non_square_grid() -> None:
    distances = patch_distances((2, 3), 8)
    assert distances.shape == (6, 6)
    assert distances[0, 5].item() == pytest.approx(8 * math.hypot(1, 2))  # (0,0) to (1,2)


def test_position_similarity_of_a_known_pattern() -> None:
    # Embedding = one-hot of the patch's row: same row -> similarity 1, other rows -> 0.
    grid = (3, 4)
    rows = torch.arange(grid[0]).repeat_interleave(grid[1])
    pos_embed = torch.cat([torch.randn(1, 8), torch.eye(8)[rows]]).unsqueeze(0)  # class token
    similarity = position_similarity(pos_embed, grid, num_prefix_tokens=1)
    assert similarity.shape == (3, 4, 3, 4)
    expected = (rows[:, None] == rows[None, :]).float().reshape(3, 4, 3, 4)
    torch.testing.assert_close(similarity, expected)


def test_filter_components_recover_the_direction_of_variation() -> None:
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(3, 4, 4, generator=generator)
    direction /= direction.norm()
    amounts = torch.randn(64, generator=generator) * 5
    kernel = 0.3 + amounts[:, None, None, None] * direction  # every filter: base + t * direction
    kernel += 1e-3 * torch.randn(kernel.shape, generator=generator)
    components = embedding_filter_components(kernel, count=3)
    assert components.shape == (3, 3, 4, 4)
    cosine = (components[0].flatten() @ direction.flatten()).abs()
    assert cosine > 0.999


def test_forward_attention_matches_transformers_output_attentions(tmp_path: Path) -> None:
    """The weights vitkit exposes are the ones transformers reports (eager attention), and the
    explicit-attention path gives the same features as the fused forward."""
    reference = randomise_(
        ViTModel(hf_config(attn_implementation="eager"), add_pooling_layer=False)
    ).eval()
    reference.save_pretrained(tmp_path)
    model = vitkit.load_model(tmp_path)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(pixel_values=images, output_attentions=True).attentions
        weights = model.forward_attention(images)
    assert len(weights) == len(expected) == 2
    for got, want in zip(weights, expected):
        assert got.shape == want.shape == (2, 4, 17, 17)
        assert want.std() > 0.01  # far from uniform, or the comparison would prove little
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with torch.no_grad():
        tokens = model.embed(images)
        for block in model.blocks:
            fused = block(tokens)
            tokens, _ = block.forward_with_attention(tokens)
            torch.testing.assert_close(tokens, fused, atol=1e-5, rtol=0)


@pytest.mark.parametrize("stem", ["patches", "resnet-root"])
def test_write_figures_for_a_gap_model_on_a_non_square_grid(tmp_path: Path, stem: str) -> None:
    hybrid = dict(patch_size=1, resnet_layers=(), resnet_width=32) if stem == "resnet-root" else {}
    model = create_model(
        "ViT-Test/8", img_size=(16, 24), num_classes=3, classifier="gap", class_token=False,
        **hybrid,
    ).eval()  # fmt: skip
    images = np.random.default_rng(0).integers(0, 256, (5, 20, 30, 3), dtype=np.uint8)
    figures = write_figures(model, images, tmp_path, shown=3)
    for name in (
        "embedding_filters.png",
        "position_similarity.png",
        "attention_distance.png",
        "attention_rollout.png",
        "attention_heads.png",
        "index.html",
    ):
        assert figures[name].is_file() and figures[name].stat().st_size > 1000, name
    distances = json.loads((tmp_path / "attention_distance.json").read_text())
    assert distances["pixels_per_token"] == (8 if stem == "patches" else 4)
    # Every figure's caption, with this model's numbers, is on the page.
    captions = json.loads((tmp_path / "captions.json").read_text())
    assert set(captions) == set(figures) - {"index.html"}
    page = (tmp_path / "index.html").read_text()
    assert all(html.escape(caption) in page for caption in captions.values())
    layers = np.array(distances["pixels_by_layer_and_head"])
    span = f"block 1's heads span {layers[0].min():.1f}-{layers[0].max():.1f} px"
    assert html.escape(span) in page
