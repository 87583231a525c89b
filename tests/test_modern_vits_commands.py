"""Every command on the ViTs people hold today (tests/test_modern_vits.py's families, made by
timm and transformers with random weights), with a new user's folder of images (conftest's
`user_folder`): fine-tune from the checkpoint, `eval` and `classify` the fine-tuned model (the
same count of correct images, class by class, as the run's own eval.json), `fewshot` and `figures`
on the pre-trained checkpoint itself, and `convert` out to a format that holds it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from test_hf_clip import clip_vision
from test_hf_siglip import siglip_vision
from test_modern_vits import TINY, hf_dinov2, hf_dinov3, timm_model
from test_user_folder import NAMES, correct_per_class, images_in, vitkit, whole

# A family as a user holds it: how to write it into a folder, the settings its file cannot say
# (as `vitkit train`'s init_settings), and the format to convert the fine-tuned model into.
Writer = Callable[[Path], Path]


def timm_file(name: str, size: int) -> Writer:
    def write(folder: Path) -> Path:
        model = timm_model(name, size)
        path = folder / f"{name}.safetensors"
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, path)
        return path

    return write


def transformers_folder(registers: int) -> Writer:
    def write(folder: Path) -> Path:
        hf_dinov2(registers).save_pretrained(folder / "dinov2")
        return folder / "dinov2"

    return write


def transformers_clip(folder: Path) -> Path:
    clip_vision("quick_gelu").save_pretrained(folder / "clip")
    return folder / "clip"


def transformers_siglip(folder: Path) -> Path:
    siglip_vision().save_pretrained(folder / "siglip")
    return folder / "siglip"


def transformers_dinov3(folder: Path) -> Path:
    hf_dinov3().save_pretrained(folder / "dinov3")
    return folder / "dinov3"


HEADS = f"num_heads={TINY['num_heads']}"
FAMILIES: dict[str, tuple[Writer, str]] = {
    "timm-reg4-gap": (timm_file("vit_medium_patch16_reg4_gap_256", 32), HEADS),
    "timm-deit3": (timm_file("deit3_small_patch16_224", 32), f"{HEADS},classifier=token"),
    "timm-dinov2-reg4": (
        timm_file("vit_small_patch14_reg4_dinov2", 28),
        f"{HEADS},classifier=token",
    ),
    "timm-clip": (
        timm_file("vit_base_patch16_clip_224", 32),
        f"{HEADS},classifier=token,gelu=exact",
    ),
    "timm-siglip": (timm_file("vit_base_patch16_siglip_224", 32), HEADS),
    "transformers-dinov2": (transformers_folder(0), ""),
    "transformers-dinov2-reg4": (transformers_folder(4), ""),
    "transformers-clip": (transformers_clip, ""),
    "transformers-siglip": (transformers_siglip, ""),
    # Rotary positions: a timm DINOv3 file records no image size (read at DINOv3's 224 px).
    "timm-dinov3": (timm_file("vit_small_patch16_dinov3", 64), f"{HEADS},classifier=token"),
    "transformers-dinov3": (transformers_dinov3, ""),
}


def loading_flags(settings: str) -> list[str]:
    """`--num-heads`/`--classifier` for the commands that read the checkpoint directly."""
    flags = []
    for part in filter(None, settings.split(",")):
        name, value = part.split("=")
        flags += [f"--{name.replace('_', '-')}", value]
    return flags


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_command_on_a_held_vit(
    family: str, user_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    write, settings = FAMILIES[family]
    source = write(tmp_path)
    flags = loading_flags(settings)

    # Fine-tune at the checkpoint's own resolution (resolution=0), no test-time flips, so that
    # eval.json's top-1 is the plain forward pass every other command runs.
    run = tmp_path / "run"
    init_settings = [f"init_settings={settings}"] if settings else []
    vitkit("train", "--preset", "tiny", "--data", user_folder, "--out", run, f"init={source}",
           "resolution=0", "steps=6", "eval_flip=false", *init_settings)  # fmt: skip
    report = json.loads((run / "eval.json").read_text())
    test_images = images_in(user_folder / "test")
    sizes = {name: sum(path.parent.name == name for path in test_images) for name in NAMES}
    reference = {name: whole(report["per_class"][name], sizes[name]) for name in NAMES}

    vitkit("eval", "--checkpoint", run, "--data", user_folder, "--out", tmp_path / "eval")
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert {name: whole(evaluated["per_class"][name], sizes[name]) for name in NAMES} == reference

    records = json.loads(vitkit("classify", run, user_folder / "test", "--json"))
    by_path = {Path(record["path"]): record for record in records}
    predicted = []
    for path in test_images:
        labels = {entry["index"]: entry["label"] for entry in by_path[path]["predictions"]}
        predicted.append(labels[int(np.argmax(by_path[path]["logits"]))])
    assert len(set(predicted)) > 1, "one class for every image: the counts would prove nothing"
    assert correct_per_class(test_images, predicted) == reference

    # The pre-trained checkpoint itself: its representation and its attention maps.
    vitkit("fewshot", "--checkpoint", source, "--data", user_folder, "--out", tmp_path / "fewshot",
           "--shots", "1,2", "--seeds", "1", "--holdout-per-class", "5", *flags)  # fmt: skip
    fewshot = json.loads((tmp_path / "fewshot" / "fewshot.json").read_text())
    assert set(fewshot["shots"]) == {"1", "2"}
    vitkit("figures", "--checkpoint", source, "--data", user_folder, "--out", tmp_path / "figures",
           "--images", "4", "--shown", "2", *flags)  # fmt: skip
    assert (tmp_path / "figures" / "attention_rollout.png").stat().st_size > 1000

    # Out again: the fine-tuned model to timm (which holds every one of these), built by the
    # printed line, gives the run's logits.
    printed = vitkit("convert", run, tmp_path / "out.safetensors", "--to", "timm")
    line = next(text for text in printed.splitlines() if text.startswith("build it with: "))
    namespace: dict[str, object] = {"timm": timm}
    exec(line.removeprefix("build it with: "), namespace)  # noqa: S102
    rebuilt = namespace["model"].eval()
    from vitkit import load_model

    model = load_model(run)
    pixels = torch.randn(2, 3, *model.config.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (rebuilt(pixels) - model(pixels)).abs().max().item() <= 1e-5
