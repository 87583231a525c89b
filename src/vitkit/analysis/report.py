"""`write_figures`: every inspection figure of the paper for one model, plus an index.html page
whose captions say what each figure shows for this model beside what the paper reports
(analysis/captions.py); `figures_for_dataset`: the same for a class-balanced choice of a
dataset's images.

Figures (PNG): embedding filters (Fig. 7 left), position-embedding similarity (Fig. 7 centre),
mean attention distance (Fig. 7 right), attention rollout maps (Fig. 6) and the last block's
per-head attention of the output token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vitkit.analysis.attention import (
    attention_rollout,
    mean_attention_distance,
    output_token_attention,
)
from vitkit.analysis.captions import (
    attention_distance_caption,
    embedding_filters_caption,
    position_similarity_caption,
    rollout_caption,
)
from vitkit.analysis.embeddings import (
    embedding_filter_components,
    position_similarity,
    to_unit_range,
)
from vitkit.analysis.page import Page
from vitkit.analysis.plots import (
    plot_attention_distance,
    plot_attention_maps,
    plot_embedding_filters,
    plot_head_attention,
    plot_position_similarity,
)
from vitkit.data.arrays import ArrayDataset
from vitkit.data.fewshot import k_shot_indices
from vitkit.data.model_input import eval_batch, pixels_at_resolution
from vitkit.errors import DataError
from vitkit.io import atomic_write_json, read_capped
from vitkit.models.preprocessing import Preprocessing
from vitkit.models.vit import VisionTransformer
from vitkit.weights import load_model

FIGURES_FOLDER = "figures"  # a run's inspection figures, below its folder
# The figures small enough to stand side by side on a page; the attention maps take the width.
SIDE_BY_SIDE = ("embedding_filters.png", "position_similarity.png", "attention_distance.png")
CAPTIONS_NAME = "captions.json"  # figure file name -> its caption, beside the figures
HEADS_CAPTION = (
    "Raw attention of the output token in the last block, one column per head, over the first "
    "images: where each head of the last block looks before the output is read."
)


def pixel_filters(model: VisionTransformer) -> torch.Tensor:
    """The first filters that see pixels, (out, C, k, k): the patch embedding of a ViT; for a
    hybrid, whose embedding reads ResNet features, the ResNet root's 7x7 convolution as applied
    (weight-standardised per output filter)."""
    if model.config.resnet_layers is None:
        return model.patch_embed.proj.weight.detach()
    kernel = model.patch_embed.backbone.stem.conv.weight.detach()
    flat = kernel.flatten(1)
    standardised = (flat - flat.mean(dim=1, keepdim=True)) / flat.std(dim=1, keepdim=True)
    return standardised.reshape(kernel.shape)


@torch.no_grad()
def write_figures(
    model: VisionTransformer,
    images: np.ndarray,
    out_dir: Path,
    *,
    preprocessing: Preprocessing | None = None,
    titles: list[str] | None = None,
    shown: int = 8,
    description: str = "",
) -> dict[str, Path]:
    """Write the figures for `images` (N, H, W, 3) uint8 (all N average into the attention
    distance, the first `shown` get attention maps: all of them when there are fewer) into
    `out_dir`; returns name -> path. `preprocessing`: how the images become inputs (default: the
    model's own record)."""
    if len(images) == 0:
        raise ValueError("write_figures needs at least one image")
    shown = min(shown, len(images))
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model.config
    preprocessing = preprocessing or model.preprocessing
    model.eval()
    device = next(model.parameters()).device
    prefix = config.num_prefix_tokens
    figures: dict[str, Path] = {}

    filters = pixel_filters(model).cpu()
    components = to_unit_range(embedding_filter_components(filters))
    figures["embedding_filters.png"] = plot_embedding_filters(
        components, out_dir / "embedding_filters.png"
    )
    captions = {"embedding_filters.png": embedding_filters_caption(filters, len(components))}
    # Models that add no position embedding to the tokens (pos_embed_type "none", "relative")
    # have nothing to compare: the figure is left out.
    if (positions := model.patch_position_embeddings()) is not None:
        similarity = position_similarity(positions.cpu(), config.grid_size, num_prefix_tokens=0)
        figures["position_similarity.png"] = plot_position_similarity(
            similarity, out_dir / "position_similarity.png"
        )
        captions["position_similarity.png"] = position_similarity_caption(similarity)

    pixels = torch.from_numpy(pixels_at_resolution(images, preprocessing)).permute(0, 3, 1, 2)
    distances = []
    for start in range(0, len(pixels), 64):
        batch = pixels[start : start + 64].to(device)
        inputs = eval_batch(batch, preprocessing)
        weights = [w.cpu() for w in model.forward_attention(inputs)]
        distances.append(
            mean_attention_distance(weights, config.grid_size, config.total_stride, prefix)
            * len(batch)
        )
        if start == 0:
            first_weights = [w[:shown] for w in weights]
    distance = torch.stack(distances).sum(dim=0) / len(pixels)
    figures["attention_distance.png"] = plot_attention_distance(
        distance, config.total_stride, out_dir / "attention_distance.png"
    )
    captions["attention_distance.png"] = attention_distance_caption(
        distance, config.grid_size, config.total_stride
    )

    grid = config.grid_size
    seen = pixels[:shown].permute(0, 2, 3, 1).numpy()  # what the model saw, for display
    rollout = attention_rollout(first_weights, prefix, config.classifier)
    figures["attention_rollout.png"] = plot_attention_maps(
        seen, rollout.reshape(-1, *grid), out_dir / "attention_rollout.png", titles=titles or ()
    )
    captions["attention_rollout.png"] = rollout_caption(rollout)
    last = output_token_attention(first_weights[-1], prefix, config.classifier)
    figures["attention_heads.png"] = plot_head_attention(
        seen, last.reshape(len(seen), -1, *grid), out_dir / "attention_heads.png"
    )
    captions["attention_heads.png"] = HEADS_CAPTION

    atomic_write_json(
        out_dir / "attention_distance.json",
        {"pixels_per_token": config.total_stride, "pixels_by_layer_and_head": distance.tolist()},
    )
    atomic_write_json(out_dir / CAPTIONS_NAME, captions)
    page = Page("vitkit figures")
    page.paragraph(description)
    add_figures(page, out_dir, page_folder=out_dir)
    page.write(out_dir / "index.html")
    figures["index.html"] = out_dir / "index.html"
    return figures


def figures_for_dataset(
    model: VisionTransformer,
    preprocessing: Preprocessing,
    dataset: ArrayDataset,
    out: Path,
    *,
    images: int = 128,
    shown: int = 8,
    label: str = "",
) -> dict[str, Path]:
    """`write_figures` for a class-balanced choice of `images` images of `dataset`, taken class
    after class so that the `shown` ones with attention maps are of different classes; `label`
    names the model and data on the page (and in the error when a class is empty)."""
    num_classes = len(dataset.classes)
    smallest = int(np.bincount(dataset.labels, minlength=num_classes).min())
    if smallest == 0:
        raise DataError(f"{label}: a class has no image to look at")
    per_class = min(smallest, max(1, -(-images // num_classes)))
    chosen = k_shot_indices(dataset.labels, per_class, seed=0, num_classes=num_classes)
    by_class = chosen[np.argsort(dataset.labels[chosen], kind="stable")]
    order = by_class.reshape(num_classes, per_class).T.ravel()[:images]
    return write_figures(
        model,
        dataset.images[order],
        out,
        preprocessing=preprocessing,
        titles=[dataset.classes[index] for index in dataset.labels[order]],
        shown=shown,
        description=f"{label}: {model.config.describe()}; {len(order)} images.",
    )


def add_figures(page: Page, folder: Path, *, page_folder: Path, small_only: bool = False) -> bool:
    """The figures `write_figures` left in `folder`, captioned from its captions.json, onto
    `page` (written in `page_folder`): the small ones side by side, then, unless `small_only`,
    the wide ones (attention maps) one below the other. False, adding nothing, when the folder
    holds no figures."""
    captions_file = folder / CAPTIONS_NAME
    if not captions_file.is_file():
        return False
    captions = json.loads(read_capped(captions_file, 1 << 20, error=DataError))
    small = [name for name in SIDE_BY_SIDE if name in captions]
    page.figure_row([(folder / name, captions[name]) for name in small], folder=page_folder)
    if not small_only:
        for name, caption in captions.items():
            if name not in small:
                page.figure(folder / name, caption, folder=page_folder)
    return True


def write_run_figures(
    run_folder: Path, dataset: ArrayDataset, *, label: str, images: int = 128
) -> Path | None:
    """`figures_for_dataset` for the model a training run saved, into run_folder/figures; the
    folder, or None for a model with no transformer block (depth 0, a plain ResNet), which has
    no attention to show."""
    model = load_model(run_folder)
    if model.config.depth == 0:
        return None
    figures = figures_for_dataset(
        model, model.preprocessing, dataset, run_folder / FIGURES_FOLDER, images=images,
        label=label,
    )  # fmt: skip
    return figures["index.html"].parent
