"""The Vision Transformer of Dosovitskiy et al. (ICLR 2021), read top to bottom:

images (N, C, H, W)
  -> patch embedding            (N, h*w, D)     equation 1 (hybrids: of a ResNet's feature map)
  -> [class] token, registers prepended  (N, P+h*w, D)   P = num_prefix_tokens (0 to 1 + regs)
  -> + position embeddings, dropout     (with no_embed_class: added to the patches before)
                                (pos_embed_type, Table 8: other variants add patches-only 2-D
                                embeddings, none, or bias every block's attention logits)
  -> CLIP's LayerNorm (pre_norm only)
  -> pre-LN encoder blocks      (N, T, D)       equations 2-3 (LayerScale: branches scaled)
  -> final LayerNorm                            equation 4 (fc_norm: after pooling instead)
  -> pool: [class] token, mean of patch tokens ("gap") or attention pooling ("map")  (N, D)
  -> optional pre-logits Linear + tanh          (N, representation_size)
  -> head, zero-initialised     (N, num_classes)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from vitkit.models.attention_pool import AttentionPool
from vitkit.models.complexity import check_buildable
from vitkit.models.config import ViTConfig
from vitkit.models.layers import Block, LayerScale
from vitkit.models.patch_embed import PatchEmbed
from vitkit.models.positions import position_scheme
from vitkit.models.preprocessing import Preprocessing
from vitkit.models.resnet import ResNetStem

# Parameters (by their own name, wherever they sit) that `no_weight_decay` names.
# Parameters (by their own name, wherever they sit) that `no_weight_decay` names besides the
# position scheme's tables.
NO_WEIGHT_DECAY = frozenset({"cls_token", "reg_token", "mask_token", "latent"})


class VisionTransformer(nn.Module):
    def __init__(self, config: ViTConfig, *, preprocessing: Preprocessing | None = None):
        """A model of `config`, randomly initialised. `preprocessing`: how images become its
        inputs; by default Google's [-1, 1] at config.img_size, which vitkit's own training
        uses unless its init checkpoint records another."""
        check_buildable(config)
        super().__init__()
        self.config = config
        self.preprocessing = preprocessing or Preprocessing.google(
            config.img_size, channels=config.in_chans
        )
        # Labels of the head's outputs when the weights record them (set by `load_model`, written
        # by every format that holds them); not part of the architecture, so not in `config`.
        self.class_names: tuple[str, ...] | None = None
        width = config.width
        backbone = None
        if config.resnet_layers is not None:  # hybrid: a ResNet feeds the patch embedding
            backbone = ResNetStem(
                config.in_chans,
                config.resnet_layers,
                width=config.resnet_width,
                numerics=config.resnet_numerics,
            )
        self.patch_embed = PatchEmbed(
            config.patch_size,
            config.in_chans,
            width,
            backbone=backbone,
            backbone_stride=config.resnet_stride,
            backbone_chans=config.embed_in_chans,
            bias=config.patch_bias,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if config.class_token else None
        self.reg_token = None
        if config.reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, config.reg_tokens, width))
        # Where the tokens are (models/positions.py): the scheme's tables are the model's own
        # parameters, under the names the checkpoint formats know.
        self.position_scheme = position_scheme(config)
        for name, table in self.position_scheme.tables().items():
            self.register_parameter(name, table)
        self.pos_drop = nn.Dropout(config.dropout)
        # CLIP's LayerNorm over the embedded tokens before the blocks (timm's name).
        self.norm_pre: nn.Module = nn.Identity()
        if config.pre_norm:
            self.norm_pre = nn.LayerNorm(width, eps=config.layer_norm_eps)
        # Stochastic depth grows linearly with depth, reaching config.drop_path at the last block.
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(
            Block(config, self.position_scheme, drop_path=rate) for rate in rates
        )
        # timm's layout: with fc_norm the final norm is an identity and the LayerNorm (its
        # parameters named fc_norm) follows the pooling.
        layer_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.norm: nn.Module = nn.Identity() if config.fc_norm else layer_norm
        self.fc_norm: nn.Module = layer_norm if config.fc_norm else nn.Identity()
        if config.classifier == "map":  # timm's name
            self.attn_pool = AttentionPool(config)
        self.pre_logits, self.head = self._build_head(config)
        self.init_weights()

    @staticmethod
    def _build_head(config: ViTConfig) -> tuple[nn.Module, nn.Module]:
        features = config.width
        pre_logits: nn.Module = nn.Identity()
        if config.representation_size:
            features = config.representation_size
            pre_logits = nn.Sequential(nn.Linear(config.width, features), nn.Tanh())
        head: nn.Module = nn.Identity()
        if config.num_classes > 0:
            head = nn.Linear(features, config.num_classes)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        return pre_logits, head

    @torch.no_grad()
    def init_weights(self) -> None:
        """The initialisation of Google's JAX code: Xavier-uniform for every dense layer (q, k, v
        separately), LeCun-normal for the patch embedding and pre-logits, N(0, 0.02) position
        embeddings (learned_2d's X- and Y-tables alike; models/positions.py), zero relative
        biases, zero [class] token and zero head."""

        def lecun_normal_(weight: torch.Tensor) -> None:
            fan_in = weight[0].numel()
            std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of N(0,1) cut at +-2
            nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)

        lecun_normal_(self.patch_embed.proj.weight)
        if self.patch_embed.proj.bias is not None:
            nn.init.zeros_(self.patch_embed.proj.bias)
        self.position_scheme.reset(dict(self.named_parameters(recurse=False)))
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        if self.reg_token is not None:  # registers that start equal would stay equal
            nn.init.normal_(self.reg_token, std=0.02)
        for block in self.blocks:
            for chunk in block.attn.qkv.weight.chunk(3, dim=0):  # q, k, v are separate in JAX
                nn.init.xavier_uniform_(chunk)
            nn.init.xavier_uniform_(block.attn.proj.weight)
            for linear in (block.attn.qkv, block.attn.proj):
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
            for linear in (block.mlp.fc1, block.mlp.fc2):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.normal_(linear.bias, std=1e-6)
            self.position_scheme.reset(dict(block.attn.named_parameters(recurse=False)))
            for scale in (block.ls1, block.ls2):
                if isinstance(scale, LayerScale):
                    scale.reset_parameters()
        if self.config.classifier == "map":
            self.attn_pool.reset_parameters()
        if isinstance(self.pre_logits, nn.Sequential):
            lecun_normal_(self.pre_logits[0].weight)
            nn.init.zeros_(self.pre_logits[0].bias)

    @property
    def preprocessing(self) -> Preprocessing:
        """How images become this model's inputs (resolution, mean, std, interpolation): a fact
        about the weights, not the architecture, so it sits beside `config`. `load_model` sets it
        from the checkpoint's metadata, every writer that can records it, and evaluation,
        training and export read it."""
        return self._preprocessing

    @preprocessing.setter
    def preprocessing(self, value: Preprocessing) -> None:
        value.check_channels(self.config.in_chans)
        self._preprocessing = value

    def no_weight_decay(self) -> set[str]:
        """The names of the parameters weight decay must leave alone (timm's convention, which
        training reads): position embeddings of every kind, the [class], register and [mask]
        tokens, relative attention biases, attention pooling's query. They are learned offsets
        with no scale to shrink; decay would only pull them toward zero. (Biases and norms, 1-D,
        go undecayed too; that rule is the optimizer's.)"""
        exempt = NO_WEIGHT_DECAY | self.position_scheme.no_weight_decay()
        return {name for name, _ in self.named_parameters() if name.rsplit(".", 1)[-1] in exempt}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a zero-initialised one for `num_classes` and drop the pre-logits
        layer: the paper's fine-tuning set-up (section 3.2). The class names go with the old head:
        a new, untrained one labels nothing yet, even with as many outputs."""
        self.class_names = None
        self.config = dataclasses.replace(
            self.config, num_classes=num_classes, representation_size=None
        )
        pre_logits, head = self._build_head(self.config)
        weight = self.patch_embed.proj.weight
        device, dtype = weight.device, weight.dtype
        self.pre_logits, self.head = pre_logits.to(device, dtype), head.to(device, dtype)

    def _patch_size(self, patch_size: int | None) -> int:
        """The patch size a forward pass cuts: the built one unless the call asks for another,
        which the model must be configured for."""
        built = self.config.patch_size
        if patch_size is None or patch_size == built:
            return built
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size={patch_size!r}: expected a positive integer")
        if not self.config.dynamic_patch_size:
            raise ValueError(
                f"This model was built for patch size {built}, not {patch_size}: set "
                f"dynamic_patch_size=True, or load_model(..., patch_size={patch_size}) for a "
                "model of that size."
            )
        return patch_size

    def _check_grid(self, grid: tuple[int, int], patch_size: int) -> None:
        """Refuse another grid than the build resolution gives unless the model is dynamic."""
        stride = patch_size * self.config.resnet_stride
        built_h, built_w = self.config.img_size
        if grid == (built_h // stride, built_w // stride) or self.config.dynamic_img_size:
            return
        height, width = (side * stride for side in grid)
        raise ValueError(
            f"This model was built for {built_h}x{built_w} images but got {height}x{width}. "
            f"Build it for that size (create_model(..., img_size=({height}, {width})) or "
            f"load_model(..., img_size=({height}, {width})), which resize the position "
            "embeddings), resize the images, or set dynamic_img_size=True."
        )

    def patch_position_embeddings(self) -> torch.Tensor | None:
        """The position embedding of each patch at the build grid, (1, h*w, D), the prefix rows
        left out: what Fig. 7 (centre) compares. None where nothing is added to the tokens
        (pos_embed_type "none" and "relative")."""
        scheme = self.position_scheme
        embedding = scheme.embedding(self, self.config.grid_size)
        if embedding is None:
            return None
        return embedding[:, scheme.prefix_rows :]

    def _prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        """The [class] token and the registers, each (N, n, D), in timm's order."""
        learned = (self.cls_token, self.reg_token)
        return [token.expand(batch, -1, -1) for token in learned if token is not None]

    def embed(
        self,
        images: torch.Tensor,
        corrupt: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        patch_size: int | None = None,
    ) -> torch.Tensor:
        """Images (N, C, H, W) -> encoder input tokens (N, T, D), position embeddings added.
        `corrupt` changes the patch embeddings (N, h*w, D) before the [class] token and the
        positions are added: masked patch prediction (models/masked_patches.py). `patch_size`:
        another than the built one, for a model with dynamic_patch_size."""
        patch_size = self._patch_size(patch_size)
        grid = self.patch_embed.grid_size(images, patch_size)
        self._check_grid(grid, patch_size)
        pos_embed = self.position_scheme.embedding(self, grid)
        tokens = self.patch_embed(images, patch_size)  # (N, h*w, D)
        if corrupt is not None:
            tokens = corrupt(tokens)
        prefix = self._prefix_tokens(tokens.shape[0])
        if pos_embed is None:  # positions, if any, enter the attention
            tokens = torch.cat([*prefix, tokens], dim=1)
        elif self.position_scheme.prefix_rows:
            tokens = torch.cat([*prefix, tokens], dim=1) + pos_embed  # (N, P + h*w, D)
        else:  # position embeddings for the patches only
            tokens = torch.cat([*prefix, tokens + pos_embed], dim=1)
        return self.norm_pre(self.pos_drop(tokens))

    def _encoded(
        self,
        images: torch.Tensor,
        corrupt: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        patch_size: int | None = None,
        depth: int | None = None,
        attention: bool = False,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Images embedded (`embed`), then `run_blocks` placing them by the position scheme at
        their grid: what the forward pass, the intermediates and the attention maps share."""
        tokens = self.embed(images, corrupt, patch_size=patch_size)
        grid = self.patch_embed.grid_size(images, patch_size)
        positions = self.position_scheme.attention_positions(grid, images.device)
        return self.run_blocks(tokens, positions, depth=depth, attention=attention)

    def run_blocks(
        self,
        tokens: torch.Tensor,
        positions: object | None = None,
        *,
        mask: torch.Tensor | None = None,
        depth: int | None = None,
        attention: bool = False,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The one encoder path over embedded tokens (N, T, D): the first `depth` blocks (all by
        default), placing the tokens by `positions` (the position scheme's for their grid) and,
        for images packed into one sequence (models/packing.py), attending within `mask`.
        Returns the tokens after the embedding and after each block, and, with attention=True,
        each block's attention weights (computed explicitly: for analysis, not training)."""
        if attention and mask is not None:
            raise ValueError("attention maps are drawn for images, not packed sequences")
        states, weights = [tokens], []
        for block in self.blocks[:depth]:
            if attention:
                tokens, block_weights = block.forward_with_attention(tokens, positions)
                weights.append(block_weights)
            else:
                tokens = block(tokens, positions, mask)
            states.append(tokens)
        return states, weights

    def forward_features(
        self,
        images: torch.Tensor,
        corrupt: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        patch_size: int | None = None,
    ) -> torch.Tensor:
        """Images -> every token after the final LayerNorm (none with fc_norm), (N, T, D);
        `corrupt` and `patch_size` as in `embed`."""
        states, _ = self._encoded(images, corrupt, patch_size=patch_size)
        return self.norm(states[-1])

    def forward_intermediates(
        self,
        images: torch.Tensor,
        *,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        patch_size: int | None = None,
    ) -> list[torch.Tensor]:
        """The tokens after encoder blocks, each (N, T, D), in block order: every block's by
        default, the last n blocks' for indices=n, or those of the listed blocks (negative
        indices count from the end), as timm's keywords. norm=True applies the final norm (an
        identity with fc_norm, as in timm); the default is the blocks' raw output. `patch_size`
        as in `embed`."""
        wanted = sorted(self._block_indices(indices))
        states, _ = self._encoded(images, patch_size=patch_size, depth=wanted[-1] + 1)
        outputs = [states[index + 1] for index in wanted]
        return [self.norm(tokens) for tokens in outputs] if norm else outputs

    def _block_indices(self, indices: int | Sequence[int] | None) -> set[int]:
        """Block numbers from forward_intermediates' `indices`, each checked."""
        depth = len(self.blocks)
        if indices is None:
            return set(range(depth))
        if isinstance(indices, int) and not isinstance(indices, bool):
            if not 1 <= indices <= depth:
                raise ValueError(f"indices={indices}: the last n blocks needs 1 <= n <= {depth}")
            return set(range(depth - indices, depth))
        wanted = set()
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, int):
                raise ValueError(f"indices: {index!r} is not a block number")
            if not -depth <= index < depth:
                raise ValueError(f"indices: block {index} out of range for {depth} blocks")
            wanted.add(index % depth)
        if not wanted:
            raise ValueError("indices: an empty list selects no block")
        return wanted

    def forward_attention(
        self, images: torch.Tensor, *, patch_size: int | None = None
    ) -> list[torch.Tensor]:
        """The attention weights of every block, each (N, heads, T, T) with T = prefix tokens +
        patches, rows (queries) summing to 1; the model should be in eval mode. For the paper's
        attention maps and attention distances; the normal forward never computes them.
        `patch_size` as in `embed`."""
        _, weights = self._encoded(images, patch_size=patch_size, attention=True)
        return weights

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, D): the [class] token, or the patch tokens averaged ("gap") or pooled
        by attention ("map"); the [class] token and the registers are left out of both."""
        if self.config.classifier == "token":
            return tokens[:, 0]
        patches = tokens[:, self.config.num_prefix_tokens :]
        if self.config.classifier == "map":
            return self.attn_pool(patches)
        return patches.mean(dim=1)

    def forward_head(self, tokens: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Normalised tokens -> logits; with pre_logits=True the representation the head reads
        (after the tanh layer where there is one), as used for few-shot linear evaluation."""
        return self.classify_pooled(self.pool(tokens), pre_logits=pre_logits)

    def classify_pooled(self, pooled: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Pooled tokens (N, D) -> logits, or with pre_logits=True the head's input: what
        follows the pooling, for `forward_head` and for packed sequences (models/packing.py)."""
        features = self.pre_logits(self.fc_norm(pooled))
        return features if pre_logits else self.head(features)

    def forward(self, images: torch.Tensor, *, patch_size: int | None = None) -> torch.Tensor:
        """Images (N, C, H, W) -> logits (N, num_classes); `patch_size` as in `embed`."""
        return self.forward_head(self.forward_features(images, patch_size=patch_size))


def resize_position_parameter(
    name: str, tensor: torch.Tensor, *, config: ViTConfig, new_grid: tuple[int, int]
) -> torch.Tensor:
    """`tensor`, the parameter `name` of a model of `config`, for the patch grid `new_grid`: a
    table of the model's position scheme resized by it (models/positions.py), any other
    parameter as it is. For loading at another size."""
    return position_scheme(config).resize(name.rsplit(".", 1)[-1], tensor, new_grid)


def create_model(
    name: str, *, img_size: int | tuple[int, int] | None = None, **overrides: object
) -> VisionTransformer:
    """A randomly initialised model of the named preset, e.g. create_model("ViT-B/16",
    num_classes=10, img_size=384). `overrides` are ViTConfig fields. Its `preprocessing` is
    Google's [-1, 1] at the model's resolution."""
    from vitkit.models.config import get_config

    if img_size is not None:
        overrides["img_size"] = img_size
    return VisionTransformer(get_config(name, **overrides))
