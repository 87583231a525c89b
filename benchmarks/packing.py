"""Inference on a batch of images of mixed sizes: vitkit's packed sequences (NaViT,
`vitkit.models.packing.forward_packed`) against one forward pass per image, against padding every
image to the largest height and width, and against timm's NaFlexViT of the same shape (each image
a row of patches padded to the longest, with its validity mask: the way a timm user runs it).

The batch: --images images whose sides are drawn from multiples of the patch size between
--min-side and --max-side (so aspect ratios vary), the demo's transformer shape (width 128, 6
blocks, 4 heads, patch 4, mean pooling), random weights. Each mode runs in its own process, so
its peak resident memory is its own: images per second (best of --repeats after one warm-up
pass) and the peak memory above the process's baseline.

    .venv/bin/python benchmarks/packing.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import vitkit
from vitkit.devices import describe_machine
from vitkit.models.packing import forward_packed

PATCH = 4
MODES = {
    "vitkit, one image at a time": "one_by_one",
    "vitkit, padded to the largest size": "padded",
    "vitkit, packed into one sequence": "packed",
    "vitkit, packed, sequences of at most 512 tokens": "packed512",
    "timm NaFlexViT, rows of patches padded to the longest": "timm",
}


def mixed_images(count: int, low: int, high: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    sides = torch.arange(low, high + 1, PATCH)
    picks = torch.randint(len(sides), (count, 2), generator=generator)
    return [torch.randn(3, int(sides[h]), int(sides[w]), generator=generator) for h, w in picks]


def vitkit_runner(mode: str, images: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    model = vitkit.create_model("ViT-CIFAR/4", dynamic_img_size=True).eval()
    if mode == "one_by_one":
        return lambda: torch.cat([model(image.unsqueeze(0)) for image in images])
    if mode == "padded":
        height = max(image.shape[1] for image in images)
        width = max(image.shape[2] for image in images)
        padded = torch.stack([
            F.pad(image, (0, width - image.shape[2], 0, height - image.shape[1]))
            for image in images
        ])  # fmt: skip
        return lambda: model(padded)
    max_tokens = 512 if mode == "packed512" else None
    return lambda: forward_packed(model, images, max_tokens=max_tokens)


def timm_runner(images: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    from timm.models.naflexvit import NaFlexVit, NaFlexVitCfg, batch_patchify

    cfg = NaFlexVitCfg(patch_size=PATCH, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0,
                       pos_embed_grid_size=(8, 8), global_pool="avg")  # fmt: skip
    model = NaFlexVit(cfg=cfg, num_classes=10).eval()
    rows = [batch_patchify(image.unsqueeze(0), (PATCH, PATCH))[0][0] for image in images]
    grids = [(image.shape[1] // PATCH, image.shape[2] // PATCH) for image in images]
    longest = max(len(row) for row in rows)
    patches = torch.zeros(len(rows), longest, rows[0].shape[-1])
    coords = torch.zeros(len(rows), longest, 2, dtype=torch.long)
    valid = torch.zeros(len(rows), longest, dtype=torch.bool)
    for index, (row, (height, width)) in enumerate(zip(rows, grids, strict=True)):
        patches[index, : len(row)] = row
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        coords[index, : len(row)] = torch.stack([ys.flatten(), xs.flatten()], dim=-1)
        valid[index, : len(row)] = True
    batch = {"patches": patches, "patch_coord": coords, "patch_valid": valid}
    return lambda: model(batch)


def measure(mode: str, args: argparse.Namespace) -> dict[str, float]:
    """Images per second and peak memory (MiB above the baseline) of one mode, in this process."""
    images = mixed_images(args.images, args.min_side, args.max_side)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = timm_runner(images) if mode == "timm" else vitkit_runner(mode, images)
    best = float("inf")
    with torch.no_grad():
        run()
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"images_per_second": len(images) / best, "peak_mib": (peak - baseline) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--min-side", type=int, default=16)
    parser.add_argument("--max-side", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", choices=list(MODES.values()), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # a child process: one mode, its result as JSON
        print(json.dumps(measure(args.mode, args)))
        return
    images = mixed_images(args.images, args.min_side, args.max_side)
    tokens = sum(image.shape[1] * image.shape[2] // PATCH**2 for image in images)
    print(f"{len(images)} images, sides {args.min_side}-{args.max_side} px, {tokens} patch "
          f"tokens in all; {describe_machine()}")  # fmt: skip
    print("| mode | images/s | peak memory above baseline |")
    print("| --- | ---: | ---: |")
    for name, mode in MODES.items():
        command = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True)
                            .stdout.strip().splitlines()[-1])  # fmt: skip
        print(f"| {name} | {result['images_per_second']:.0f} | {result['peak_mib']:.0f} MiB |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
