"""What the embeddings learned: principal components of the patch-embedding filters (paper Fig. 7
left) and the similarity of the position embeddings (Fig. 7 centre)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding_filter_components(kernel: torch.Tensor, count: int = 28) -> torch.Tensor:
    """The first `count` principal components of the patch-embedding filters, (count, C, P, P).

    `kernel` is the patch-embedding convolution's weight (D, C, P, P): D filters, each a P x P
    image. The components are the leading right singular vectors of the centred (D, C*P*P)
    matrix, i.e. the directions in image-patch space the embedding varies along most; their sign
    is arbitrary. The paper shows them as RGB images, each rescaled to [0, 1] (`to_unit_range`).
    """
    if kernel.ndim != 4:
        raise ValueError(f"expected a (D, C, P, P) convolution kernel, got shape {kernel.shape}")
    filters = kernel.detach().double().flatten(1)
    centred = filters - filters.mean(dim=0, keepdim=True)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)
    count = min(count, components.shape[0])
    return components[:count].reshape(count, *kernel.shape[1:]).float()


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Each image of (N, ...) rescaled to [0, 1] by its own minimum and maximum."""
    flat = images.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = (flat.max(dim=1, keepdim=True).values - low).clamp_min(1e-12)
    return ((flat - low) / span).reshape(images.shape)


def position_similarity(
    pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int
) -> torch.Tensor:
    """(h, w, h, w) cosine similarities: entry [i, j] is the map of how similar the position
    embedding of patch (i, j) is to that of every patch of the grid.

    `pos_embed` is a (1, prefix + h*w, D) position embedding: a model's
    `patch_position_embeddings()` (prefix 0), its learned_1d `pos_embed` parameter, or one
    resized with `resize_pos_embed` for another grid; the prefix rows are left out.
    """
    patches = pos_embed.detach().reshape(-1, pos_embed.shape[-1])[num_prefix_tokens:].double()
    height, width = grid
    if patches.shape[0] != height * width:
        raise ValueError(
            f"{patches.shape[0]} patch position embeddings do not fill a {height}x{width} grid"
        )
    unit = F.normalize(patches, dim=-1)
    return (unit @ unit.T).reshape(height, width, height, width).float()
