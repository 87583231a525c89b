"""Patch embedding: cut the image into PxP patches and project each to D dimensions.

A convolution with kernel = stride = P is exactly "flatten each patch and apply one shared linear
map" (equation 1 of the paper), computed without materialising the patches. In the hybrids a
ResNet (`backbone`) first turns the image into a feature map, and the patches are cut from that.
A model with dynamic patch sizes cuts other sizes on request, its kernel resampled for each
(models/patch_resample.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.models.patch_resample import resample_patch_embed


class PatchEmbed(nn.Module):
    def __init__(
        self,
        patch_size: int,
        in_chans: int,
        width: int,
        *,
        backbone: nn.Module | None = None,
        backbone_stride: int = 1,
        backbone_chans: int | None = None,
        bias: bool = True,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.backbone_stride = backbone_stride  # image pixels per position of what is cut
        self.stride = patch_size * backbone_stride  # image pixels per token along each side
        if backbone is not None:
            self.backbone = backbone  # no attribute at all for plain ViTs: unchanged state dict
        embed_chans = in_chans if backbone_chans is None else backbone_chans
        self.proj = nn.Conv2d(
            embed_chans, width, kernel_size=patch_size, stride=patch_size, bias=bias
        )

    def grid_size(self, images: torch.Tensor, patch_size: int | None = None) -> tuple[int, int]:
        """The patch grid of `images` (N, C, H, W) cut into patches of `patch_size` (the built
        one by default), with a clear error for unusable sizes."""
        if images.ndim != 4:
            raise ValueError(
                f"Expected a batch of images shaped (N, C, H, W), got shape {tuple(images.shape)}."
            )
        _, channels, height, width = images.shape
        if channels != self.in_chans:
            hint = " (NHWC input? use images.permute(0, 3, 1, 2))" if width == self.in_chans else ""
            raise ValueError(
                f"Expected {self.in_chans} input channels, got {channels} in an input of shape "
                f"{tuple(images.shape)}{hint}."
            )
        patch_size = patch_size or self.patch_size
        patch = self.backbone_stride * patch_size
        if height % patch or width % patch:
            fit_h, fit_w = (max(patch, side // patch * patch) for side in (height, width))
            what = "patch size" if patch == patch_size else "total stride (ResNet x patch)"
            raise ValueError(
                f"Image size {height}x{width} is not a multiple of the {what} {patch}: "
                f"resize or crop to a multiple of {patch} (e.g. {fit_h}x{fit_w})."
            )
        return (height // patch, width // patch)

    def forward(self, images: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
        """(N, C, H, W) -> (N, h*w, D), in patches of `patch_size` (the built one by default)."""
        if "backbone" in self._modules:
            images = self.backbone(images)  # (N, C', H/s, W/s)
        if patch_size is None or patch_size == self.patch_size:
            tokens = self.proj(images)
        else:
            weight = resample_patch_embed(self.proj.weight, patch_size)
            tokens = F.conv2d(images, weight, self.proj.bias, stride=patch_size)
        return tokens.flatten(2).transpose(1, 2)
