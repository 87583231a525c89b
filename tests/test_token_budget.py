"""Sizing images to a token budget at their own aspect ratio: the sizes against timm's NaFlex
`get_image_size_for_seq`, the resized input against torchvision's resize and normalise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.data.naflex_transforms import get_image_size_for_seq
from torchvision.transforms.v2 import functional as TF

from vitkit.data.token_budget import budget_input, size_for_token_budget
from vitkit.models.preprocessing import Preprocessing


@settings(max_examples=1000, deadline=None)
@given(
    height=st.integers(1, 3000),
    width=st.integers(1, 3000),
    patch=st.sampled_from([2, 4, 8, 14, 16, 32]),
    budget=st.integers(1, 2048),
)
def test_sizes_equal_timms_naflex_sizes(height: int, width: int, patch: int, budget: int) -> None:
    # timm bisects on the scale factor; its default tolerance (1e-5) misses the rare feasible
    # intervals narrower than that (e.g. 1310x1269, patch 2, 1046 tokens: 33 x 31 patches fit
    # only for factors in a 2e-6 wide interval), so the reference runs with a finer one.
    try:
        ratio, expected = get_image_size_for_seq((height, width), patch, budget, eps=1e-12)
    except ValueError:  # timm's bisection spans scale factors 1e-6..100 only: it gave up
        return
    if ratio > 99.99:  # ...or it stopped at its upper end, short of the budget (a 1 px image)
        return
    got = size_for_token_budget(height, width, patch_size=patch, max_tokens=budget)
    assert got == tuple(expected)


@pytest.mark.parametrize(
    "height, width, patch, budget, expected",
    [
        (32, 32, 4, 64, (32, 32)),  # CIFAR at the demo's patches: its own size
        (32, 32, 4, 16, (16, 16)),
        (100, 200, 10, 8, (20, 40)),  # 2 x 4 patches keep 1:2
        (1, 5000, 16, 4, (16, 64)),  # a one-pixel line: one patch high, the rest along it
        (224, 224, 16, 196, (224, 224)),
        (1310, 1269, 2, 1046, (66, 62)),  # 33 x 31 patches: timm's default tolerance finds 32 x 31
    ],
)
def test_sizes_worked_by_hand(
    height: int, width: int, patch: int, budget: int, expected: tuple[int, int]
) -> None:
    assert size_for_token_budget(height, width, patch_size=patch, max_tokens=budget) == expected


@pytest.mark.parametrize("field", ["height", "width", "patch_size", "max_tokens"])
@pytest.mark.parametrize("value", [0, -3, 2.0, True])
def test_refuses_what_is_no_positive_integer(field: str, value: object) -> None:
    arguments: dict[str, object] = {"height": 30, "width": 40, "patch_size": 8, "max_tokens": 9}
    arguments[field] = value
    with pytest.raises(ValueError, match=f"{field}="):
        size_for_token_budget(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_budget_input_is_torchvisions_resize_and_normalise(interpolation: str) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)  # (H, W, 3), wider than high
    record = Preprocessing(
        resolution=(64, 64), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), interpolation=interpolation
    )
    got = budget_input(pixels, record, patch_size=8, max_tokens=20)
    # 45x70 in at most 20 patches of 8: the factor 40/70 makes it 25.7x40 px, whose sides round
    # up to 4 x 5 patches = (32, 40).
    assert got.shape == (3, 32, 40)
    image = torch.from_numpy(pixels).permute(2, 0, 1).float()
    mode = TF.InterpolationMode(interpolation)
    expected = TF.normalize(
        TF.resize(image, [32, 40], interpolation=mode, antialias=True) / 255,
        mean=list(record.mean),
        std=list(record.std),
    )
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    from_tensor = budget_input(torch.from_numpy(pixels).permute(2, 0, 1), record, patch_size=8,
                               max_tokens=20)  # fmt: skip
    torch.testing.assert_close(from_tensor, got, atol=0, rtol=0)
