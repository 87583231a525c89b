"""The one position-embedding resize, used when loading weights and for dynamic input sizes.

The paper fine-tunes at a higher resolution than it pre-trains at, keeping the patch size, so the
patch grid grows and the learned 1D position embeddings must be resized "by 2D interpolation,
according to their location in the original image" (section 3.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitkit.models.config import PosEmbedInterpolation


def resize_pos_embed(
    pos_embed: torch.Tensor,
    *,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: PosEmbedInterpolation = "bilinear",
) -> torch.Tensor:
    """Resize `pos_embed` (1, prefix + old_h*old_w, D) to (1, prefix + new_h*new_w, D).

    The prefix ([class] token) rows are kept unchanged. The patch rows, row-major over the grid,
    are resized as an image with D channels:

    - "bilinear" (default) reproduces Google's `vit_jax.checkpoint.interpolate_posembed`, which
      calls `scipy.ndimage.zoom(order=1)`: output index o samples input coordinate
      o * (old - 1) / (new - 1), i.e. bilinear with align_corners=True and no antialiasing.
    - "bicubic" follows timm's convention, for loading and dynamic sizes alike (align_corners=False,
      antialias=True, which in PyTorch also means the Keys cubic with a=-0.5, as in PIL).

    `old_grid` defaults to a square grid; non-square grids must be given. Differentiable, so it
    can run inside the forward pass of a dynamic-size model.
    """
    num_patches = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = round(num_patches**0.5)
        if side * side != num_patches:
            raise ValueError(
                f"Cannot infer the position-embedding grid: {num_patches} patch positions is not a "
                "square number; pass old_grid=(rows, cols)."
            )
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != num_patches:
        raise ValueError(
            f"Position embeddings have {num_patches} patch positions, which does not match the "
            f"grid {old_grid[0]}x{old_grid[1]} = {old_grid[0] * old_grid[1]}."
        )
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed

    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    # (1, old_h*old_w, D) -> (1, D, old_h, old_w): interpolate over the spatial grid.
    grid = patches.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    # float64 keeps the result within float32 rounding of scipy's (which computes in double);
    # the tensor is small, so this costs nothing. MPS has no float64.
    compute_dtype = torch.float32 if grid.device.type == "mps" else torch.float64
    official = mode == "bilinear"
    grid = F.interpolate(
        grid.to(compute_dtype),
        size=tuple(new_grid),
        mode=mode,
        align_corners=official,
        antialias=not official,
    )
    # (1, D, new_h, new_w) -> (1, new_h*new_w, D)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([prefix, patches.to(pos_embed.dtype)], dim=1)
