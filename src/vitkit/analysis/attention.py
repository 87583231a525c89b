"""What the attention does: rollout maps (paper Fig. 6) and mean attention distance (Fig. 7 right).

Both take the per-block attention weights of `VisionTransformer.forward_attention`: a list over
blocks of (N, heads, T, T) tensors whose rows (queries) sum to 1, where the first
`num_prefix_tokens` tokens are the [class] token (if any) and the rest the patch grid in
row-major order.
"""

from __future__ import annotations

import torch


def output_token_attention(
    weights: torch.Tensor, num_prefix_tokens: int, classifier: str
) -> torch.Tensor:  # (N, heads, T, T) -> (N, heads, patches)
    """How much the token(s) the head reads attend to each patch: the [class] token's row for
    classifier "token", the mean of the patch tokens' rows for "gap" (the head averages them)."""
    if classifier == "token":
        return weights[:, :, 0, num_prefix_tokens:]
    return weights[:, :, num_prefix_tokens:, num_prefix_tokens:].mean(dim=2)


def rollout_matrix(weights: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020), (N, T, T): row i says how much of input token j
    flows into output token i.

    Per block the heads are averaged, the identity is added for the residual connection and the
    rows renormalised, and the blocks' matrices are multiplied, later blocks on the left:
    rollout = A_L ... A_1.
    """
    if not weights:
        raise ValueError("attention rollout needs the weights of at least one block")
    rollout = None
    for block in weights:
        mixed = block.mean(dim=1)  # (N, T, T)
        mixed = mixed + torch.eye(mixed.shape[-1], dtype=mixed.dtype, device=mixed.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout


def attention_rollout(
    weights: list[torch.Tensor], num_prefix_tokens: int, classifier: str
) -> torch.Tensor:
    """(N, patches): the rollout from the output token(s) the head reads to every patch."""
    rollout = rollout_matrix(weights).unsqueeze(1)
    return output_token_attention(rollout, num_prefix_tokens, classifier).squeeze(1)


def patch_distances(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(h*w, h*w) Euclidean distances in pixels between the centres of the grid's patches."""
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64),
        torch.arange(grid[1], dtype=torch.float64),
        indexing="ij",
    )
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1) * patch_size
    return torch.cdist(centres, centres)


def mean_attention_distance(
    weights: list[torch.Tensor], grid: tuple[int, int], patch_size: int, num_prefix_tokens: int
) -> torch.Tensor:
    """(blocks, heads) mean attention distance in pixels, averaged over the images and queries.

    For each patch query, the distance to every patch key weighted by the attention it pays it:
    the "receptive field size" of the head. Attention to the [class] token has no place in the
    image, so the weights over patch keys are renormalised to sum to 1 first.
    """
    distances = patch_distances(grid, patch_size)
    per_block = []
    for block in weights:
        patch_weights = block[:, :, num_prefix_tokens:, num_prefix_tokens:].double()
        if patch_weights.shape[-1] != distances.shape[0]:
            raise ValueError(
                f"attention over {patch_weights.shape[-1]} patches does not match the "
                f"{grid[0]}x{grid[1]} grid"
            )
        patch_weights = patch_weights / patch_weights.sum(dim=-1, keepdim=True)
        per_query = (patch_weights * distances.to(patch_weights.device)).sum(dim=-1)  # (N, H, Q)
        per_block.append(per_query.mean(dim=(0, 2)))
    return torch.stack(per_block).float()
