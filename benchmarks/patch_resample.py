"""A trained model at other patch sizes: test top-1 with the patch kernel resampled by the
pseudo-inverse of the patch resize (FlexiViT, `vitkit.resample_patch_embed`) against the kernel
resized like an image (bilinear), plain and scaled by the change in patch area.

Each row builds the model for (patch size, resolution) with `load_model(..., patch_size=P,
img_size=R)` (position embeddings resized to the new grid as the paper does for resolution), then
evaluates the CIFAR-10 test set resized to R. The rows where both sizes double keep the patch grid:
there the pseudo-inverse gives every upsampled patch the token of the original one.

    .venv/bin/python benchmarks/patch_resample.py --model runs/some-run \\
        --data ../shared/data/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from vitkit.data.sources import open_dataset
from vitkit.devices import describe_machine
from vitkit.evaluation.accuracy import top1_accuracy
from vitkit.models.vit import VisionTransformer
from vitkit.weights import load_model

KERNELS = ("pseudo-inverse", "bilinear", "bilinear x area")


def with_kernel(model: VisionTransformer, original: torch.Tensor, kernel: str) -> None:
    """Replace the resampled kernel of `model` by one of the naive resizes of `original`."""
    size = model.config.patch_size
    if kernel == "pseudo-inverse":
        return
    resized = F.interpolate(original, size=(size, size), mode="bilinear", antialias=True)
    if kernel == "bilinear x area":  # a patch of more pixels sums more of them
        resized = resized * (original.shape[-1] / size) ** 2
    with torch.no_grad():
        model.patch_embed.proj.weight.copy_(resized)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="a trained model (anything load_model reads)"
    )
    parser.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N test images")
    args = parser.parse_args()
    base = load_model(args.model)
    patch, (resolution, _) = base.config.patch_size, base.config.img_size
    original = base.patch_embed.proj.weight.detach().clone()
    test = open_dataset(args.data, split="test")
    if args.limit:
        test = test.subset(np.arange(min(args.limit, len(test))))
    settings = [
        (patch, resolution),
        (2 * patch, 2 * resolution),
        (patch // 2, resolution),
        (2 * patch, resolution),
        (patch // 2, resolution // 2),
    ]
    print(f"{args.model}: {base.config.describe()}; {len(test)} test images; {describe_machine()}")
    print("| patch | resolution | grid | " + " | ".join(KERNELS) + " |")
    print("| ---: | ---: | ---: |" + " ---: |" * len(KERNELS))
    for size, pixels in settings:
        if size < 1:
            continue
        row = []
        for kernel in KERNELS[: 1 if size == patch else len(KERNELS)]:
            model = load_model(args.model, patch_size=size, img_size=pixels)
            with_kernel(model, original, kernel)
            start = time.perf_counter()
            accuracy = top1_accuracy(model, test, preprocessing=model.preprocessing)
            row.append(f"{accuracy:.2%} ({time.perf_counter() - start:.0f} s)")
        row += ["the same"] * (len(KERNELS) - len(row))  # the original kernel, not resampled
        grid = "x".join(map(str, model.config.grid_size))
        print(f"| {size} | {pixels} | {grid} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
