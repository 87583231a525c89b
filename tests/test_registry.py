"""Named pretrained weights, the Hugging Face hub, and safe, strict or partial loading.

Downloads run against a real HTTP server on 127.0.0.1 (helpers.FileServer) serving a copy of
Google's reference fixture under a test name, so `load_model(name)` is checked end to end:
fetched into the cache, resumed, checksummed, refused offline, and equal to Google's logits.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.cli.main import main
from vitkit.errors import DownloadError
from vitkit.weights import (
    CheckpointError,
    PartialLoadWarning,
    PretrainedWeights,
    get_pretrained,
    list_pretrained,
    load_model,
    register_pretrained,
    registry,
)
from vitkit.weights.native import WEIGHTS_FILE, save_pretrained

from helpers import FileServer

NAME = "ViT-Tiny/8@fixture"
SERVED = "imagenet21k/ViT-Tiny_8.npz"  # the bucket's layout, as a mirror holds it
pytestmark = pytest.mark.usefixtures("online")


@pytest.fixture
def params(official_fixture: Path) -> bytes:
    return (official_fixture / "params.npz").read_bytes()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $VITKIT_HOME, and a registry whose additions vanish after the test."""
    monkeypatch.setenv("VITKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(registry.MIRROR_VARIABLE, raising=False)
    monkeypatch.setattr(registry, "PRETRAINED", dict(registry.PRETRAINED))
    return tmp_path / "home"


@pytest.fixture
def entry(
    server: FileServer, home: Path, params: bytes, monkeypatch: pytest.MonkeyPatch
) -> PretrainedWeights:
    """The fixture registered as if it were in Google's bucket, served by a local mirror."""
    server.serve(SERVED, params)
    monkeypatch.setenv(registry.MIRROR_VARIABLE, server.url(""))
    weights = PretrainedWeights(
        name=NAME,
        architecture="ViT-Test/8",
        url=f"{registry.GOOGLE_BUCKET}/{SERVED}",
        resolution=64,
        num_classes=7,
        dataset="Google's vit_jax reference fixture",
        sha256=hashlib.sha256(params).hexdigest(),
    )
    register_pretrained(weights)
    return weights


def _google_logits_error(model: torch.nn.Module, fixture: Path) -> float:
    images = torch.from_numpy(np.load(fixture / "input.npy")).permute(0, 3, 1, 2)  # NHWC -> NCHW
    with torch.no_grad():
        logits = model(images).numpy()
    return float(np.abs(logits - np.load(fixture / "logits.npy")).max())


def test_the_papers_release_is_registered() -> None:
    names = list_pretrained()
    for name in ("ViT-B/16@i21k", "ViT-B/16@i21k+in1k-384", "ViT-L/16@i21k+in1k-384",
                 "ViT-H/14@i21k", "R50+ViT-B/16@i21k+in1k-384"):  # fmt: skip
        assert name in names
    b16 = get_pretrained("vit-b_16@I21K")  # case and Google's "_" do not matter
    assert b16.url == "https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz"
    assert (b16.resolution, b16.num_classes, b16.mean, b16.std) == (
        224, 21843, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    )  # fmt: skip
    fine_tuned = get_pretrained("ViT-B/16@i21k+in1k-384")
    assert fine_tuned.url.endswith("/imagenet21k+imagenet2012/ViT-B_16.npz")
    assert (fine_tuned.resolution, fine_tuned.num_classes) == (384, 1000)
    assert fine_tuned.file_name == "ViT-B_16@i21k+in1k-384.npz"  # apart from the i21k file


def test_load_model_by_name_downloads_once_and_matches_google(
    entry: PretrainedWeights, server: FileServer, home: Path, official_fixture: Path
) -> None:
    model = vitkit.load_model(NAME)
    cached = home / "weights" / "ViT-Tiny_8@fixture.npz"
    assert cached.read_bytes() == (official_fixture / "params.npz").read_bytes()
    assert _google_logits_error(model, official_fixture) <= 1e-5
    assert server.requests == [(f"/{SERVED}", None)]

    model = load_model("vit-tiny_8@FIXTURE", num_classes=3)  # from the cache, no request
    assert len(server.requests) == 1 and model.head.out_features == 3


def test_the_legacy_cache_variable_still_works(
    entry: PretrainedWeights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VITKIT_HOME")
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "legacy"))
    load_model(NAME)
    assert (tmp_path / "legacy" / "weights" / "ViT-Tiny_8@fixture.npz").is_file()


