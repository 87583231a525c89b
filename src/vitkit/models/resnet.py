"""The hybrids' ResNet stem (section 3.1 of the paper, "Hybrid Architecture"), as Google's vit_jax
`models_resnet` builds it: a BiT-style ResNet v1.5 whose feature map the transformer embeds.

images (N, C, H, W)
  -> root: StdConv 7x7 stride 2, GroupNorm, ReLU, max-pool 3x3 stride 2   (N, w, H/4, W/4)
  -> stage i (stride 1 for the first, 2 after): bottleneck units           (N, 4*w*2^i, ...)
     post-activation: conv1x1-GN-ReLU-conv3x3(stride)-GN-ReLU-conv1x1-GN, ReLU(residual + y)

Every convolution is weight-standardised on each forward pass, GroupNorm has 32 groups, and the
strided ops pad as TensorFlow's 'SAME' (asymmetric for even sizes: the extra row and column at the
bottom/right), which PyTorch's symmetric padding does not reproduce. Two numerics exist,
"google" (vit_jax's) and "timm" (timm's hybrid ViTs'), which differ in their eps only: `NUMERICS`
holds them, the one place the converters read them from. Module names follow timm's ResNetV2.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.models.config import ResNetNumerics


class Numerics(NamedTuple):
    """How one ResNet numerics standardises kernels and normalises features: the eps values a
    checkpoint cannot record, so that its reader and writer must know them."""

    ws_eps: float  # weight standardisation's eps
    ws_eps_in_sqrt: bool  # (w - mean) / sqrt(var + eps) if True, else (w - mean) / (std + eps)
    group_norm_eps: float

    def describe(self) -> str:
        """The numerics in words, for errors that must say what a format's code computes."""
        eps = _eps(self.ws_eps)
        scale = f"sqrt(var + {eps})" if self.ws_eps_in_sqrt else f"(std + {eps})"
        return (
            f"weight standardisation as (w - mean) / {scale} and GroupNorm with eps "
            f"{_eps(self.group_norm_eps)}"
        )


NUMERICS: dict[ResNetNumerics, Numerics] = {
    "google": Numerics(ws_eps=1e-5, ws_eps_in_sqrt=False, group_norm_eps=1e-6),  # vit_jax
    "timm": Numerics(ws_eps=1e-8, ws_eps_in_sqrt=True, group_norm_eps=1e-5),  # StdConv2dSame
}
GROUPS = 32


def _eps(value: float) -> str:
    """An eps as people write it: 1e-5, not Python's 1e-05."""
    return f"{value:.0e}".replace("e-0", "e-")


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad (N, C, H, W) as TensorFlow's 'SAME': the output has ceil(size / stride) positions and
    the odd pixel of padding, if any, goes to the bottom/right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad wants (left, right, top, bottom)
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class StdConv2d(nn.Conv2d):
    """A bias-free convolution whose kernel is standardised per output channel over (in, H, W)
    on every forward pass, with TF-'SAME' padding."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel: int, *, stride: int = 1, numerics: str
    ):
        super().__init__(in_chans, out_chans, kernel, stride=stride, bias=False)
        self.eps, self.eps_in_sqrt, _ = NUMERICS[numerics]

    def standardised_weight(self) -> torch.Tensor:
        weight = self.weight  # (out, in, k, k)
        if self.eps_in_sqrt:  # (w - mean) / sqrt(var + eps), by the kernel timm uses for it
            flat = weight.reshape(1, weight.shape[0], -1)  # batch_norm over each output channel
            return F.batch_norm(flat, None, None, training=True, eps=self.eps).reshape_as(weight)
        mean = weight.mean(dim=(1, 2, 3), keepdim=True)
        var = weight.var(dim=(1, 2, 3), keepdim=True, correction=0)  # population variance
        return (weight - mean) / (var.sqrt() + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, self.standardised_weight(), None, self.stride)


def _group_norm(chans: int, numerics: str) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, chans, eps=NUMERICS[numerics].group_norm_eps)


class Projection(nn.Module):
    """The residual path where channels or stride change: 1x1 StdConv (stride) + GroupNorm."""

    def __init__(self, in_chans: int, out_chans: int, stride: int, numerics: str):
        super().__init__()
        self.conv = StdConv2d(in_chans, out_chans, 1, stride=stride, numerics=numerics)
        self.norm = _group_norm(out_chans, numerics)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Post-activation bottleneck unit; the stride sits in the 3x3 convolution (v1.5)."""

    def __init__(self, in_chans: int, width: int, stride: int, numerics: str):
        super().__init__()
        out_chans = 4 * width
        self.downsample = None
        if in_chans != out_chans or stride != 1:
            self.downsample = Projection(in_chans, out_chans, stride, numerics)
        self.conv1 = StdConv2d(in_chans, width, 1, numerics=numerics)
        self.norm1 = _group_norm(width, numerics)
        self.conv2 = StdConv2d(width, width, 3, stride=stride, numerics=numerics)
        self.norm2 = _group_norm(width, numerics)
        self.conv3 = StdConv2d(width, out_chans, 1, numerics=numerics)
        self.norm3 = _group_norm(out_chans, numerics)
        nn.init.zeros_(self.norm3.weight)  # each unit starts as the identity (Google's init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(residual + y)


class ResNetStage(nn.Module):
    def __init__(self, in_chans: int, width: int, num_units: int, stride: int, numerics: str):
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                Bottleneck(in_chans if i == 0 else 4 * width, width, stride if i == 0 else 1,
                           numerics)
                for i in range(num_units)
            )
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Root(nn.Module):
    def __init__(self, in_chans: int, width: int, numerics: str):
        super().__init__()
        self.conv = StdConv2d(in_chans, width, 7, stride=2, numerics=numerics)
        self.norm = _group_norm(width, numerics)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))  # (N, w, H/2, W/2)
        # Padding with -inf means the padded positions never win the max.
        return F.max_pool2d(pad_same(x, 3, 2, value=-math.inf), 3, 2)  # (N, w, H/4, W/4)


class ResNetStem(nn.Module):
    """Images (N, C, H, W) -> feature map (N, C', H/s, W/s): C' is the root's width, or 4x the
    last stage's; s is 4, doubled by every stage after the first (ViTConfig.resnet_stride)."""

    def __init__(
        self, in_chans: int, layers: tuple[int, ...], width: int = 64, numerics: str = "google"
    ):
        super().__init__()
        self.stem = Root(in_chans, width, numerics)
        stages, chans = [], width
        for i, num_units in enumerate(layers):
            stage_width = width * 2**i
            stages.append(ResNetStage(chans, stage_width, num_units, 1 if i == 0 else 2, numerics))
            chans = 4 * stage_width
        self.stages = nn.Sequential(*stages)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Google's init: LeCun-normal kernels (standardisation makes their scale moot), GroupNorm
        scale 1 and bias 0, except the zero scale that closes each unit."""
        for module in self.modules():
            if isinstance(module, StdConv2d):
                nn.init.normal_(module.weight, std=module.weight[0].numel() ** -0.5)
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.norm3.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(images))
