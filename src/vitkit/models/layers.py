"""The encoder's building blocks: self-attention, MLP, stochastic depth and the pre-LN block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.models.config import Gelu, ViTConfig
from vitkit.models.positions import PositionScheme


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, computed by
    `scaled_dot_product_attention` (flash / memory-efficient kernels where available).

    `scheme`: the model's position scheme (models/positions.py), which may give this layer
    tables of its own (a relative model's `relative_bias`) and a bias to its logits; without one
    the logits are unbiased and SDPA gets no mask."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        key_bias: bool = True,
        dropout: float = 0.0,
        scheme: PositionScheme | None = None,
    ):
        """`key_bias=False` (with qkv_bias): the keys' third of the projection's bias is left
        out of the computation, and so never learns (DINOv3)."""
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        mask = None
        if qkv_bias and not key_bias:  # 1 for the queries' and values' thirds, 0 for the keys'
            mask = torch.ones(3, width)
            mask[1] = 0
            mask = mask.flatten()
        self.register_buffer("bias_mask", mask, persistent=False)
        self.proj = nn.Linear(width, width)
        self.scheme = scheme
        if scheme is not None:
            for name, table in scheme.attention_tables().items():
                self.register_parameter(name, table)

    def _bias(self, positions: object | None, dtype: torch.dtype) -> torch.Tensor | None:
        """The logits' bias (heads, T, T) in `dtype` (SDPA wants the query's), or None."""
        if self.scheme is None:
            return None
        return self.scheme.attention_bias(self, positions, dtype)

    def _heads(
        self, x: torch.Tensor, positions: object | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values (B, heads, T, head_dim), the queries and keys turned by the
        position scheme where it rotates them."""
        batch, tokens, _ = x.shape
        if self.bias_mask is None:
            qkv = self.qkv(x)
        else:
            qkv = F.linear(x, self.qkv.weight, self.qkv.bias * self.bias_mask)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.scheme is not None:
            query, key = self.scheme.rotate(query, key, positions)
        return query, key, value

    def _merge(self, out: torch.Tensor) -> torch.Tensor:  # (B, heads, T, head_dim) -> (B, T, D)
        return self.proj(out.transpose(1, 2).flatten(2))

    def forward(
        self,
        x: torch.Tensor,
        positions: object | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        """`positions`: the input's, as the position scheme gives them for the blocks
        (`attention_positions`). `mask`: which
        tokens each token may attend to, (B, 1, T, T) booleans, for images packed into one
        sequence (models/packing.py); not with relative positions."""
        query, key, value = self._heads(x, positions)
        dropout = self.dropout if self.training else 0.0
        bias = self._bias(positions, query.dtype)
        if mask is not None:
            if bias is not None:
                raise ValueError("packed sequences take no position bias")
            bias = mask
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout)
        return self._merge(out)

    def forward_with_weights(
        self, x: torch.Tensor, positions: object | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same output as `forward` (without attention dropout) and the attention weights
        (B, heads, T, T), rows summing to 1, computed explicitly: for analysis, not training, as
        the fused kernel of `forward` never materialises them."""
        query, key, value = self._heads(x, positions)
        logits = query @ key.transpose(-2, -1) * self.head_dim**-0.5  # (B, heads, T, T)
        if (bias := self._bias(positions, logits.dtype)) is not None:
            logits = logits + bias
        weights = logits.softmax(dim=-1)
        return self._merge(weights @ value), weights


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation of OpenAI's CLIP, whose weights expect it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(gelu: Gelu) -> nn.Module:
    """The GELU flavour a config names: exact (erf), tanh-approximated, or CLIP's quick one."""
    if gelu == "quick":
        return QuickGELU()
    return nn.GELU(approximate="tanh" if gelu == "tanh" else "none")


class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout, as in the paper's MLP block."""

    def __init__(self, width: int, mlp_dim: int, *, gelu: Gelu = "exact", dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.act = activation(gelu)
        self.fc2 = nn.Linear(mlp_dim, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch for whole samples, scaling the
    kept ones by 1/(1 - rate) so the expected output is unchanged."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class LayerScale(nn.Module):
    """Per-channel learned factors on a residual branch (CaiT, DeiT III, DINOv2): a deep model
    starts near its identity, each branch scaled by `init` (1e-5, 1e-6), and learns how much of
    each channel to let through. timm's name for the factors, `gamma`, is kept."""

    def __init__(self, width: int, init: float):
        super().__init__()
        self.init = init
        self.gamma = nn.Parameter(torch.full((width,), init))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-LN encoder block: x + MSA(LN(x)), then x + MLP(LN(x)) (equations 2 and 3); with
    LayerScale each branch is scaled per channel before it is added (`ls1`, `ls2`)."""

    def __init__(self, config: ViTConfig, scheme: PositionScheme, *, drop_path: float = 0.0):
        """A block of `config`, its attention placing tokens by `scheme` (the model's)."""
        super().__init__()
        width, eps = config.width, config.layer_norm_eps
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(
            width,
            config.num_heads,
            qkv_bias=config.qkv_bias,
            key_bias=config.key_bias,
            dropout=config.attention_dropout,
            scheme=scheme,
        )
        self.attn_drop = nn.Dropout(config.dropout)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, config.mlp_dim, gelu=config.gelu, dropout=config.dropout)
        self.drop_path = DropPath(drop_path)
        init = config.layer_scale_init
        self.ls1: nn.Module = nn.Identity() if init is None else LayerScale(width, init)
        self.ls2: nn.Module = nn.Identity() if init is None else LayerScale(width, init)

    def forward(
        self,
        x: torch.Tensor,
        positions: object | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`positions` and `mask` as in `Attention.forward`."""
        attended = self.attn_drop(self.attn(self.norm1(x), positions, mask))
        x = x + self.drop_path(self.ls1(attended))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

    def forward_with_attention(
        self, x: torch.Tensor, positions: object | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` in eval mode, plus the attention weights (B, heads, T, T)."""
        attended, weights = self.attn.forward_with_weights(self.norm1(x), positions)
        x = x + self.ls1(attended)
        return x + self.ls2(self.mlp(self.norm2(x))), weights
