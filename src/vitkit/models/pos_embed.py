"""Position information: the one position-embedding resize, used when loading weights and for
dynamic input sizes, and the position variants of the paper's Appendix D.4 (Table 8).

The paper fine-tunes at a higher resolution than it pre-trains at, keeping the patch size, so the
patch grid grows and the learned 1D position embeddings must be resized "by 2D interpolation,
according to their location in the original image" (section 3.2). Every learned position table
of the other variants is resized by the same function, as an image over what it indexes: the
X- and Y-tables of "learned_2d" along their one axis (which equals resizing the 2-D embedding
they make), the relative-bias table of "relative" as an image of 2-D offsets. The fixed sin-cos
embedding is computed for any grid and never resized.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vitkit.models.config import PosEmbedInterpolation

# Entries of a relative-bias table before those of the patch offsets (BEiT's three): a prefix
# token attending to a patch, a patch attending to a prefix token, a prefix token attending to a
# prefix token. The registers share the [class] token's entries.
RELATIVE_PREFIX_ENTRIES = 3


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
    - "bicubic_no_antialias" is transformers' DINOv2, CLIP and SigLIP (align_corners=False, no
      antialiasing, and PyTorch's plain cubic, a=-0.75: the two bicubics differ at any size).

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
        mode="bilinear" if official else "bicubic",
        align_corners=official,
        antialias=mode == "bicubic",
    )
    # (1, D, new_h, new_w) -> (1, new_h*new_w, D)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([prefix, patches.to(pos_embed.dtype)], dim=1)


def sincos_2d(
    grid: tuple[int, int],
    width: int,
    *,
    temperature: float = 10_000.0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """big_vision's fixed 2-D sin-cos position embedding (`posemb_sincos_2d`, after MoCo v3),
    (1, h*w, width) float32, patches row-major: for the patch at row y, column x, with
    omega_k = temperature ** -(k / (width/4 - 1)), k = 0 .. width/4 - 1,
    [sin(x omega), cos(x omega), sin(y omega), cos(y omega)]. width: a multiple of 4, at least 8
    (ViTConfig checks)."""
    height, grid_w = grid
    quarter = width // 4
    omega = temperature ** -(torch.arange(quarter, device=device) / (quarter - 1))
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(grid_w, device=device), indexing="ij"
    )
    x = cols.reshape(-1, 1) * omega  # (h*w, width/4)
    y = rows.reshape(-1, 1) * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).unsqueeze(0)


def grid_pos_embed(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The "learned_2d" embedding (1, h*w, D) of a Y-table `rows` (1, h, D/2) and an X-table
    `cols` (1, w, D/2): the patch at (i, j) gets concat(cols[j], rows[i]), the X-embedding
    first, as the paper's Appendix D.4 describes it."""
    height, grid_w, half = rows.shape[1], cols.shape[1], rows.shape[2]
    x = cols[:, None].expand(1, height, grid_w, half)  # column j's, in every row
    y = rows[:, :, None].expand(1, height, grid_w, half)  # row i's, in every column
    return torch.cat([x, y], dim=-1).reshape(1, height * grid_w, 2 * half)


def resize_axis(
    table: torch.Tensor, *, new_length: int, axis: int, mode: PosEmbedInterpolation
) -> torch.Tensor:
    """A "learned_2d" table (1, n, D/2), over the rows (axis 0) or columns (axis 1) of the grid,
    resized to `new_length` by `resize_pos_embed` as a one-row or one-column image."""
    old, new = [1, 1], [1, 1]
    old[axis], new[axis] = table.shape[1], new_length
    return resize_pos_embed(
        table, new_grid=tuple(new), old_grid=tuple(old), num_prefix_tokens=0, mode=mode
    )


def offset_grid(grid: tuple[int, int]) -> tuple[int, int]:
    """The 2-D offsets between two patches of `grid`: (2h - 1, 2w - 1), from -(h-1) to h-1 rows
    and -(w-1) to w-1 columns."""
    return (2 * grid[0] - 1, 2 * grid[1] - 1)


def relative_table_length(grid: tuple[int, int]) -> int:
    """Entries per head of a relative-bias table for `grid`: the prefix entries, then one per
    offset, row-major over `offset_grid(grid)`."""
    rows, cols = offset_grid(grid)
    return RELATIVE_PREFIX_ENTRIES + rows * cols


def relative_position_index(
    grid: tuple[int, int], num_prefix_tokens: int, *, device: torch.device | None = None
) -> torch.Tensor:
    """(T, T) entries of a relative-bias table (see `relative_table_length`) for every query
    (row) and key (column) of the token sequence: prefix tokens first, then the patches
    row-major. Two patches read the entry of their offset, query minus key: (dy, dx) is entry
    RELATIVE_PREFIX_ENTRIES + (dy + h - 1) * (2w - 1) + (dx + w - 1)."""
    height, grid_w = grid
    rows = torch.arange(height, device=device).repeat_interleave(grid_w)  # (h*w,) each row
    cols = torch.arange(grid_w, device=device).repeat(height)
    dy = rows[:, None] - rows[None, :] + height - 1  # (h*w, h*w), 0 .. 2h - 2
    dx = cols[:, None] - cols[None, :] + grid_w - 1
    patches = RELATIVE_PREFIX_ENTRIES + dy * (2 * grid_w - 1) + dx
    prefix = num_prefix_tokens
    index = torch.empty((prefix + height * grid_w,) * 2, dtype=torch.long, device=device)
    index[:prefix, prefix:] = 0  # prefix token -> patch
    index[prefix:, :prefix] = 1  # patch -> prefix token
    index[:prefix, :prefix] = 2  # prefix token -> prefix token
    index[prefix:, prefix:] = patches
    return index


def resize_relative_bias(
    table: torch.Tensor,
    *,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    mode: PosEmbedInterpolation,
) -> torch.Tensor:
    """A relative-bias table (1, entries, heads) for `old_grid` resized for `new_grid` by
    `resize_pos_embed`: the offsets as an image with one channel per head, the prefix entries
    kept. Bilinear (align_corners=True) maps offset d of the new grid to d (h-1)/(H-1) of the old,
    as it maps the 1-D embedding's positions; bicubic follows timm's convention likewise."""
    return resize_pos_embed(
        table,
        new_grid=offset_grid(new_grid),
        old_grid=offset_grid(old_grid),
        num_prefix_tokens=RELATIVE_PREFIX_ENTRIES,
        mode=mode,
    )


class RelativePositions(NamedTuple):
    """What each block of a "relative" model needs to bias its attention for one input: the
    input's patch grid (for resizing its table) and `relative_position_index`'s (T, T) entries,
    computed once per forward pass for all blocks."""

    grid: tuple[int, int]
    index: torch.Tensor


def relative_bias(
    table: torch.Tensor,
    positions: RelativePositions,
    *,
    table_grid: tuple[int, int],
    mode: PosEmbedInterpolation,
) -> torch.Tensor:
    """The attention-logit bias (heads, T, T) of a table (1, entries, heads) learned for
    `table_grid`, at the input's grid: entry [h, q, k] is the table's entry for query q and key
    k, for head h."""
    table = resize_relative_bias(table, old_grid=table_grid, new_grid=positions.grid, mode=mode)
    return table[0, positions.index].permute(2, 0, 1)  # (T, T, heads) -> (heads, T, T)
