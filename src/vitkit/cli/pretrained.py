"""`vitkit pretrained`: the named weights `load_model` downloads, and whether they are cached."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from vitkit.download import default_cache_dir
from vitkit.models.config import list_models
from vitkit.weights.registry import get_pretrained, list_pretrained, weights_path, weights_url


def format_table(names: Iterable[str]) -> str:
    """One row per entry: resolution, classes, whether it is in the cache, and its URL."""
    rows = [f"{'name':<28} {'px':>4} {'classes':>7} {'cached':<6} url"]
    for name in names:
        weights = get_pretrained(name)
        cached = "yes" if weights_path(weights).is_file() else "no"
        rows.append(
            f"{name:<28} {weights.resolution:>4} {weights.num_classes:>7} {cached:<6} "
            f"{weights_url(weights)}"
        )
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    names = list_pretrained()
    print(format_table(names))
    print(
        f"\nvitkit.load_model(NAME) downloads to {default_cache_dir() / 'weights'} ($VITKIT_HOME) "
        "on first use; Google's weights take inputs in [-1, 1] (mean = std = 0.5). Hugging Face "
        "hub models: hf:ORG/NAME. Offline: VITKIT_OFFLINE=1."
    )
    presets = {name.lower() for name in list_models()}
    architectures = {get_pretrained(name).architecture for name in names}
    if unbuilt := sorted(arch for arch in architectures if arch.lower() not in presets):
        print(f"Downloadable, but not yet buildable by vitkit: {', '.join(unbuilt)}.")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrained", help="list the named pretrained weights load_model can download"
    )
    parser.set_defaults(run=run, command="pretrained")
