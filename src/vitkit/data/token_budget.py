"""Images at their own aspect ratio, sized to a token budget (NaViT, Dehghani et al. 2023).

The paper resizes every image to one square resolution, which squeezes a wide photo and spends
the same tokens on a thumbnail as on a poster. NaViT instead scales each image, aspect ratio kept,
to the largest size whose patch grid holds at most `max_tokens` patches, and packs the results
(`vitkit.models.packing.forward_packed`). Sides are rounded up to whole patches (at least one),
as timm's NaFlex `get_image_size_for_seq` rounds them; timm bisects for the scale factor and
this solves for it exactly, so both give the same sizes to timm's tolerance.
"""

from __future__ import annotations

import numpy as np
import torch

from vitkit.data.transforms import normalize, resize
from vitkit.models.preprocessing import Preprocessing

# The largest budget taken: a 128x128 patch grid (ViT-B/16 at 2048 px). A budget is a size the
# process allocates for every image, so a mistyped one must fail here, not in the allocator.
MOST_TOKENS = 16_384


def size_for_token_budget(
    height: int, width: int, *, patch_size: int, max_tokens: int
) -> tuple[int, int]:
    """(H, W), multiples of `patch_size`: the image scaled by the largest factor r for which
    ceil(height r / patch) * ceil(width r / patch) <= max_tokens.

    That count only grows with r and jumps where a side crosses a whole number k of patches, so
    the largest such r is a crossing r = k * patch / side of one of the two sides. For each side
    the largest k that fits is found by bisection, in integers (no float rounding), and the
    larger of the two factors wins.
    """
    for name, value in (("height", height), ("width", width), ("patch_size", patch_size),
                        ("max_tokens", max_tokens)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"size_for_token_budget: {name}={value!r} is not a positive integer")
    if max_tokens > MOST_TOKENS:
        raise ValueError(f"size_for_token_budget: max_tokens={max_tokens} is over {MOST_TOKENS}")

    def other_side(k: int, side: int, other: int) -> int:
        """Patches along `other` when `side` spans exactly k patches (at least one)."""
        return max(1, -(-other * k // side))

    def largest_fit(side: int, other: int) -> int:
        """The largest k in [0, max_tokens] with k * other_side(k) <= max_tokens (0: none)."""
        low, high = 0, max_tokens
        while low < high:
            middle = (low + high + 1) // 2
            if middle * other_side(middle, side, other) <= max_tokens:
                low = middle
            else:
                high = middle - 1
        return low

    rows = largest_fit(height, width)  # the factor rows * patch / height
    columns = largest_fit(width, height)  # the factor columns * patch / width
    if rows * width >= columns * height:  # compare the two factors without dividing
        grid = (rows, other_side(rows, height, width))
    else:
        grid = (other_side(columns, width, height), columns)
    return grid[0] * patch_size, grid[1] * patch_size


def budget_input(
    image: torch.Tensor | np.ndarray,
    preprocessing: Preprocessing,
    *,
    patch_size: int,
    max_tokens: int,
) -> torch.Tensor:
    """One image, uint8 (3, H, W) tensor or (H, W, 3) array, -> the model's normalised float
    input (3, h, w) at the size `size_for_token_budget` gives, resized with the record's
    interpolation (antialiased) and normalised with its mean and std; `patch_size` is the
    pixels per token (the ResNet's stride included for a hybrid)."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a writable copy
    height, width = image.shape[-2:]
    size = size_for_token_budget(
        int(height), int(width), patch_size=patch_size, max_tokens=max_tokens
    )
    resized = resize(image.float().unsqueeze(0), size, preprocessing.interpolation)
    return normalize(resized, preprocessing.mean, preprocessing.std)[0]
