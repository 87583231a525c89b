"""Multi-head attention pooling ("MAP", Lee et al. 2019's pooling by multi-head attention, as
SigLIP's image tower and big_vision pool): one learned query attends over the patch tokens, and
the attended token goes through its own residual MLP. The pooling learns where to look, where
the [class] token borrows a sequence position and average pooling looks everywhere alike.

The layout and names are timm's `AttentionPoolLatent` with one latent query (`latent`, `q`, `kv`,
`proj`, `norm`, `mlp`), so timm's state dicts load as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.models.config import ViTConfig
from vitkit.models.layers import Mlp


class AttentionPool(nn.Module):
    """(N, T, D) tokens -> (N, D): the learned query's attention over them, projected, plus
    MLP(LayerNorm(that)); heads, MLP width, GELU and LayerNorm eps are the encoder's."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        width = config.width
        self.num_heads = config.num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, width))
        self.q = nn.Linear(width, width, bias=config.qkv_bias)
        self.kv = nn.Linear(width, 2 * width, bias=config.qkv_bias)
        self.proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.mlp = Mlp(width, config.mlp_dim, gelu=config.gelu)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The query at std 1/sqrt(width) (timm's and big_vision's), dense layers as the
        encoder's (Xavier-uniform, zero biases)."""
        nn.init.trunc_normal_(self.latent, std=1 / math.sqrt(self.latent.shape[-1]))
        for linear in (self.q, self.kv, self.proj, self.mlp.fc1, self.mlp.fc2):
            nn.init.xavier_uniform_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def _attended(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, count, width = tokens.shape
        head_dim = width // self.num_heads
        query = self.q(self.latent).reshape(1, 1, self.num_heads, head_dim).transpose(1, 2)
        key_value = self.kv(tokens).reshape(batch, count, 2, self.num_heads, head_dim)
        key, value = key_value.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, T, head_dim)
        return query.expand(batch, -1, -1, -1), key, value

    def _finish(self, attended: torch.Tensor) -> torch.Tensor:
        """(N, heads, 1, head_dim) -> (N, D): heads merged, projected, the residual MLP."""
        pooled = self.proj(attended.transpose(1, 2).flatten(2))[:, 0]
        return pooled + self.mlp(self.norm(pooled))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query, key, value = self._attended(tokens)
        return self._finish(F.scaled_dot_product_attention(query, key, value))
