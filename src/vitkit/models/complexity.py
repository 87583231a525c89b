"""Analytic cost of a Vision Transformer: FLOPs of one forward pass, and parameter counts.

Both are computed from a `ViTConfig` alone, so the cost of ViT-H/14 can be read without building
it (the model table of `vitkit models`, the compute axis of the paper's Figure 5). The tests check
them against PyTorch's own `FlopCounterMode` and against built models.
"""

from __future__ import annotations

import torch

from vitkit.errors import ConfigError
from vitkit.models.config import ViTConfig
from vitkit.models.positions import position_scheme
from vitkit.resources import check_memory

# Patches of one image a model may be built for: attention costs their square, and 16,384 (ViT-B/16
# at 2048 px, the longest NaViT budget `--max-tokens` takes) is far beyond any released model.
MOST_PATCHES = 16_384


def _resnet_cost(config: ViTConfig) -> tuple[int, int]:
    """(FLOPs, parameters) of a hybrid's ResNet stem (0, 0 for a plain ViT). Weight
    standardisation and GroupNorm are element-wise work, left out of the FLOPs."""
    if config.resnet_layers is None:
        return 0, 0
    height, width = config.img_size

    def conv(k: int, cin: int, cout: int, stride_from_input: int) -> tuple[int, int]:
        positions = (height // stride_from_input) * (width // stride_from_input)
        return 2 * positions * k * k * cin * cout, k * k * cin * cout

    root = config.resnet_width
    flops, params = conv(7, config.in_chans, root, 2)
    params += 2 * root  # GroupNorm
    chans, stride = root, 4
    for i, num_units in enumerate(config.resnet_layers):
        unit_width, in_stride = root * 2**i, stride
        stride = stride if i == 0 else 2 * stride
        for j in range(num_units):
            convs = [
                (1, chans, unit_width, in_stride if j == 0 else stride),
                (3, unit_width, unit_width, stride),
                (1, unit_width, 4 * unit_width, stride),
            ]
            if j == 0:
                convs.append((1, chans, 4 * unit_width, stride))
            for kernel, cin, cout, at in convs:
                conv_flops, conv_params = conv(kernel, cin, cout, at)
                flops, params = flops + conv_flops, params + conv_params + 2 * cout
            chans = 4 * unit_width
    return flops, params


def count_flops(config: ViTConfig) -> int:
    """FLOPs of the matrix products and the patch convolution in one forward pass of one image at
    `config.img_size`, a multiply-add counted as 2 FLOPs.

    Element-wise work (LayerNorm, GELU, softmax, bias and residual additions, pooling) is left
    out, as in FlopCounterMode, fvcore and the FLOP figures papers quote: it is a few per cent at
    most and depends on the kernels more than on the architecture.
    """
    width, tokens = config.width, config.num_tokens
    grid_h, grid_w = config.grid_size
    patch_pixels = config.embed_in_chans * config.patch_size**2

    patch_embed = 2 * grid_h * grid_w * patch_pixels * width  # one dense map per patch
    qkv = 2 * tokens * width * 3 * width
    scores = 2 * tokens * tokens * width  # q @ k^T over all heads: heads * T*T*head_dim
    weighted_values = 2 * tokens * tokens * width  # softmax(scores) @ v
    out_proj = 2 * tokens * width * width
    mlp = 2 * 2 * tokens * width * config.mlp_dim  # fc1 and fc2
    block = qkv + scores + weighted_values + out_proj + mlp

    features = width
    pre_logits = 0
    if config.representation_size:
        features = config.representation_size
        pre_logits = 2 * width * features
    head = 2 * features * config.num_classes
    resnet = _resnet_cost(config)[0]
    pool = 0
    if config.classifier == "map":  # one query: its keys and values over the patches dominate
        patches = grid_h * grid_w
        pool = 2 * patches * width * 2 * width + 2 * 2 * patches * width  # kv, scores, values
        pool += 2 * width * width * 2 + 2 * 2 * width * config.mlp_dim  # q, proj, MLP
    return resnet + patch_embed + config.depth * block + pool + pre_logits + head


def count_params(config: ViTConfig) -> int:
    """Number of parameters of `VisionTransformer(config)`, without allocating them: building
    ViT-H/14 for real takes seconds and gigabytes, too much for a table of every preset."""
    width, mlp_dim = config.width, config.mlp_dim
    layer_norm = 2 * width
    patch_embed = config.embed_in_chans * config.patch_size**2 * width
    patch_embed += width if config.patch_bias else 0
    pre_norm = layer_norm if config.pre_norm else 0
    layer_scale = 2 * width if config.layer_scale_init is not None else 0
    patch_embed += _resnet_cost(config)[1]
    class_token = width if config.class_token else 0
    positions = position_scheme(config).count_parameters()  # every block's tables too
    registers = config.reg_tokens * width

    qkv = width * 3 * width + (3 * width if config.qkv_bias else 0)
    out_proj = width * width + width
    mlp = width * mlp_dim + mlp_dim + mlp_dim * width + width
    block = 2 * layer_norm + qkv + out_proj + mlp + layer_scale

    features = width
    pre_logits = 0
    if config.representation_size:
        features = config.representation_size
        pre_logits = width * features + features
    head = features * config.num_classes + config.num_classes
    embeddings = patch_embed + class_token + registers + positions + pre_norm
    pool = 0
    if config.classifier == "map":  # query, q, kv, proj, LayerNorm, MLP
        linear_biases = 4 * width if config.qkv_bias else width
        pool = width + 4 * width * width + linear_biases + layer_norm + mlp
    return embeddings + config.depth * block + layer_norm + pool + pre_logits + head


def check_buildable(config: ViTConfig) -> None:
    """Refuse, before anything is allocated, a model whose images have more than MOST_PATCHES
    patches or whose parameters (fp32) need more memory than is free where it is built on the
    CPU: a config from a file or a flag may ask for sixteen million blocks or an 8192 px grid,
    which would otherwise end in an allocator traceback or minutes of swapping."""
    height, width = config.grid_size
    if height * width > MOST_PATCHES:
        raise ConfigError(
            f"img_size {config.img_size[0]}x{config.img_size[1]} at patch_size "
            f"{config.patch_size} gives {height * width:,} patches per image; at most "
            f"{MOST_PATCHES:,} are supported (attention costs their square)"
        )
    if torch.get_default_device().type != "cpu":  # a shape-only build on "meta" takes nothing
        return
    params = count_params(config)
    check_memory(
        4 * params,
        f"a model of {params:,} parameters (depth {config.depth}, width {config.width}, "
        f"mlp_dim {config.mlp_dim})",
        error=ConfigError,
    )