def test_an_interrupted_download_resumes(
    entry: PretrainedWeights, server: FileServer, home: Path, official_fixture: Path
) -> None:
    server.drop_after = 4000
    with pytest.raises(DownloadError, match="run again to resume") as error:
        load_model(NAME)
    assert NAME in str(error.value)
    assert (home / "weights" / "ViT-Tiny_8@fixture.npz.part").stat().st_size == 4000

    model = load_model(NAME)
    assert server.requests[-1] == (f"/{SERVED}", "bytes=4000-")
    assert _google_logits_error(model, official_fixture) <= 1e-5
    assert sorted(path.name for path in (home / "weights").iterdir()) == ["ViT-Tiny_8@fixture.npz"]


def test_a_file_that_fails_the_registered_checksum_is_refused(
    entry: PretrainedWeights, home: Path
) -> None:
    register_pretrained(PretrainedWeights(**{**vars(entry), "sha256": "0" * 64}), replace=True)
    with pytest.raises(DownloadError, match="checksum mismatch") as error:
        load_model(NAME)
    assert NAME in str(error.value) and "0" * 64 in str(error.value)
    assert list((home / "weights").iterdir()) == []  # deleted, never loaded


def test_the_registered_normalisation_is_the_model_s(entry: PretrainedWeights, home: Path) -> None:
    """An entry's mean and std become `model.preprocessing`, whatever the file records (an .npz
    records none), at the resolution the model is built for."""
    imagenet = vitkit.Preprocessing.imagenet(64)
    changed = {**vars(entry), "mean": imagenet.mean, "std": imagenet.std}
    register_pretrained(PretrainedWeights(**changed), replace=True)
    assert get_pretrained(NAME).preprocessing == imagenet
    assert load_model(NAME).preprocessing == imagenet
    assert load_model(NAME, img_size=32).preprocessing == vitkit.Preprocessing.imagenet(32)
    assert load_model(home / "weights" / "ViT-Tiny_8@fixture.npz").preprocessing.mean == (0.5,) * 3


def test_an_entry_with_a_bad_normalisation_is_refused(entry: PretrainedWeights) -> None:
    with pytest.raises(CheckpointError, match=r"ViT-Tiny/8@fixture: .*std must be in \(0, inf\)"):
        PretrainedWeights(**{**vars(entry), "std": (0.5, 0.0, 0.5)})


def test_a_corrupt_cached_file_is_fetched_again_online_and_refused_offline(
    entry: PretrainedWeights, server: FileServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = home / "weights" / "ViT-Tiny_8@fixture.npz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the checkpoint")
    monkeypatch.setenv("VITKIT_OFFLINE", "1")
    with pytest.raises(DownloadError, match="is unusable"):
        load_model(NAME)
    assert server.requests == []

    monkeypatch.delenv("VITKIT_OFFLINE")
    load_model(NAME)
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == entry.sha256


