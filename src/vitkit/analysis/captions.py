"""Captions for the inspection figures that say what each figure shows for this model, in numbers
computed from the figure's own data, and then what the paper reports for its models, so that a
reader can tell agreement from disagreement.

A caption that states the paper's finding beside a plot that shows something else misleads: the
demo's hybrid, for one, has no local heads in its first block, as the paper notes for hybrids.
"""

from __future__ import annotations

import torch

from vitkit.analysis.attention import patch_distances

# A head is "local" when its mean attention distance is under this share of the distance that
# uniform attention over the image gives (the global end of the scale).
LOCAL_SHARE = 0.5

PAPER_ATTENTION_DISTANCE = (
    "The paper (ViT-L/16, Fig. 7 right, section 4.5): already in the lowest layers some heads "
    "attend to most of the image while others have consistently small distances; this local "
    "attention is less pronounced in hybrids, whose ResNet mixes neighbouring pixels first; and "
    "the distance grows with depth."
)
PAPER_POSITION_SIMILARITY = (
    "The paper (ViT-L/32, Fig. 7 centre): closer patches have more similar position embeddings, "
    "and a row-column structure appears, patches in the same row or column being alike."
)
PAPER_EMBEDDING_FILTERS = (
    "The paper (ViT-L/32, Fig. 7 left): the top components resemble plausible basis functions "
    "for a low-dimensional representation of the fine structure within each patch."
)
PAPER_ROLLOUT = (
    "The paper (Fig. 6): the output token attends to the image regions that are semantically "
    "relevant for classification."
)


def uniform_attention_distance(grid: tuple[int, int], pixels_per_token: int) -> float:
    """The mean attention distance, in pixels, of a head that attends to every patch equally."""
    return float(patch_distances(grid, pixels_per_token).mean())


def attention_distance_caption(
    distance: torch.Tensor, grid: tuple[int, int], pixels_per_token: int
) -> str:
    """What the (blocks, heads) mean attention distances in pixels show: the spread of the first
    and last blocks, how many first-block heads are local, whether the distance grows with depth."""
    uniform = uniform_attention_distance(grid, pixels_per_token)
    blocks, heads = distance.shape
    first, last = distance[0], distance[-1]
    local = int((first < LOCAL_SHARE * uniform).sum())
    means = distance.mean(dim=1)
    if means[-1] > means[0] * 1.1:
        trend = (
            f"The mean over heads grows with depth, from {means[0]:.1f} px in block 1 to "
            f"{means[-1]:.1f} px in block {blocks}."
        )
    elif means[-1] < means[0] / 1.1:
        trend = (
            f"The mean over heads shrinks with depth, from {means[0]:.1f} px in block 1 to "
            f"{means[-1]:.1f} px in block {blocks}."
        )
    else:
        trend = (
            f"The mean over heads stays about level with depth ({means[0]:.1f} px in block 1, "
            f"{means[-1]:.1f} px in block {blocks})."
        )
    return (
        f"Mean attention distance of each head against depth: how far in pixels each head "
        f"looks, averaged over the images. This model ({blocks} blocks of {heads} heads, "
        f"{pixels_per_token} px per token): block 1's heads span {first.min():.1f}-"
        f"{first.max():.1f} px, and {local} of {heads} are local (under half the "
        f"{uniform:.1f} px that uniform attention over the image gives); block {blocks}'s span "
        f"{last.min():.1f}-{last.max():.1f} px. {trend} {PAPER_ATTENTION_DISTANCE}"
    )


def position_similarity_caption(similarity: torch.Tensor) -> str:
    """What the (h, w, h, w) cosine similarities of the position embeddings show: how often a
    patch's most similar other position is a neighbour, and whether its row and column are more
    alike than the rest."""
    height, width = similarity.shape[:2]
    count = height * width
    flat = similarity.reshape(count, count).double()
    rows = torch.arange(count) // width
    columns = torch.arange(count) % width
    others = ~torch.eye(count, dtype=torch.bool)
    nearest = flat.masked_fill(~others, float("-inf")).argmax(dim=1)
    row_step = (rows[nearest] - rows).abs()
    column_step = (columns[nearest] - columns).abs()
    neighbour = float(((row_step <= 1) & (column_step <= 1)).double().mean())
    same_line = (rows[:, None] == rows[None, :]) | (columns[:, None] == columns[None, :])
    in_line = float(flat[same_line & others].mean())
    off_line = float(flat[~same_line].mean()) if (~same_line).any() else float("nan")
    return (
        f"Cosine similarity of each patch's position embedding (tile) to those of all patches. "
        f"This model ({height}x{width} patches): for {neighbour:.0%} of the patches the most "
        f"similar other position is an adjacent one (of 8 around it; chance would be about "
        f"{8 / max(count - 1, 1):.0%}), and positions in the same row or column average "
        f"{in_line:.2f} against {off_line:.2f} for the rest. {PAPER_POSITION_SIMILARITY}"
    )


def embedding_filters_caption(filters: torch.Tensor, shown: int) -> str:
    """What the principal components of the (D, C, k, k) pixel filters show: how much of the
    filters' variance the `shown` components carry."""
    flat = filters.detach().double().flatten(1)
    singular = torch.linalg.svdvals(flat - flat.mean(dim=0, keepdim=True))
    variance = singular**2 / (singular**2).sum()
    return (
        f"The first {shown} principal components of the {filters.shape[0]} filters that first "
        f"see pixels ({filters.shape[-1]}x{filters.shape[-1]} px): the image patterns the "
        f"embedding is most sensitive to. This model: they carry {variance[:shown].sum():.0%} "
        f"of the filters' variance, the first alone {variance[0]:.0%}. "
        f"{PAPER_EMBEDDING_FILTERS}"
    )


def rollout_caption(rollout: torch.Tensor) -> str:
    """What the (N, patches) attention rollout maps show: how concentrated they are."""
    patches = rollout.shape[-1]
    top = max(1, patches // 4)
    weights = rollout.double() / rollout.double().sum(dim=-1, keepdim=True)
    share = float(weights.sort(dim=-1, descending=True).values[:, :top].sum(dim=-1).mean())
    return (
        f"Attention rollout (Abnar & Zuidema 2020) from the output token to the input, each image "
        f"weighted by it. This model: the quarter of the patches it weights most gets {share:.0%} "
        f"of the attention on average over these {len(rollout)} images (an even spread would give "
        f"them 25%). {PAPER_ROLLOUT}"
    )
