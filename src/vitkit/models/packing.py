"""Images of different sizes and aspect ratios in one forward pass (NaViT, Dehghani et al. 2023).

The paper's model takes a batch of images of one size. NaViT instead packs the tokens of images
of any size into sequences: each image brings its prefix tokens and its patch tokens with its own
position embeddings (resized to its own grid, as for fine-tuning at another resolution), and a
block-diagonal attention mask, which `scaled_dot_product_attention` takes as it is, lets every
token attend only to its own image. Nothing is resized to a common shape or padded per image, so
a wide image keeps its shape and the compute follows each image's token count. Pooling is per
image; with nothing dropped, the logits equal one forward pass per image. NaViT's token dropping
(a random share of each image's patch tokens left out) makes training steps cheaper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vitkit.errors import ConfigError
from vitkit.models.vit import VisionTransformer
from vitkit.resources import check_memory

# Images' worth of tokens in one packed sequence, for `sequence_length`. Attention over a packed
# sequence costs its length squared, masked or not, so longer sequences waste more; one image per
# sequence would leave the small images' sequences mostly padding. Four keeps both costs small.
IMAGES_PER_SEQUENCE = 4


def sequence_length(model: VisionTransformer, max_tokens: int) -> int:
    """The packed sequence length for images of at most `max_tokens` patches: room for
    IMAGES_PER_SEQUENCE of them with their prefix tokens."""
    return IMAGES_PER_SEQUENCE * (max_tokens + model.config.num_prefix_tokens)


def forward_packed(
    model: VisionTransformer,
    images: Sequence[torch.Tensor],
    *,
    max_tokens: int | None = None,
    keep: float = 1.0,
    generator: torch.Generator | None = None,
    pre_logits: bool = False,
) -> torch.Tensor:
    """Logits (N, num_classes) of `images`, N normalised (C, H_i, W_i) tensors whose sides are
    multiples of the model's patch size, packed as the module docstring says.

    max_tokens: the longest packed sequence; images are placed in order into the first sequence
        with room (one sequence for all by default), and shorter sequences are padded.
    keep: the share of each image's patch tokens kept (at least one), drawn with `generator`
        (NaViT's token dropping, for training); 1 keeps them all.
    pre_logits: the head's input instead of the logits, as `forward_head` gives it.

    Images of sizes other than the model's need a model with dynamic_img_size=True.
    """
    _check(model, images, keep)
    pieces = [_image_tokens(model, image, keep, generator) for image in images]
    packs = _assign([len(piece) for piece in pieces], max_tokens)
    longest = max(sum(len(pieces[index]) for index in pack) for pack in packs)
    _check_attention_fits(model, len(packs), longest)
    tokens, segments = _pack(pieces, packs)
    mask = (segments[:, :, None] == segments[:, None, :]).unsqueeze(1)  # (B, 1, L, L)
    states, _ = model.run_blocks(tokens, mask=mask)
    tokens = model.norm(states[-1])
    pooled = _pool(model, tokens, segments, len(images))
    return model.classify_pooled(pooled, pre_logits=pre_logits)


def _check_attention_fits(model: VisionTransformer, sequences: int, length: int) -> None:
    """Refuse, before the mask is built, packed attention whose (B, 1, L, L) mask and what
    attention makes of it (a float bias, one (B, heads, L, L) score map at a time where SDPA has
    no fused kernel for a mask) need more memory than is free."""
    per_entry = 1 + 4 + 4 * model.config.num_heads  # bool mask, float bias, scores
    check_memory(
        sequences * length * length * per_entry,
        f"attention over {sequences} packed sequence(s) of {length:,} tokens",
        error=ConfigError,
        hint="lower --max-tokens or the batch size",
    )


def _check(model: VisionTransformer, images: Sequence[torch.Tensor], keep: float) -> None:
    """What packing cannot do, refused with the reason."""
    if not images:
        raise ValueError("forward_packed: no images")
    for index, image in enumerate(images):
        if image.ndim != 3:
            raise ValueError(
                f"forward_packed: image {index} has shape {tuple(image.shape)}, not (C, H, W)"
            )
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"forward_packed: keep={keep} is not in (0, 1]")
    if not model.position_scheme.packable:
        scheme = model.position_scheme.name
        raise ValueError(f"forward_packed: {scheme} positions cannot be packed into one sequence")
    if model.config.classifier == "map":
        raise ValueError("forward_packed: attention pooling (classifier='map') is not supported")
    if model.training and model.config.drop_path:
        raise ValueError(
            "forward_packed: stochastic depth would drop whole packed sequences, not images; "
            "train packed with drop_path=0"
        )


def _image_tokens(
    model: VisionTransformer, image: torch.Tensor, keep: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One image's encoder input (prefix + kept patches, D), in the model's token order."""
    tokens = model.embed(image.unsqueeze(0))[0]
    if keep == 1.0:
        return tokens
    prefix = model.config.num_prefix_tokens
    patches = len(tokens) - prefix
    kept = max(1, math.floor(keep * patches))
    chosen = torch.randperm(patches, generator=generator)[:kept].sort().values
    return torch.cat([tokens[:prefix], tokens[prefix + chosen.to(tokens.device)]])


def _assign(lengths: list[int], max_tokens: int | None) -> list[list[int]]:
    """The images of each packed sequence, by index: in order, each into the first with room."""
    if max_tokens is None:
        return [list(range(len(lengths)))]
    packs: list[list[int]] = []
    room: list[int] = []
    for index, length in enumerate(lengths):
        if length > max_tokens:
            raise ValueError(
                f"forward_packed: image {index} has {length} tokens, more than "
                f"max_tokens={max_tokens}"
            )
        target = next((pack for pack, free in enumerate(room) if free >= length), None)
        if target is None:
            packs.append([])
            room.append(max_tokens)
            target = len(packs) - 1
        packs[target].append(index)
        room[target] -= length
    return packs


def _pack(pieces: list[torch.Tensor], packs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (B, L, D), segments (B, L)): the packed sequences, padded with zeros to the
    longest, and each token's image index (-1 for padding)."""
    length = max(sum(len(pieces[index]) for index in pack) for pack in packs)
    rows, segment_rows = [], []
    for pack in packs:
        used = sum(len(pieces[index]) for index in pack)
        filler = pieces[0].new_zeros(length - used, pieces[0].shape[-1])
        rows.append(torch.cat([*(pieces[index] for index in pack), filler]))
        labels = [torch.full((len(pieces[index]),), index) for index in pack]
        segment_rows.append(torch.cat([*labels, torch.full((length - used,), -1)]))
    device = pieces[0].device
    return torch.stack(rows), torch.stack(segment_rows).to(device)


def _pool(
    model: VisionTransformer, tokens: torch.Tensor, segments: torch.Tensor, count: int
) -> torch.Tensor:
    """(N, D): each image's [class] token, or the mean of its patch tokens ("gap")."""
    flat, flat_segments = tokens.flatten(0, 1), segments.flatten()
    starts = torch.ones_like(flat_segments, dtype=torch.bool)
    starts[1:] = flat_segments[1:] != flat_segments[:-1]  # the first token of each image
    prefix = model.config.num_prefix_tokens
    position = torch.arange(len(flat_segments), device=flat.device)
    first = torch.full((count,), -1, dtype=torch.long, device=flat.device)
    image_starts = starts & (flat_segments >= 0)
    first[flat_segments[image_starts]] = position[image_starts]
    if model.config.classifier == "token":
        return flat[first]
    # Which image token each flat token is, counted from its image's first token.
    offset = position - first[flat_segments.clamp(min=0)]
    patch = (flat_segments >= 0) & (offset >= prefix)
    sums = flat.new_zeros(count, flat.shape[-1]).index_add_(0, flat_segments[patch], flat[patch])
    counts = torch.bincount(flat_segments[patch], minlength=count).to(flat.dtype)
    return sums / counts.unsqueeze(-1)
