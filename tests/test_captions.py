"""The figures' captions state this model's numbers: each checked against numpy / scipy on the
figure's data, and on models built to show a known pattern (uniform attention, smooth position
embeddings)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

import vitkit
from vitkit.analysis.attention import mean_attention_distance
from vitkit.analysis.captions import (
    attention_distance_caption,
    embedding_filters_caption,
    position_similarity_caption,
    rollout_caption,
)
from vitkit.analysis.embeddings import position_similarity
from vitkit.models.pos_embed import sincos_2d


def numbers(text: str) -> list[float]:
    return [float(value) for value in re.findall(r"-?\d+(?:\.\d+)?", text)]


def uniform_distance(grid: tuple[int, int], pixels: int) -> float:
    centres = np.array([(row, column) for row in range(grid[0]) for column in range(grid[1])])
    return float(cdist(centres * pixels, centres * pixels).mean())


def test_attention_distance_caption_states_spans_local_heads_and_trend() -> None:
    grid, pixels = (4, 4), 8
    uniform = uniform_distance(grid, pixels)  # 13.9 px for a 4x4 grid of 8 px tokens
    distance = torch.tensor(
        [[2.0, 3.5, 12.0, 13.0], [9.0, 10.0, 11.0, 12.0], [13.0, 14.0, 14.5, 15.0]]
    )
    caption = attention_distance_caption(distance, grid, pixels)
    assert "3 blocks of 4 heads, 8 px per token" in caption
    assert "block 1's heads span 2.0-13.0 px" in caption
    local = int((distance[0].numpy() < uniform / 2).sum())  # 2 heads
    assert f"{local} of 4 are local" in caption and local == 2
    assert f"{uniform:.1f} px that uniform attention" in caption
    assert "block 3's span 13.0-15.0 px" in caption
    assert "grows with depth, from 7.6 px in block 1 to 14.1 px in block 3" in caption
    level = attention_distance_caption(torch.full((2, 4), 14.0), grid, pixels)
    assert "stays about level" in level and "0 of 4 are local" in level
    assert "shrinks with depth" in attention_distance_caption(distance.flip(0), grid, pixels)
    assert "less pronounced in hybrids" in caption  # then the paper's finding


def test_a_model_with_uniform_attention_has_no_local_head() -> None:
    """Zero query and key weights make every attention row uniform: the figure's distances are
    then the uniform distance, and the caption counts no local head."""
    model = vitkit.create_model("ViT-Test/8", img_size=32).eval()
    with torch.no_grad():
        for block in model.blocks:
            width = block.attn.qkv.weight.shape[1]
            block.attn.qkv.weight[: 2 * width] = 0
            block.attn.qkv.bias[: 2 * width] = 0
        weights = model.forward_attention(torch.randn(2, 3, 32, 32))
    config = model.config
    distance = mean_attention_distance(weights, config.grid_size, config.total_stride, 1)
    uniform = uniform_distance(config.grid_size, config.total_stride)
    np.testing.assert_allclose(distance.numpy(), uniform, rtol=1e-5)
    caption = attention_distance_caption(distance, config.grid_size, config.total_stride)
    assert "0 of" in caption and "stays about level" in caption


def reference_similarity_facts(embeddings: np.ndarray, grid: tuple[int, int]) -> tuple:
    """(share whose most similar other patch is adjacent, mean in row/column, mean elsewhere)."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similar = unit @ unit.T
    count = len(unit)
    rows, columns = np.divmod(np.arange(count), grid[1])
    np.fill_diagonal(similar, -np.inf)
    nearest = similar.argmax(axis=1)
    adjacent = (np.abs(rows[nearest] - rows) <= 1) & (np.abs(columns[nearest] - columns) <= 1)
    np.fill_diagonal(similar, np.nan)
    line = (rows[:, None] == rows[None, :]) | (columns[:, None] == columns[None, :])
    np.fill_diagonal(line, False)
    elsewhere = ~line
    np.fill_diagonal(elsewhere, False)
    return adjacent.mean(), np.nanmean(similar[line]), np.nanmean(similar[elsewhere])


@pytest.mark.parametrize("kind", ["sincos", "random"])
def test_position_similarity_caption_matches_numpy(kind: str) -> None:
    grid = (6, 5)
    if kind == "sincos":  # smooth in both directions: neighbours are most alike
        embeddings = sincos_2d(grid, 64)[0].double().numpy()
    else:
        embeddings = np.random.default_rng(0).normal(size=(30, 64))
    similarity = position_similarity(torch.from_numpy(embeddings)[None], grid, 0)
    caption = position_similarity_caption(similarity)
    adjacent, in_line, elsewhere = reference_similarity_facts(embeddings, grid)
    assert f"for {adjacent:.0%} of the patches" in caption
    assert f"average {in_line:.2f} against {elsewhere:.2f}" in caption
    if kind == "sincos":
        assert adjacent == 1.0 and in_line > elsewhere
    assert "row-column structure appears" in caption


def test_embedding_filters_caption_states_numpys_explained_variance() -> None:
    filters = torch.randn(40, 3, 4, 4) * torch.linspace(3, 0.1, 48).reshape(1, 3, 4, 4)
    caption = embedding_filters_caption(filters, 28)
    flat = filters.double().flatten(1).numpy()
    singular = np.linalg.svd(flat - flat.mean(axis=0), compute_uv=False)
    share = singular**2 / (singular**2).sum()
    assert f"carry {share[:28].sum():.0%} of the filters' variance" in caption
    assert f"the first alone {share[0]:.0%}" in caption
    assert "40 filters that first see pixels (4x4 px)" in caption


def test_rollout_caption_states_the_concentration() -> None:
    even = rollout_caption(torch.full((3, 16), 1 / 16))
    assert "gets 25% of the attention" in even
    peaked = torch.zeros(2, 16)
    peaked[:, :4] = 0.25
    assert "gets 100% of the attention" in rollout_caption(peaked)
    rng = np.random.default_rng(1)
    maps = rng.random((5, 64))
    top = np.sort(maps / maps.sum(axis=1, keepdims=True), axis=1)[:, ::-1][:, :16].sum(axis=1)
    assert f"gets {top.mean():.0%} of the attention" in rollout_caption(torch.from_numpy(maps))