def test_offline_mode_names_the_missing_file_and_stays_off_the_network(
    entry: PretrainedWeights, server: FileServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VITKIT_OFFLINE", "1")
    with pytest.raises(DownloadError, match="VITKIT_OFFLINE") as error:
        load_model(NAME)
    message = str(error.value)
    assert "missing" in message and str(home / "weights" / "ViT-Tiny_8@fixture.npz") in message
    assert server.url(SERVED) in message  # where to fetch it from
    assert server.requests == []


def test_mirror_variable_only_rewrites_googles_bucket(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b16 = get_pretrained("ViT-B/16@i21k")
    assert registry.weights_url(b16) == b16.url
    monkeypatch.setenv(registry.MIRROR_VARIABLE, "http://mirror.example/vit/")
    assert registry.weights_url(b16) == "http://mirror.example/vit/imagenet21k/ViT-B_16.npz"
    other = PretrainedWeights(**{**vars(b16), "name": "x@y", "url": "https://elsewhere/x.npz"})
    assert registry.weights_url(other) == "https://elsewhere/x.npz"


def test_registry_names_are_not_silently_replaced(home: Path) -> None:
    b16 = get_pretrained("ViT-B/16@i21k")
    with pytest.raises(CheckpointError, match="replace=True"):
        register_pretrained(PretrainedWeights(**{**vars(b16), "name": "vit-b_16@i21k"}))


def test_an_unknown_name_lists_the_known_ones(home: Path) -> None:
    with pytest.raises(CheckpointError, match="no pretrained weights of that name") as error:
        load_model("ViT-B/16@jft")
    assert "ViT-B/16@i21k+in1k-384" in str(error.value)


def test_pretrained_command_lists_the_registry(
    entry: PretrainedWeights, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pretrained"]) == 0
    out = capsys.readouterr().out
    assert "ViT-L/16@i21k+in1k-384" in out and NAME in out
    assert "imagenet21k+imagenet2012/ViT-L_16.npz" in out


# Hugging Face hub ids: read from the hub client's cache, offline, so no test needs the network.


def _hub_snapshot(cache: Path, repo_id: str) -> Path:
    """The folder a downloaded hub repository occupies in huggingface_hub's cache layout."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache; the client reads its location once at import, so it is patched."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.mark.parametrize("spec", ["hf:vitkit-tests/absent", "vitkit-tests/absent"])
def test_hub_offline_with_a_missing_model_is_a_clear_error(hub_cache: Path, spec: str) -> None:
    with pytest.raises(CheckpointError, match="offline mode is set") as error:
        load_model(spec)
    assert "hf:vitkit-tests/absent" in str(error.value)


def test_hub_offline_loads_a_cached_repository(hub_cache: Path) -> None:
    model = vitkit.create_model("ViT-Test/8").eval()
    save_pretrained(model, _hub_snapshot(hub_cache, "vitkit-tests/tiny"))
    loaded = load_model("hf:vitkit-tests/tiny")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)


def test_a_timm_repository_resolves_to_its_weights_file(tmp_path: Path) -> None:
    from vitkit.weights.hub import _checkpoint_in

    (tmp_path / "config.json").write_text('{"architecture": "vit_base_patch16_224"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert _checkpoint_in(tmp_path) == tmp_path / "model.safetensors"
    (tmp_path / "config.json").write_text('{"model_type": "vit"}')  # transformers'
    assert _checkpoint_in(tmp_path) == tmp_path


# Safety and strictness.


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout", ["timm.pth", "hf/pytorch_model.bin"])
def test_a_pickle_that_runs_code_is_refused_and_not_run(tmp_path: Path, layout: str) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / layout
    path.parent.mkdir(exist_ok=True)
    weights = vitkit.create_model("ViT-Test/8").state_dict()
    torch.save({**weights, "payload": RunsCode(marker)}, path)
    if layout.startswith("hf/"):
        (path.parent / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(CheckpointError, match="refused") as error:
        load_model(path.parent if layout.startswith("hf/") else path)
    assert str(path) in str(error.value) and "system" in str(error.value)
    assert not marker.exists()


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    """A saved ViT-Test/8 with one key missing, one unexpected and one of the wrong shape."""
    directory = save_pretrained(vitkit.create_model("ViT-Test/8"), tmp_path / "model")
    state = load_file(str(directory / WEIGHTS_FILE))
    del state["norm.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["head.weight"] = torch.zeros(5, 64)
    save_file(state, str(directory / WEIGHTS_FILE))
    return directory


def test_strict_loading_lists_every_difference(damaged: Path) -> None:
    with pytest.raises(CheckpointError) as error:
        load_model(damaged)
    message = str(error.value)
    assert str(damaged) in message
    assert "1 missing key: norm.weight" in message
    assert "1 unexpected key: extra.weight" in message
    assert "head.weight: expected shape (10, 64), found (5, 64)" in message


def test_partial_loading_warns_and_loads_what_fits(damaged: Path) -> None:
    with pytest.warns(PartialLoadWarning) as caught:
        model = load_model(damaged, strict=False)
    message = str(caught[0].message)
    assert "norm.weight" in message and "extra.weight" in message and "head.weight" in message
    state = load_file(str(damaged / WEIGHTS_FILE))
    torch.testing.assert_close(model.state_dict()["blocks.0.attn.qkv.weight"],
                               state["blocks.0.attn.qkv.weight"])  # fmt: skip
    assert model.state_dict()["head.weight"].shape == (10, 64)  # the model's own, kept


def test_a_complete_file_loads_without_warning_either_way(tmp_path: Path) -> None:
    directory = save_pretrained(vitkit.create_model("ViT-Test/8"), tmp_path / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(directory, strict=False)
