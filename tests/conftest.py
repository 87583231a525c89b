"""Shared test fixtures: where ../shared lives, Google's official reference files, a real HTTP
server on 127.0.0.1 for the download tests (datasets and pretrained weights), a slice of CIFAR-10,
and `randomise_` for the reference models of the equivalence tests."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vitkit.training.config import TrainConfig
from vitkit.training.presets import get_preset

SHARED = Path(
    os.environ.get("VITKIT_SHARED", Path(__file__).resolve().parents[1].parent / "shared")
)
OFFICIAL_FIXTURE = SHARED / "fixtures" / "official-vit-jax" / "tiny_gap_repr"
# [class] token and position embeddings under the names of timm, transformers and torchvision.
EMBEDDING_NAMES = (
    "cls_token", "pos_embed", "reg_token", "position_embeddings", "class_token", "pos_embedding"
)  # fmt: skip


@pytest.fixture(scope="session")
def official_fixture() -> Path:
    """Checkpoint, inputs and logits made with Google's vit_jax code (see its meta.json)."""
    if not (OFFICIAL_FIXTURE / "params.npz").is_file():
        pytest.fail(
            f"Google's reference fixture is missing at {OFFICIAL_FIXTURE}; "
            "set VITKIT_SHARED to the folder that holds fixtures/official-vit-jax"
        )
    return OFFICIAL_FIXTURE


CIFAR_TAR = SHARED / "data" / "cifar10-jpg.tar.gz"


@pytest.fixture(scope="session")
def cifar_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-balanced slice of the shared CIFAR-10 JPEG archive as a `<split>/<class>/` folder:
    200 training and 50 test images per class (read in one pass over the archive)."""
    if not CIFAR_TAR.is_file():
        pytest.fail(f"the shared CIFAR-10 archive is missing at {CIFAR_TAR}")
    wanted = {"train": 200, "test": 50}
    root = tmp_path_factory.mktemp("cifar-subset")
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_TAR) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3:
                continue
            split, label = parts[-3], parts[-2]
            if split not in wanted or taken.get((split, label), 0) >= wanted[split]:
                continue
            taken[(split, label)] = taken.get((split, label), 0) + 1
            target = root / split / label / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
    return root


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


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    server = FileServer(root)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.released.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide offline mode themselves, and reach 127.0.0.1 without any proxy."""
    monkeypatch.delenv("VITKIT_OFFLINE", raising=False)
    for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)


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


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class folder dataset of 16x16 images whose colour gives the class: what the training
    tests learn from in seconds."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for split, count in (("train", 48), ("test", 12)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 100, (16, 16, 3), dtype=np.uint8)
                pixels[..., label] += 120
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


@pytest.fixture
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded-data caches in the test's own folder, not the user's."""
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))


def tiny(image_tree: Path, **fields: object) -> TrainConfig:
    """The `tiny` training preset on `image_tree`, with `fields` changed."""
    return dataclasses.replace(get_preset("tiny"), data=str(image_tree), **fields)
