"""The encoder's building blocks: self-attention, MLP, stochastic depth and the pre-LN block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.models.config import Gelu


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, computed by
    `scaled_dot_product_attention` (flash / memory-efficient kernels where available)."""

    def __init__(self, width: int, num_heads: int, *, qkv_bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout)
        return self.proj(out.transpose(1, 2).flatten(2))


class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout, as in the paper's MLP block."""

    def __init__(self, width: int, mlp_dim: int, *, gelu: Gelu = "exact", dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.act = nn.GELU(approximate="tanh" if gelu == "tanh" else "none")
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


class Block(nn.Module):
    """Pre-LN encoder block: x + MSA(LN(x)), then x + MLP(LN(x)) (equations 2 and 3)."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_dim: int,
        *,
        qkv_bias: bool = True,
        gelu: Gelu = "exact",
        layer_norm_eps: float = 1e-6,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=layer_norm_eps)
        self.attn = Attention(width, num_heads, qkv_bias=qkv_bias, dropout=attention_dropout)
        self.attn_drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(width, eps=layer_norm_eps)
        self.mlp = Mlp(width, mlp_dim, gelu=gelu, dropout=dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn_drop(self.attn(self.norm1(x))))
        return x + self.drop_path(self.mlp(self.norm2(x)))
