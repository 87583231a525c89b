"""Where a token is: the position schemes as classes, one per `pos_embed_type`.

A scheme owns everything about its kind of position information: the tables it learns (at the
model's top level, or in every block's attention, under the names the checkpoint formats know),
their initialisation, how they reach the computation (added to the tokens, or biasing the
attention logits), their resize to another patch grid, their parameter count and their exemption
from weight decay. The model asks its scheme and tests no `pos_embed_type` itself; a new scheme
is a new class here.

The formulas (resizing, sin-cos, the relative-offset index) are models/pos_embed.py's. A scheme
holds no tensors, only its config: the tables live on the model and its attention layers, so
their state-dict names stay `pos_embed`, `pos_embed_rows`, `blocks.N.attn.relative_bias`, ...,
as every format has them.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from vitkit.models.config import ViTConfig
from vitkit.models.pos_embed import (
    RelativePositions,
    grid_pos_embed,
    relative_bias,
    relative_position_index,
    relative_table_length,
    resize_axis,
    resize_pos_embed,
    resize_relative_bias,
    sincos_2d,
)


class PositionScheme:
    """No position information ("none"): the base every scheme changes what it needs of."""

    name: ClassVar[str] = "none"
    # Whether images of different grids can share one packed sequence (models/packing.py).
    packable: ClassVar[bool] = True

    def __init__(self, config: ViTConfig):
        self.config = config

    @property
    def prefix_rows(self) -> int:
        """Rows of `embedding` for the prefix tokens, before the patch rows (0: the embedding
        is the patches' only, added before the prefix tokens are prepended)."""
        return 0

    def table_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of the tables the model holds at its top level, by name: what a
        checkpoint must hold, checked before anything is allocated."""
        return {}

    def attention_table_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of the tables each block's attention layer holds, by name."""
        return {}

    def tables(self) -> dict[str, nn.Parameter]:
        """The model's tables, zero-filled until `reset`."""
        return {
            name: nn.Parameter(torch.zeros(shape)) for name, shape in self.table_shapes().items()
        }

    def attention_tables(self) -> dict[str, nn.Parameter]:
        """One attention layer's tables, zero-filled until `reset`."""
        shapes = self.attention_table_shapes()
        return {name: nn.Parameter(torch.zeros(shape)) for name, shape in shapes.items()}

    def reset(self, tables: dict[str, torch.Tensor]) -> None:
        """Initialise, in place, the tables of this scheme that `tables` holds (the model's, or
        one attention layer's)."""

    def embedding(self, model: nn.Module, grid: tuple[int, int]) -> torch.Tensor | None:
        """What is added to the tokens at `grid`: (1, prefix rows + h*w, D), with
        `prefix_rows` rows for the prefix tokens; None when nothing is."""
        return None

    def attention_positions(self, grid: tuple[int, int], device: torch.device) -> object | None:
        """What every block needs to place the tokens of an input of `grid`, computed once per
        forward pass and handed to `attention_bias`; None when the blocks need nothing."""
        return None

    def attention_bias(
        self, attention: nn.Module, positions: object | None, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """The bias (heads, T, T) this scheme adds to `attention`'s logits; None for none."""
        return None

    def rotate(
        self, query: torch.Tensor, key: torch.Tensor, positions: object | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The queries and keys (B, heads, T, head_dim) as this scheme turns them before their
        products are taken (rotary embeddings); as they are by default."""
        return query, key

    def resize(self, name: str, tensor: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
        """The table `name` (a parameter's own name), learned for the config's grid, for
        `new_grid`; a tensor of any other name as it is."""
        return tensor

    def count_parameters(self) -> int:
        """Parameters of the scheme's tables in a whole model, every block's included."""
        model = sum(math.prod(shape) for shape in self.table_shapes().values())
        block = sum(math.prod(shape) for shape in self.attention_table_shapes().values())
        return model + self.config.depth * block

    def no_weight_decay(self) -> frozenset[str]:
        """The names of the scheme's tables: learned offsets, which decay would only pull to 0."""
        return frozenset(self.table_shapes()) | frozenset(self.attention_table_shapes())


class Learned1D(PositionScheme):
    """The paper's default: one learned embedding per token, `pos_embed` (1, prefix rows + h*w,
    D), N(0, 0.02); its patch rows resized as an image over the grid (section 3.2)."""

    name = "learned_1d"

    @property
    def prefix_rows(self) -> int:
        """One row per prefix token, none with no_embed_class (DeiT III, big_vision, timm's
        registers models: the rows are the patches' only)."""
        return 0 if self.config.no_embed_class else self.config.num_prefix_tokens

    def table_shapes(self) -> dict[str, tuple[int, ...]]:
        grid_h, grid_w = self.config.grid_size
        return {"pos_embed": (1, self.prefix_rows + grid_h * grid_w, self.config.width)}

    def reset(self, tables: dict[str, torch.Tensor]) -> None:
        if "pos_embed" in tables:
            nn.init.normal_(tables["pos_embed"], std=0.02)

    def embedding(self, model: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
        return self.resize("pos_embed", model.pos_embed, grid)

    def resize(self, name: str, tensor: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
        if name != "pos_embed":
            return tensor
        config = self.config
        return resize_pos_embed(
            tensor,
            new_grid=new_grid,
            old_grid=config.grid_size,
            num_prefix_tokens=self.prefix_rows,
            mode=config.pos_embed_interpolation,
        )


class Learned2D(PositionScheme):
    """Learned X- and Y-embeddings of width D/2 each (Appendix D.4), `pos_embed_rows` (1, h, D/2)
    and `pos_embed_cols` (1, w, D/2), N(0, 0.02), concatenated per patch; each resized along its
    own axis."""

    name = "learned_2d"
    _AXES: ClassVar[dict[str, int]] = {"pos_embed_rows": 0, "pos_embed_cols": 1}

    def table_shapes(self) -> dict[str, tuple[int, ...]]:
        half, grid = self.config.width // 2, self.config.grid_size
        return {name: (1, grid[axis], half) for name, axis in self._AXES.items()}

    def reset(self, tables: dict[str, torch.Tensor]) -> None:
        for name in self._AXES:
            if name in tables:
                nn.init.normal_(tables[name], std=0.02)

    def embedding(self, model: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
        rows, cols = (self.resize(name, getattr(model, name), grid) for name in self._AXES)
        return grid_pos_embed(rows, cols)

    def resize(self, name: str, tensor: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
        if name not in self._AXES:
            return tensor
        axis = self._AXES[name]
        mode = self.config.pos_embed_interpolation
        return resize_axis(tensor, new_length=new_grid[axis], axis=axis, mode=mode)


class SinCos2D(PositionScheme):
    """big_vision's fixed 2-D sin-cos embedding, computed for any grid: nothing learned, nothing
    resized."""

    name = "sincos_2d"

    def embedding(self, model: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
        weight = model.patch_embed.proj.weight  # made in the parameters' device and dtype
        return sincos_2d(grid, self.config.width, device=weight.device).to(weight.dtype)


class RelativeBias(PositionScheme):
    """A learned bias per head and 2-D offset between two patches (and for the prefix tokens),
    added to every block's attention logits (BEiT's layout): `relative_bias` (1, entries, heads)
    in each attention layer, zero-initialised, resized over the offsets."""

    name = "relative"
    packable = False  # a packed sequence has no one grid of offsets

    def attention_table_shapes(self) -> dict[str, tuple[int, ...]]:
        entries = relative_table_length(self.config.grid_size)
        return {"relative_bias": (1, entries, self.config.num_heads)}

    def reset(self, tables: dict[str, torch.Tensor]) -> None:
        if "relative_bias" in tables:
            nn.init.zeros_(tables["relative_bias"])

    def attention_positions(self, grid: tuple[int, int], device: torch.device) -> RelativePositions:
        prefix = self.config.num_prefix_tokens
        return RelativePositions(grid, relative_position_index(grid, prefix, device=device))

    def attention_bias(
        self, attention: nn.Module, positions: object | None, dtype: torch.dtype
    ) -> torch.Tensor:
        if not isinstance(positions, RelativePositions):
            raise ValueError("a relative-position attention layer needs the input's positions")
        config = self.config
        bias = relative_bias(
            attention.relative_bias,
            positions,
            table_grid=config.grid_size,
            mode=config.pos_embed_interpolation,
        )
        return bias.to(dtype)

    def resize(self, name: str, tensor: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
        if name != "relative_bias":
            return tensor
        mode = self.config.pos_embed_interpolation
        return resize_relative_bias(
            tensor, old_grid=self.config.grid_size, new_grid=new_grid, mode=mode
        )


class Rope2D(PositionScheme):
    """DINOv3's 2-D rotary embedding (Heo et al. 2024's axial RoPE as DINOv3 computes it):
    each patch's query and key are rotated by angles of its centre's coordinates, scaled to
    [-1, 1] over the grid, so the logit of two patches depends on their offset as a fraction of
    the image. Per head, the first half of the dimensions pairs with the second (rotate-half);
    of each half, the first quarter of frequencies turns with the row, the second with the
    column, at periods ROPE_BASE ** (4k / head_dim). The prefix tokens are not rotated. Nothing
    is learned or resized: any grid has its coordinates. (DINOv3's pre-training also jitters the
    coordinates; fine-tuning and inference do not.)"""

    name = "rope_2d"
    packable = False  # one sequence, one grid of coordinates
    ROPE_BASE: ClassVar[float] = 100.0

    def attention_positions(
        self, grid: tuple[int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of every patch's angles, each (h*w, head_dim), in float32."""
        quarter = self.config.head_dim // 4
        frequencies = self.ROPE_BASE ** -(torch.arange(quarter, device=device) * 4.0
                                          / self.config.head_dim)  # fmt: skip
        rows, cols = (
            (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side * 2 - 1
            for side in grid
        )
        centres = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
        angles = 2 * math.pi * centres[:, :, None] * frequencies  # (h*w, [row, col], quarter)
        angles = angles.flatten(1).repeat(1, 2)  # (h*w, head_dim): both halves alike
        return angles.cos(), angles.sin()

    def rotate(
        self, query: torch.Tensor, key: torch.Tensor, positions: object | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(positions, tuple):
            raise ValueError("a rotary attention layer needs the input's positions")
        cos, sin = (part.to(query.dtype) for part in positions)
        prefix = query.shape[-2] - cos.shape[0]

        def turned(x: torch.Tensor) -> torch.Tensor:
            patches = x[..., prefix:, :]
            first, second = patches.chunk(2, dim=-1)
            rotated = torch.cat([-second, first], dim=-1)
            return torch.cat([x[..., :prefix, :], patches * cos + rotated * sin], dim=-2)

        return turned(query), turned(key)


SCHEMES: dict[str, type[PositionScheme]] = {
    scheme.name: scheme
    for scheme in (Learned1D, PositionScheme, Learned2D, RelativeBias, SinCos2D, Rope2D)
}


def position_scheme(config: ViTConfig) -> PositionScheme:
    """The scheme of `config.pos_embed_type`."""
    return SCHEMES[config.pos_embed_type](config)
