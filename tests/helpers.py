"""What tests import: where ../shared lives, Google's official reference files, the HTTP server
class of the download tests, `randomise_` and `compare_outputs` for the equivalence tests,
`tiny`, the tiny training preset on a test dataset, with `train_killed_and_resumed`,
`random_test_vit`, and `write_user_folder` with `merge_splits`, a new user's own image folder.
The fixtures that use them are in conftest.py.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import (
    DEFAULT_SIZE_GUIDANCE,
    EventAccumulator,
)
from torch import nn

import vitkit
from vitkit.models.vit import VisionTransformer
from vitkit.training.config import TrainConfig
from vitkit.training.presets import get_preset
from vitkit.training.trainer import train

SHARED = Path(
    os.environ.get("VITKIT_SHARED", Path(__file__).resolve().parents[1].parent / "shared")
)
OFFICIAL_FIXTURE = SHARED / "fixtures" / "official-vit-jax" / "tiny_gap_repr"
# [class] token and position embeddings under the names of timm, transformers and torchvision.
EMBEDDING_NAMES = (
    "cls_token", "pos_embed", "reg_token", "position_embeddings", "class_token", "pos_embedding"
)  # fmt: skip


CIFAR_TAR = SHARED / "data" / "cifar10-jpg.tar.gz"

# Issue 30's new user: photos of four of CIFAR-10's classes in folders named as a person would
# name them, one with a space and one with an umlaut (CIFAR's name -> the user's).
USER_CLASSES = {"airplane": "airplane", "automobile": "sports car", "cat": "Kätzchen",
                "ship": "ship"}  # fmt: skip
USER_IMAGES = {"train": 60, "test": 20}  # per class: few, as the tests run on 2 CPU cores
# How the images are saved, in turn: (Pillow format, mode, extension). Half JPEG, half PNG, in
# the modes cameras, scanners and image editors write (CMYK from print workflows, RGBA from
# screenshots and editors), the extensions in either case.
USER_FORMATS = (
    ("JPEG", "RGB", ".jpg"),
    ("PNG", "RGB", ".png"),
    ("JPEG", "RGB", ".JPG"),
    ("PNG", "L", ".PNG"),
    ("JPEG", "CMYK", ".jpeg"),
    ("PNG", "RGBA", ".png"),
)
USER_SIDES = (24, 96)  # the smallest and largest side of a user's image, in pixels
# What such folders hold besides images: a Finder file at the top, notes among the photos.
USER_JUNK = {
    ".DS_Store": b"\x00\x00\x00\x01Bud1\x00\x00\x10\x00",
    "train/sports car/notes.txt": b"the red one is my neighbour's\n",
    "test/Kätzchen/notes.txt": b"Mia, 3 Monate\n",
}


class FileServer(ThreadingHTTPServer):
    """Serves the files under `root` and records each request's path and Range header."""

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.root = root
        self.supports_range = True
        self.drop_after: int | None = None  # cut the next response after this many body bytes
        # Send this many body bytes of every response, then fall silent with the connection open
        # (a stalled mirror), until the fixture ends: readers must give up on their own.
        self.stall_after: int | None = None
        self.released = threading.Event()
        self.requests: list[tuple[str, str | None]] = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_port}/{name}"

    def serve(self, name: str, content: bytes) -> str:
        (self.root / name).parent.mkdir(parents=True, exist_ok=True)
        (self.root / name).write_bytes(content)
        return self.url(name)


