"""The one position-embedding resize, against scipy.ndimage.zoom (what Google's code calls),
Google's own resized embeddings, and timm's bicubic resampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch
from timm.layers import resample_abs_pos_embed

from vitkit import resize_pos_embed


def _google_resize(posemb: np.ndarray, old: tuple[int, int], new: tuple[int, int], prefix: int):
    """vit_jax's recipe: keep the prefix rows, zoom the grid with scipy (order=1)."""
    grid = posemb[0, prefix:].reshape(old[0], old[1], -1)
    zoom = (new[0] / old[0], new[1] / old[1], 1)
    grid = scipy.ndimage.zoom(grid.astype(np.float64), zoom, order=1)
    return np.concatenate([posemb[:, :prefix], grid.reshape(1, new[0] * new[1], -1)], axis=1)


@pytest.mark.parametrize(
    "old,new,prefix",
    [((8, 8), (16, 16), 0), ((7, 7), (12, 12), 1), ((14, 14), (24, 24), 1),
     ((4, 6), (10, 9), 1), ((12, 12), (5, 5), 1), ((3, 5), (3, 5), 1)],
)  # fmt: skip
def test_bilinear_matches_scipy_zoom(old, new, prefix) -> None:
    rng = np.random.default_rng(0)
    posemb = rng.normal(size=(1, prefix + old[0] * old[1], 32)).astype(np.float32)
    got = resize_pos_embed(
        torch.from_numpy(posemb), new_grid=new, old_grid=old, num_prefix_tokens=prefix
    )
    expected = _google_resize(posemb, old, new, prefix)
    assert got.shape == expected.shape
    assert np.abs(got.numpy() - expected).max() <= 1e-6
    assert torch.equal(got[:, :prefix], torch.from_numpy(posemb[:, :prefix]))  # [class] kept


def test_matches_google_resized_fixture(official_fixture: Path) -> None:
    posemb = np.load(official_fixture / "params.npz")["Transformer/posembed_input/pos_embedding"]
    got = resize_pos_embed(torch.from_numpy(posemb), new_grid=(16, 16), num_prefix_tokens=0)
    expected = np.load(official_fixture / "posemb_resized_128.npy")
    assert np.abs(got.numpy() - expected).max() <= 1e-6


@pytest.mark.parametrize("old,new", [((7, 7), (12, 12)), ((4, 6), (8, 10)), ((12, 12), (5, 7))])
def test_bicubic_matches_timm(old, new) -> None:
    posemb = torch.randn(1, 1 + old[0] * old[1], 16)
    got = resize_pos_embed(posemb, new_grid=new, old_grid=old, mode="bicubic")
    expected = resample_abs_pos_embed(
        posemb, list(new), list(old), num_prefix_tokens=1, interpolation="bicubic",
    )  # fmt: skip
    # timm interpolates in float32, vitkit in float64: they differ by float32 rounding (~2e-6).
    assert (got - expected).abs().max() <= 1e-5


def test_gradients_flow_through_resize() -> None:
    posemb = torch.randn(1, 17, 8, requires_grad=True)
    resize_pos_embed(posemb, new_grid=(6, 6)).sum().backward()
    assert posemb.grad is not None and posemb.grad.abs().sum() > 0


def test_grid_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="not a square number"):
        resize_pos_embed(torch.zeros(1, 1 + 12, 4), new_grid=(4, 4))
    with pytest.raises(ValueError, match="does not match the grid 3x3"):
        resize_pos_embed(torch.zeros(1, 1 + 12, 4), new_grid=(4, 4), old_grid=(3, 3))
