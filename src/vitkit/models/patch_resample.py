"""Patch-size resampling (FlexiViT, Beyer et al. 2023): the patch embedding for another patch size.

Resizing an image by p'/p resizes each of its p x p patches to p' x p' by one linear map B
(p'^2 x p^2 values). A kernel w' for the new size should give each resized patch the token the
old kernel gave the original: <B x, w'> = <x, w> for every patch x, that is B^T w' = w. The
least-squares solution w' = pinv(B^T) w meets this exactly when the patch grows (B^T has full row
rank) and as nearly as a smaller patch allows when it shrinks. Resizing the kernel like an image
instead scales every token by the change in area and blurs what the kernel reads; the benchmark
`benchmarks/patch_resample.py` measures what that costs a trained model.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F

from vitkit.errors import ConfigError
from vitkit.resources import check_memory

PatchInterpolation = Literal["bilinear", "bicubic"]


def patch_resize_matrix(
    old_size: tuple[int, int],
    new_size: tuple[int, int],
    *,
    interpolation: PatchInterpolation = "bilinear",
    antialias: bool = True,
) -> torch.Tensor:
    """B, (new_h*new_w, old_h*old_w) in float64: what `F.interpolate` does to a flattened
    (row-major) patch of `old_size` resized to `new_size`, read off by resizing each basis image."""
    old_h, old_w = old_size
    basis = torch.eye(old_h * old_w, dtype=torch.float64).reshape(-1, 1, old_h, old_w)
    resized = F.interpolate(
        basis, size=new_size, mode=interpolation, antialias=antialias, align_corners=False
    )
    return resized.reshape(old_h * old_w, -1).T


@functools.lru_cache(maxsize=32)
def _resampling_matrix(
    old_size: tuple[int, int],
    new_size: tuple[int, int],
    interpolation: PatchInterpolation,
    antialias: bool,
) -> torch.Tensor:
    """pinv(B^T), (new_h*new_w, old_h*old_w): kept, as a model with dynamic patch sizes asks for
    the same few on every forward pass."""
    resize = patch_resize_matrix(
        old_size, new_size, interpolation=interpolation, antialias=antialias
    )
    return torch.linalg.pinv(resize.T)


def resample_patch_embed(
    weight: torch.Tensor,
    new_size: int | tuple[int, int],
    *,
    interpolation: PatchInterpolation = "bilinear",
    antialias: bool = True,
) -> torch.Tensor:
    """The patch-embedding kernel `weight` (D, C, p_h, p_w) for patches of `new_size`: each
    (p_h, p_w) filter mapped by pinv(B^T) (see the module docstring), computed in float64 and
    returned in `weight`'s dtype and device. Differentiable, so a model trained with several
    patch sizes learns one underlying kernel. `interpolation` and `antialias` describe how the
    images are resized (bilinear with antialiasing: big_vision's FlexiViT; timm's default is
    bicubic)."""
    if weight.ndim != 4:
        raise ValueError(f"expected a kernel shaped (D, C, p, p), got {tuple(weight.shape)}")
    new_pair = (new_size, new_size) if isinstance(new_size, int) else tuple(new_size)
    old_pair = (weight.shape[-2], weight.shape[-1])
    if len(new_pair) != 2 or min(new_pair) < 1:
        raise ValueError(f"patch size {new_size!r}: expected a positive size or (height, width)")
    if new_pair == old_pair:
        return weight
    # B and pinv's SVD hold about four float64 copies of a (new_h*new_w, old_h*old_w) matrix.
    check_memory(
        4 * 8 * new_pair[0] * new_pair[1] * old_pair[0] * old_pair[1],
        f"resampling the {old_pair[0]}x{old_pair[1]} patch kernel to {new_pair[0]}x{new_pair[1]}",
        error=ConfigError,
        hint="choose a patch size nearer the checkpoint's",
    )
    matrix = _resampling_matrix(old_pair, new_pair, interpolation, antialias)
    with torch.autocast(weight.device.type, enabled=False):  # float64 stays float64
        filters = weight.reshape(-1, old_pair[0] * old_pair[1]).to(torch.float64)
        resampled = filters @ matrix.to(weight.device).T  # each row w -> pinv(B^T) w
    return resampled.reshape(*weight.shape[:2], *new_pair).to(weight.dtype)