class RangeHandler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        self.server.requests.append((self.path, range_header))
        file = self.server.root / self.path.lstrip("/")
        if not file.is_file():
            self.send_error(404)
            return
        content = file.read_bytes()
        start = 0
        if range_header and self.server.supports_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(content):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        else:
            self.send_response(200)
        body = content[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.drop_after is not None:
            body, self.server.drop_after = body[: self.server.drop_after], None
        if self.server.stall_after is not None:
            self.wfile.write(body[: self.server.stall_after])
            self.wfile.flush()
            self.server.released.wait()
            return
        self.wfile.write(body)  # HTTP/1.0: the connection closes after each response

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output free of access logs."""


@torch.no_grad()
def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter of a reference model (timm, transformers, torchvision) random values:
    LayerNorm weights around 1 (not 1), no zero biases, no zero head or [class] token, matrices at
    std 1/sqrt(fan_in) so the attention is far from uniform and a wrong head split or q/k/v order
    shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    layer_norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    for norm in layer_norms:
        norm.weight.copy_(1.0 + 0.2 * torch.randn(norm.weight.shape, generator=generator))
        norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=generator))
    done = {id(p) for norm in layer_norms for p in norm.parameters()}
    for name, param in model.named_parameters():
        if id(param) in done:
            continue
        noise = torch.randn(param.shape, generator=generator)
        if name.endswith(EMBEDDING_NAMES):
            param.copy_(0.5 * noise)
        elif param.ndim >= 2:
            param.copy_(noise / math.sqrt(param[0].numel()) + 0.01)
        else:
            param.copy_(0.1 * noise + 0.01)
    return model


def compare_outputs(reference: nn.Module, model: nn.Module, x: torch.Tensor, label: str) -> float:
    """max |model(x) - reference(x)|, printed; asserts the reference's outputs carry signal (differ
    between inputs and from zero), or agreement would prove nothing."""
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert got.shape == expected.shape
    assert expected.std() > 0.05 and (expected[0] - expected[1]).abs().max() > 0.05
    error = (got - expected).abs().max().item()
    print(f"\n{label}: max |vitkit - reference| = {error:.3e} (max {expected.abs().max():.2f})")
    return error


CLASSES = ("red", "green", "blue")


def tiny(image_tree: Path, **fields: object) -> TrainConfig:
    """The `tiny` training preset on `image_tree`, with `fields` changed; without the report's
    figures and page (seconds of matplotlib per run) unless `report=True` asks for them."""
    return dataclasses.replace(
        get_preset("tiny"), data=str(image_tree), **{"report": False, **fields}
    )


def train_killed_and_resumed(config: TrainConfig, run: Path) -> None:
    """Train `config` in `run`, take its last checkpoint and summary back as if the process had
    died just before writing them, and train again: the run resumes from the checkpoint before."""
    train(config, run)
    last = f"checkpoints/step-{config.steps:08d}.pt*"
    for leftover in [*run.glob(last), run / "summary.json"]:
        leftover.unlink()
    train(config, run)


def random_test_vit(**fields: object) -> VisionTransformer:
    """ViT-Test/8 with `fields` changed and every parameter drawn from N(0, 0.5^2), seeded, in
    eval mode: a model whose every part shows in its outputs."""
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-Test/8", **fields)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.5)
    return model.eval()


def write_user_folder(root: Path, images: dict[str, int] = USER_IMAGES) -> Path:
    """Issue 30's folder of a new user's own images as `root/<split>/<class>/<image>`, from the
    shared CIFAR-10 archive read in one pass: `images` per class and split of USER_CLASSES (by
    default USER_IMAGES; benchmarks/transfer.py asks for the probe's 150 and 50), each 32x32
    image resized (bicubic) to sides drawn within USER_SIDES by a seeded generator, about half
    of them not square, saved in USER_FORMATS in turn (every class gets every format); plus
    the files such folders hold besides images (USER_JUNK). Images are numbered per class across the
    splits (IMG_0001.jpg, ...), as a camera names them, so that `merge_splits` never clashes."""
    rng = np.random.default_rng(30)
    low, high = USER_SIDES
    taken: dict[tuple[str, str], int] = {}
    numbered: dict[str, int] = {}
    wanted = sum(images.values()) * len(USER_CLASSES)
    with tarfile.open(CIFAR_TAR) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-2] not in USER_CLASSES:
                continue
            split, name = parts[-3], USER_CLASSES[parts[-2]]
            if split not in images or taken.get((split, name), 0) >= images[split]:
                continue
            taken[(split, name)] = taken.get((split, name), 0) + 1
            numbered[name] = number = numbered.get(name, 0) + 1
            width = int(rng.integers(low, high + 1))
            height = width if rng.random() < 0.5 else int(rng.integers(low, high + 1))
            image = Image.open(archive.extractfile(member)).convert("RGB")
            image = image.resize((width, height), Image.Resampling.BICUBIC)
            kind, mode, extension = USER_FORMATS[number % len(USER_FORMATS)]
            if mode == "RGBA":  # partly transparent: alpha falls from 255 to 64 across the image
                ramp = np.linspace(255, 64, width).astype(np.uint8)
                image.putalpha(Image.fromarray(np.tile(ramp, (height, 1))))
            else:
                image = image.convert(mode)
            target = root / split / name / f"IMG_{number:04d}{extension}"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target, kind)
            if sum(taken.values()) == wanted:
                break
    for name, content in USER_JUNK.items():
        (root / name).write_bytes(content)
    return root


def merge_splits(tree: Path, root: Path) -> Path:
    """The files of `tree` (`<split>/<class>/<file>`) as one `root/<class>/<file>` tree with no
    split folders, as most people keep their images; files at the top of `tree` stay there."""
    for path in sorted(tree.rglob("*")):
        if path.is_file():
            parts = path.relative_to(tree).parts
            target = root.joinpath(*parts[1:]) if len(parts) > 1 else root / parts[0]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return root


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def images_loaded_in_chromium(page: Path, workdir: Path) -> dict[str, int]:
    """Open `page` in headless Chromium and count its <img> elements that decoded (naturalWidth
    > 0)."""
    return inspect_in_chromium(
        page,
        "var images = Array.from(frame.contentDocument.images);"
        "report({images: images.length, loaded: images.filter(function (i) {"
        "  return i.complete && i.naturalWidth > 0; }).length});",
        workdir,
    )


def inspect_in_chromium(page: Path, script: str, workdir: Path, root: Path | None = None) -> dict:
    """Open `page` in headless Chromium, run `script` once it has loaded, and return what the
    script passes to `report(value)`. A local HTTP server serves `root` (default: the page's
    folder), and a harness page in it loads the page in an iframe (`frame`), so the script may
    read and use its DOM; the harness writes the JSON of the value into its own DOM, which
    --dump-dom prints. `script` may call `report` later (from a timer), within Chromium's 10 s of
    virtual time."""
    root = root or page.parent
    browser = chromium()
    if browser is None:
        if os.environ.get("VITKIT_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required (VITKIT_REQUIRE_CHROMIUM) but not installed")
        pytest.skip("chromium is not installed (Debian package chromium; .ci/run installs it)")
    (root / "harness.html").write_text(
        f"<!DOCTYPE html><html><body><iframe id='f' src='{page.relative_to(root).as_posix()}'>"
        "</iframe><pre id='out'>"
        "</pre><script>function report(value) {"
        "  document.getElementById('out').textContent = JSON.stringify(value); }"
        "document.getElementById('f').onload = function () { var frame = this;"
        f"  {script} }};</script></body></html>"
    )
    serve = [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"]
    server = subprocess.Popen([*serve, "-d", str(root)], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (...)"
        port = int(line.split(" port ")[1].split()[0])
        result = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
             f"--user-data-dir={workdir / 'chromium-profile'}", "--dump-dom",
             f"http://127.0.0.1:{port}/harness.html"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait()
    dom = result.stdout
    start = dom.index('<pre id="out">') + len('<pre id="out">')
    text = dom[start : dom.index("</pre>", start)]
    assert text, f"the harness wrote nothing; chromium said: {result.stderr[-2000:]}"
    return json.loads(html.unescape(text))


def screenshot_in_chromium(page: Path, image: Path, workdir: Path) -> Path:
    """A PNG of `page` as headless Chromium shows it in a 1280x900 laptop window."""
    browser = chromium()
    assert browser is not None, "chromium is not installed"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1280,900", f"--user-data-dir={workdir / 'chromium-profile'}",
         f"--screenshot={image}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return image


# Keep every event (the reader samples long series by default).
EVERYTHING = {**DEFAULT_SIZE_GUIDANCE, "scalars": 0, "images": 0}


def events(run: Path) -> EventAccumulator:
    """A run folder's TensorBoard event files, read by TensorBoard's own reader."""
    reader = EventAccumulator(str(run), size_guidance=EVERYTHING, purge_orphaned_data=True)
    reader.Reload()
    return reader


def jsonl(run: Path) -> list[dict]:
    """A run folder's metrics.jsonl records."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
