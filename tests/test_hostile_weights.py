"""Hostile and faulty checkpoints: configs that would build more than the file holds, bad values of
every kind, weights that are not finite or not floats, archives that lie about their sizes, and
pickles that would run code.

Every bad file must be refused with a one-line CheckpointError naming the file and the key or field,
in milliseconds and without allocating more than the file justifies. Hand-made cases come first,
grouped by cause (numbered as in issue 15); then hypothesis generates a few hundred files of each
format from small valid ones, read in one child process whose memory is capped (tests/hostile.py),
where any exception other than a VitkitError counts as a crash. The child imports the `read_*`
functions below from this module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import struct
import time
import tracemalloc
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.cli.main import main
from vitkit.errors import CheckpointError
from vitkit.weights.export import export_model
from vitkit.weights.load import load_model
from vitkit.weights.state_dict import NonFiniteWeightsWarning

from hostile import crashes, read_each_under_ceiling

TESTS = Path(__file__).resolve().parent
TEST_HEADS = 4  # ViT-Test/8's heads, which timm and torchvision files do not record
# A generous bound on refusing a file: the checks take milliseconds; what they prevent took
# minutes (building a billion blocks) or gigabytes.
REFUSAL_SECONDS = 5.0
# Python allocations (tracemalloc) a refusal may make: far below the gigabytes a lying file claims.
REFUSAL_PEAK_BYTES = 16 << 20


# --- Readers the child process calls, one path each ------------------------------------------


def read_checkpoint(path: str) -> None:
    """`load_model` with ViT-Test/8's head count for state dicts (other formats record it)."""
    load_model(path, num_heads=TEST_HEADS)


def read_checkpoint_partially(path: str) -> None:
    """`load_model(strict=False)`: a partial load, which tolerates missing and misshapen keys."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_model(path, num_heads=TEST_HEADS, strict=False)


@pytest.fixture
def child(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child process imports this module."""
    paths = [str(TESTS), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))


# --- Small valid checkpoints of every format, and tools to damage them -------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ViT-Test/8 (tanh-GELU, which Google's format needs) in every format vitkit writes: a
    vitkit and a Hugging Face directory, timm .safetensors and .pth files, a Google .npz."""
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-Test/8", gelu="tanh")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.5)
    return {
        "vitkit": export_model(model, root / "vitkit", to="vitkit"),
        "hf": export_model(model, root / "hf", to="hf"),
        "timm": export_model(model, root / "timm.safetensors", to="timm"),
        "pth": export_model(model, root / "timm.pth", to="timm"),
        "npz": export_model(model, root / "google.npz", to="npz"),
    }


def copy_to(source: Path, folder: Path, name: str) -> Path:
    """A copy of a checkpoint file or directory, as `folder / name` (+ the source's suffix)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name + source.suffix)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy(source, target)
    return target


def with_json(directory: Path, file: str, edit: Callable[[dict], object]) -> Path:
    """`directory` after `edit` changed its JSON file `file` in place."""
    content = json.loads((directory / file).read_text())
    edit(content)
    (directory / file).write_text(json.dumps(content))
    return directory


def hf_with(sources: dict[str, Path], folder: Path, name: str, **fields: object) -> Path:
    """A Hugging Face directory whose config.json has `fields`."""
    directory = copy_to(sources["hf"], folder, name)
    return with_json(directory, "config.json", lambda config: config.update(fields))


def vitkit_with(sources: dict[str, Path], folder: Path, name: str, **fields: object) -> Path:
    """A vitkit directory whose config.json's "config" has `fields`."""
    directory = copy_to(sources["vitkit"], folder, name)
    return with_json(directory, "config.json", lambda content: content["config"].update(fields))


def npz_arrays(sources: dict[str, Path]) -> dict[str, np.ndarray]:
    with np.load(sources["npz"]) as archive:
        return dict(archive)


def npz_with(sources: dict[str, Path], folder: Path, name: str, **changes: np.ndarray) -> Path:
    """The Google .npz with arrays replaced or added (keys with "/" written as "__")."""
    arrays = npz_arrays(sources) | {key.replace("__", "/"): array for key, array in changes.items()}
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{name}.npz", **arrays)
    return folder / f"{name}.npz"


def timm_state(sources: dict[str, Path]) -> dict[str, torch.Tensor]:
    return load_file(str(sources["timm"]))


def state_file(folder: Path, name: str, state: object) -> Path:
    """`state` written by torch.save (any object) or, for a dict of tensors and a .safetensors
    name, by safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


# Zip archives written byte by byte, so that a member can declare a size, CRC or compression its
# data does not have (zipfile writes only honest archives).


@dataclass(frozen=True)
class RawMember:
    name: str
    stored: bytes  # the bytes in the archive (deflated when `method` is ZIP_DEFLATED)
    declared_size: int  # the inflated size the archive declares
    crc: int
    method: int = zipfile.ZIP_STORED


def honest(name: str, data: bytes) -> RawMember:
    return RawMember(name, data, len(data), zlib.crc32(data))


def raw_zip(members: list[RawMember]) -> bytes:
    """A zip archive (no zip64: every size below 4 GiB) of `members` as they declare themselves."""
    body, directory = bytearray(), bytearray()
    for member in members:
        name = member.name.encode()
        sizes = (member.crc, len(member.stored), member.declared_size, len(name))
        directory += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, member.method, 0, 0, *sizes, 0, 0, 0, 0, 0,
            len(body),
        ) + name  # fmt: skip
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, member.method, 0, 0, *sizes, 0)
        body += name + member.stored
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), len(body), 0
    )
    return bytes(body + directory + end)


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """An .npy (version 1.0) header announcing an array of `shape` and dtype `descr`."""
    header = bytearray()

    class Sink:
        def write(self, data: bytes) -> None:
            header.extend(data)

    np.lib.format.write_array_header_1_0(
        Sink(), {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return bytes(header)


def deflated_zeros(prefix: bytes, mebibytes: int) -> tuple[bytes, int]:
    """A raw deflate stream of `prefix` then zeros, `mebibytes` MiB in all, built from one
    compressed MiB repeated (a full flush makes each block stand alone); and its inflated size."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    first = compressor.compress(prefix + zeros[len(prefix) :])
    first += compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first + block * (mebibytes - 1) + compressor.flush(), mebibytes << 20


def npz_members(sources: dict[str, Path]) -> list[RawMember]:
    """The valid .npz's members, stored as np.savez stores them."""
    with zipfile.ZipFile(sources["npz"]) as archive:
        return [honest(info.filename, archive.read(info)) for info in archive.infolist()]


def npz_with_deflated_junk(sources: dict[str, Path], folder: Path, name: str, mib: int) -> Path:
    """The valid .npz plus a member "junk" of `mib` MiB of deflated zeros (a float32 array)."""
    header_bytes = len(npy_header((1,)))  # numpy pads headers to a fixed length
    header = npy_header((((mib << 20) - header_bytes) // 4,))
    stored, size = deflated_zeros(header, mib)
    junk = RawMember("junk.npy", stored, size, 0, zipfile.ZIP_DEFLATED)  # CRC never reached
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.npz"
    path.write_bytes(raw_zip([*npz_members(sources), junk]))
    return path


def pth_deflate_bomb(sources: dict[str, Path], folder: Path, name: str) -> Path:
    """A torch .pth whose one tensor record declares 3 GiB of deflated zeros in 3 MB (torch.save
    only stores, but torch.load inflates any record to its declared size)."""
    plain = state_file(folder, f"{name}-plain.pth", {"pos_embed": torch.zeros(1)})
    with zipfile.ZipFile(plain) as archive:
        members = [honest(info.filename, archive.read(info)) for info in archive.infolist()]
    plain.unlink()
    record = next(member for member in members if member.name.endswith("/data/0"))
    stored, size = deflated_zeros(record.stored, 3 << 10)
    bomb = RawMember(record.name, stored, size, 0, zipfile.ZIP_DEFLATED)
    path = folder / f"{name}.pth"
    path.write_bytes(raw_zip([bomb if member is record else member for member in members]))
    return path


def npz_lying_header(sources: dict[str, Path], folder: Path, name: str) -> Path:
    """The valid .npz whose head/bias header claims 2**31 floats (8 GiB) over its 40 bytes."""
    members = [
        honest(member.name, npy_header((1 << 31,)) + member.stored[len(npy_header((10,))) :])
        if member.name == "head/bias.npy" else member
        for member in npz_members(sources)
    ]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.npz"
    path.write_bytes(raw_zip(members))
    return path


def timm_thousand_blocks(sources: dict[str, Path], folder: Path, name: str) -> Path:
    """A timm file of ViT-B/16's width with one block's worth of tensors and 999 more blocks
    named on one-element tensors: 12 MB whose names describe 1,000 blocks of width 768 (28 GB)."""
    width, mlp = 768, 3072
    state = {
        "patch_embed.proj.weight": torch.zeros(width, 3, 16, 16),
        "patch_embed.proj.bias": torch.zeros(width),
        "cls_token": torch.zeros(1, 1, width),
        "pos_embed": torch.zeros(1, 197, width),
        "norm.weight": torch.ones(width),
        "norm.bias": torch.zeros(width),
        "blocks.0.mlp.fc1.weight": torch.zeros(mlp, width),
        "blocks.0.mlp.fc1.bias": torch.zeros(mlp),
        "blocks.0.attn.proj.bias": torch.zeros(width),
    }
    state |= {f"blocks.{i}.norm1.weight": torch.zeros(1) for i in range(1, 1000)}
    return state_file(folder, f"{name}.safetensors", state)


Builder = Callable[[dict[str, Path], Path, str], Path]


def hf_fields(**fields: object) -> Builder:
    return lambda sources, folder, name: hf_with(sources, folder, name, **fields)


def vitkit_fields(**fields: object) -> Builder:
    return lambda sources, folder, name: vitkit_with(sources, folder, name, **fields)


def vitkit_preprocessing(**fields: object) -> Builder:
    """The vitkit directory whose config.json's "preprocessing" record has `fields`."""

    def make(sources: dict[str, Path], folder: Path, name: str) -> Path:
        directory = copy_to(sources["vitkit"], folder, name)
        return with_json(directory, "config.json",
                         lambda content: content["preprocessing"].update(fields))  # fmt: skip

    return make


def npz_changes(**changes: np.ndarray) -> Builder:
    return lambda sources, folder, name: npz_with(sources, folder, name, **changes)


def build(cases: dict[str, tuple[Builder, tuple[str, ...]]], sources: dict[str, Path],
          folder: Path) -> dict[str, Path]:  # fmt: skip
    return {name: make(sources, folder, name) for name, (make, _) in cases.items()}


def misjudged(
    records: list[dict], cases: dict[str, tuple[Builder, tuple[str, ...]]]
) -> list[tuple[str, dict]]:
    """The cases whose record is not a one-line CheckpointError naming the file and every one
    of the case's fragments."""
    wrong = []
    for (name, (_, fragments)), record in zip(cases.items(), records):
        message = record.get("message", "")
        if record["outcome"] != "refused" or record["type"] != "CheckpointError" or not all(
            part in message for part in (name, *fragments)
        ) or "\n" in message:  # fmt: skip
            wrong.append((name, {**record, "message": message[:600]}))
    return wrong


def refusal_cost(read: Callable[[], object]) -> tuple[CheckpointError, float, int]:
    """The CheckpointError `read` raises, with the seconds it took and its peak Python allocation
    (numpy's arrays included)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CheckpointError) as error:
            read()
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error.value, elapsed, peak


# --- 2. No config or file makes the reader build or inflate more than the file holds -----------

S = (1 << 24) - 1  # ViTConfig.MAX_SIZE - 1: within range, so only the tensors can refute it
EXHAUSTING: dict[str, tuple[Builder, tuple[str, ...]]] = {
    "hf-billion-layers": (hf_fields(num_hidden_layers=10**9), ("config.json", "num_hidden_layers")),
    "hf-100k-layers": (
        hf_fields(num_hidden_layers=100_000),
        ("config.json: num_hidden_layers=100000 but model.safetensors holds 2 blocks",),
    ),
    "vitkit-100m-depth": (vitkit_fields(depth=10**8), ("config.json", "depth")),
    "vitkit-million-depth": (
        vitkit_fields(depth=10**6),
        ("config.json: depth=1000000 but model.safetensors holds 2 blocks",),
    ),
    "hf-wide": (
        hf_fields(hidden_size=1 << 20),
        ("config.json: hidden_size=1048576 but model.safetensors holds patch_embed.proj.weight",),
    ),
    "hf-wide-mlp": (
        hf_fields(intermediate_size=S),
        (f"config.json: intermediate_size={S} but model.safetensors holds blocks.0.mlp.fc1",),
    ),
    "hf-huge-image": (
        hf_fields(image_size=1 << 20),
        ("config.json: image_size=1048576x1048576 with patch_size=8 needs", "pos_embed"),
    ),
    "vitkit-many-classes": (
        vitkit_fields(num_classes=S),
        (f"head.weight: expected shape ({S}, 64), found (10, 64)",),
    ),
    "vitkit-wide-pre-logits": (vitkit_fields(representation_size=S), ("pre_logits.0.weight",)),
    "vitkit-huge-patches": (vitkit_fields(patch_size=S, img_size=S), ("config.json", "patch_size")),
    "npz-far-block": (
        npz_changes(Transformer__encoderblock_999999999__LayerNorm_0__scale=np.ones(64, "f4")),
        ("missing encoder blocks: Transformer/encoderblock_2",),
    ),
    "timm-thousand-blocks": (timm_thousand_blocks, ("does not fit", "blocks.999.mlp.fc2.weight")),
    "npz-gigabyte-junk": (
        lambda sources, folder, name: npz_with_deflated_junk(sources, folder, name, 1024),
        ("decompression bomb",),
    ),
    "pth-deflate-bomb": (pth_deflate_bomb, ("decompression bomb",)),
    "npz-lying-header": (npz_lying_header, ("head/bias", "header declares shape (2147483648,)")),
}


def test_files_claiming_more_than_they_hold_are_refused_fast_and_unbuilt(
    sources: dict[str, Path], tmp_path: Path, child: None
) -> None:
    paths = build(EXHAUSTING, sources, tmp_path)
    # First where a regression cannot take the machine down, ...
    records = read_each_under_ceiling("test_hostile_weights:read_checkpoint", list(paths.values()))
    assert not crashes(records), crashes(records)
    assert not misjudged(records, EXHAUSTING)
    # ... then here, timed and weighed (after a valid load of each format, which imports and
    # initialises what every load needs once, e.g. torch's meta-device kernels).
    for source in sources.values():
        read_checkpoint(str(source))
    for name, path in paths.items():
        error, seconds, peak = refusal_cost(partial(read_checkpoint, str(path)))
        assert seconds < REFUSAL_SECONDS, (name, seconds, error)
        assert peak < REFUSAL_PEAK_BYTES, (name, peak, error)


def test_a_partial_load_may_not_build_more_than_it_loads(
    sources: dict[str, Path], tmp_path: Path, child: None
) -> None:
    """strict=False tolerates a misshapen head, but not one of millions of classes over a file
    of ten."""
    huge_head = vitkit_with(sources, tmp_path, "huge-head", num_classes=S)
    records = read_each_under_ceiling("test_hostile_weights:read_checkpoint_partially", [huge_head])
    assert records[0]["outcome"] == "refused", records
    assert "a partial load would leave" in records[0]["message"]
    assert f"head.weight: expected shape ({S}, 64), found (10, 64)" in records[0]["message"]


def test_a_junk_key_is_refused_before_it_is_inflated(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    """48 MiB of deflated zeros under a key Google's layout has no place for (small enough to
    pass the archive's size check): refused from the key list, never inflated."""
    path = npz_with_deflated_junk(sources, tmp_path, "junk", 48)
    error, seconds, peak = refusal_cost(lambda: read_checkpoint(str(path)))
    assert "unexpected keys the architecture has no place for: junk" in str(error)
    assert str(path) in str(error)
    assert peak < REFUSAL_PEAK_BYTES and seconds < REFUSAL_SECONDS, (peak, seconds)


def test_a_member_is_never_inflated_past_its_declared_size(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    """head/bias declares its 168 bytes, but its deflated stream goes on for 512 MiB of zeros:
    only the declared bytes are read, and the checkpoint loads."""
    members = npz_members(sources)
    declared = next(member for member in members if member.name == "head/bias.npy")
    stream, _ = deflated_zeros(declared.stored, 512)
    longer = RawMember(declared.name, stream, declared.declared_size, declared.crc,
                       zipfile.ZIP_DEFLATED)  # fmt: skip
    path = tmp_path / "long.npz"
    path.write_bytes(raw_zip([longer if member is declared else member for member in members]))
    tracemalloc.start()
    try:
        model = load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < REFUSAL_PEAK_BYTES
    assert torch.equal(model.head.bias, load_model(sources["npz"]).head.bias)


# --- 3. Every bad value is one CheckpointError naming the file and the field --------------------


def assert_refused(path: Path, *fragments: str, **options: object) -> None:
    """Loading `path` is a one-line CheckpointError naming the file (or its folder) and each of
    `fragments`."""
    with pytest.raises(CheckpointError) as error:
        load_model(path, num_heads=TEST_HEADS, **options)
    message = str(error.value)
    assert "\n" not in message
    for part in (str(path), *fragments):
        assert part in message, (part, message)


BAD_HF_FIELDS: dict[str, tuple[dict[str, object], str]] = {
    "heads-zero": (dict(num_attention_heads=0), "num_attention_heads must be between 1"),
    "heads-not-dividing": (
        dict(num_attention_heads=5),
        "hidden_size 64 is not divisible by num_attention_heads 5",
    ),
    "patch-zero": (dict(patch_size=0), "patch_size must be between 1"),
    "patch-non-square": (dict(patch_size=[8, 4]), "patch_size 8x4 is not square"),
    "width-negative": (dict(hidden_size=-64), "hidden_size must be between 1"),
    "width-string": (dict(hidden_size="64"), "hidden_size must be an integer, got '64'"),
    "width-nan": (dict(hidden_size=float("nan")), "hidden_size must be an integer, got nan"),
    "depth-bool": (dict(num_hidden_layers=True), "num_hidden_layers must be an integer, got True"),
    "depth-null": (dict(num_hidden_layers=None), "num_hidden_layers must be an integer, got None"),
    "mlp-fraction": (dict(intermediate_size=128.5), "intermediate_size must be an integer"),
    "eps-nan": (dict(layer_norm_eps=float("nan")), "layer_norm_eps must be in (0, inf), got nan"),
    "eps-negative": (dict(layer_norm_eps=-1e-12), "layer_norm_eps must be in (0, inf)"),
    "eps-string": (dict(layer_norm_eps="1e-12"), "layer_norm_eps must be a number"),
    "image-three-sides": (dict(image_size=[32, 32, 3]), "image_size must be an integer or a ["),
    "image-string": (dict(image_size="32"), "image_size must be an integer, got '32'"),
    "image-not-a-multiple": (dict(image_size=36), "image_size 36x36 is not a multiple of the"),
    "channels-object": (dict(num_channels={}), "num_channels must be an integer, got {}"),
    "qkv-bias-string": (dict(qkv_bias="yes"), "qkv_bias must be true or false, got 'yes'"),
    "head-dim-string": (dict(head_dim="16"), "head_dim '16'"),
    "activation-list": (dict(hidden_act=["gelu"]), "hidden_act ['gelu'] is not a GELU"),
    "model-type-number": (dict(model_type=7), "model_type 7 is not 'vit'"),
}


@pytest.mark.parametrize("case", BAD_HF_FIELDS)
def test_bad_hugging_face_config_values_are_named(
    sources: dict[str, Path], tmp_path: Path, case: str
) -> None:
    fields, message = BAD_HF_FIELDS[case]
    assert_refused(hf_with(sources, tmp_path, case, **fields), "config.json", message)


def hf_text(text: bytes, file: str = "config.json") -> Builder:
    def make(sources: dict[str, Path], folder: Path, name: str) -> Path:
        directory = copy_to(sources["hf"], folder, name)
        (directory / file).write_bytes(text)
        return directory

    return make


def hf_without(field: str) -> Builder:
    def make(sources: dict[str, Path], folder: Path, name: str) -> Path:
        return with_json(copy_to(sources["hf"], folder, name), "config.json",
                         lambda config: config.pop(field))  # fmt: skip

    return make


def hf_preprocessor(**fields: object) -> Builder:
    def make(sources: dict[str, Path], folder: Path, name: str) -> Path:
        directory = copy_to(sources["hf"], folder, name)
        return with_json(directory, "preprocessor_config.json", lambda pre: pre.update(fields))

    return make


def hf_query_of_shape(*shape: int) -> Builder:
    def make(sources: dict[str, Path], folder: Path, name: str) -> Path:
        directory = copy_to(sources["hf"], folder, name)
        state = load_file(str(directory / "model.safetensors"))
        state["vit.encoder.layer.0.attention.attention.query.weight"] = torch.zeros(shape)
        save_file(state, str(directory / "model.safetensors"))
        return directory

    return make


BAD_HF_FILES: dict[str, tuple[Builder, tuple[str, ...]]] = {
    "config-a-list": (hf_text(b"[1, 2]"), ("config.json: expected a JSON object, found a list",)),
    "config-nesting-deeply": (
        hf_text(b"[" * 100_000 + b"]" * 100_000),
        ("config.json: unreadable",),
    ),
    "config-a-5000-digit-width": (
        hf_text(b'{"model_type": "vit", "hidden_size": 1' + b"0" * 5000 + b"}"),
        ("config.json: unreadable",),
    ),
    "config-not-utf8": (hf_text(b'\xff\xfe{"x": 1}'), ("config.json: unreadable",)),
    "config-17-mib": (
        hf_text(b" " * (17 << 20) + b"{}"),
        ("config.json: 17825794 bytes, larger than a config file may be",),
    ),
    "config-without-mlp-width": (
        hf_without("intermediate_size"),
        ("config.json: missing field 'intermediate_size'",),
    ),
    "preprocessor-mean-string": (
        hf_preprocessor(image_mean="x"),
        ("image_mean (preprocessor_config.json) must be a list of numbers",),
    ),
    "preprocessor-a-list": (
        hf_text(b"[]", "preprocessor_config.json"),
        ("preprocessor_config.json: expected a JSON object",),
    ),
    "query-of-another-shape": (
        hf_query_of_shape(32, 64),
        ("tensors fused into blocks.0.attn.qkv.weight differ", "attention.query.weight"),
    ),
}

BAD_VITKIT_FILES: dict[str, tuple[Builder, tuple[str, ...]]] = {
    "depth-string": (vitkit_fields(depth="2"), ("depth must be an integer, got '2'",)),
    "width-bool": (vitkit_fields(width=True), ("width must be an integer, got True",)),
    "heads-zero": (vitkit_fields(num_heads=0), ("num_heads must be between 1",)),
    "classifier-number": (
        vitkit_fields(classifier=3),
        ("classifier must be one of 'token', 'gap', 'map', got 3",),
    ),
    "image-one-side": (vitkit_fields(img_size=[32]), ("img_size must be an integer or a [",)),
    "mean-short": (
        vitkit_preprocessing(mean=[0.5]),
        (
            "preprocessing.mean and preprocessing.std need one value per input channel each, "
            "got 1 and 3",
        ),
    ),
    "mean-and-std-short": (
        vitkit_preprocessing(mean=[0.5], std=[0.5]),
        ("mean and std need one value per input channel (in_chans=3), got 1",),
    ),
    "std-nan": (
        vitkit_preprocessing(std=[0.5, float("nan"), 0.5]),
        ("preprocessing.std must be in (0, inf), got nan",),
    ),
    "resolution-zero": (
        vitkit_preprocessing(resolution=[0, 32]),
        ("preprocessing.resolution must be between 1",),
    ),
    # A file of format_version 1, its statistics among the config's fields.
    "v1-std-nan": (
        lambda sources, folder, name: with_json(
            copy_to(sources["vitkit"], folder, name),
            "config.json",
            lambda content: (
                content.update(format_version=1),
                content["config"].update(mean=[0.5] * 3, std=[0.5, float("nan"), 0.5]),
            ),
        ),
        ("std must be in (0, inf), got nan",),
    ),  # fmt: skip
    "eps-string": (vitkit_fields(layer_norm_eps="1e-6"), ("layer_norm_eps must be a number",)),
    "dropout-two": (vitkit_fields(dropout=2), ("dropout must be in [0, 1), got 2",)),
    "resnet-too-deep": (vitkit_fields(resnet_layers=[3] * 9), ("resnet_layers",)),
    # A layout the file's own tensors do not have (a plain ViT's weights): refused, not built.
    "resnet-not-in-weights": (
        vitkit_fields(resnet_layers=[1], img_size=[64, 64]),
        ("resnet",),
    ),
    "format-version-bool": (
        lambda sources, folder, name: with_json(
            copy_to(sources["vitkit"], folder, name),
            "config.json",
            lambda content: content.update(format_version=True),
        ),
        ("format_version must be a positive integer, got True",),
    ),  # fmt: skip
    "config-a-list": (
        lambda sources, folder, name: with_json(
            copy_to(sources["vitkit"], folder, name),
            "config.json",
            lambda content: content.update(config=[1]),
        ),
        ('"config" must be an object',),
    ),  # fmt: skip
}

F4 = np.float32
BAD_NPZ_FILES: dict[str, tuple[Builder, tuple[str, ...]]] = {
    "patches-empty": (
        npz_changes(embedding__kernel=np.zeros((0, 0, 3, 64), F4)),
        ("embedding/kernel: expected a non-empty 4-d tensor",),
    ),
    "heads-zero": (
        npz_changes(
            Transformer__encoderblock_0__MultiHeadDotProductAttention_1__query__kernel=np.zeros(
                (64, 0, 16), F4
            )
        ),
        ("query/kernel: expected a non-empty 3-d tensor",),
    ),
    "heads-not-dividing": (
        npz_changes(
            Transformer__encoderblock_0__MultiHeadDotProductAttention_1__query__kernel=np.zeros(
                (64, 5, 13), F4
            )
        ),
        ("width 64 is not divisible by num_heads 5",),
    ),
    "positions-none": (
        npz_changes(Transformer__posembed_input__pos_embedding=np.zeros((1, 0, 64), F4)),
        ("pos_embedding: expected a non-empty 3-d tensor",),
    ),
    "positions-only-the-class-token": (
        npz_changes(Transformer__posembed_input__pos_embedding=np.zeros((1, 1, 64), F4)),
        ("0 patch positions do not form a square grid",),
    ),
    "positions-flat": (
        npz_changes(Transformer__posembed_input__pos_embedding=np.zeros((17, 64), F4)),
        ("pos_embedding: expected a non-empty 3-d tensor",),
    ),
    "head-flat": (npz_changes(head__kernel=np.zeros(640, F4)), ("head/kernel: expected",)),
    "mlp-other-width": (
        npz_changes(
            Transformer__encoderblock_0__MlpBlock_3__Dense_0__kernel=np.zeros((64, 100), F4)
        ),
        ("Dense_0/bias: expected shape (100,), found (128,)",),
    ),
    "random-bytes": (
        lambda sources, folder, name: write_bytes(folder / f"{name}.npz", random_bytes(4096)),
        ("not an .npz archive",),
    ),
    "truncated": (
        lambda sources, folder, name: write_bytes(
            folder / f"{name}.npz", sources["npz"].read_bytes()[:100_000]
        ),
        ("not an .npz archive",),
    ),
}


def random_bytes(count: int) -> bytes:
    """The same random-looking bytes on every run (os.urandom made the refusal's wording vary:
    torch reports some random files as "corrupt", others as pickles it refuses)."""
    return random.Random(count).randbytes(count)


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def timm_changed(suffix: str, **changes: object) -> Builder:
    """The timm state dict with entries replaced, as a file with `suffix`."""

    def make(sources: dict[str, Path], folder: Path, name: str) -> Path:
        state = timm_state(sources) | {key.replace("__", "."): value
                                       for key, value in changes.items()}  # fmt: skip
        return state_file(folder, name + suffix, state)

    return make


def pickled(value: object) -> Builder:
    return lambda sources, folder, name: state_file(folder, f"{name}.pth", value)


TORCHVISION_STUB = {
    "conv_proj.weight": torch.zeros(64, 3, 8, 8),
    "conv_proj.bias": torch.zeros(64),
    "class_token": torch.zeros(1, 1, 64),
    "encoder.pos_embedding": torch.zeros(1, 1, 64),
    "encoder.layers.encoder_layer_0.mlp.0.weight": torch.zeros(128, 64),
}
BAD_STATE_DICTS: dict[str, tuple[Builder, tuple[str, ...]]] = {
    "patch-embedding-flat": (
        timm_changed(".safetensors", patch_embed__proj__weight=torch.zeros(64, 3, 8)),
        ("patch_embed.proj.weight: expected a non-empty 4-d tensor",),
    ),
    "positions-none": (
        timm_changed(".safetensors", pos_embed=torch.zeros(1, 0, 64)),
        ("pos_embed: expected a non-empty 3-d tensor",),
    ),
    "positions-only-the-class-token": (
        timm_changed(".pth", pos_embed=torch.zeros(1, 1, 64)),
        ("pos_embed: 0 patch positions do not form a square grid",),
    ),
    "mlp-flat": (
        timm_changed(".pth", blocks__0__mlp__fc1__weight=torch.zeros(128)),
        ("blocks.0.mlp.fc1.weight: expected a non-empty 2-d tensor",),
    ),
    "keys-integers": (pickled({1: torch.zeros(1)}), ("does not hold a state dict",)),
    "a-list": (pickled([torch.zeros(1)]), ("does not hold a state dict",)),
    "values-strings": (pickled({"pos_embed": "zeros"}), ("does not hold a state dict",)),
    "sparse": (
        timm_changed(".pth", pos_embed=torch.zeros(1, 17, 64).to_sparse()),
        ("pos_embed is a torch.sparse_coo tensor",),
    ),
    "torchvision-positions-only-the-class-token": (
        pickled(TORCHVISION_STUB),
        ("0 patch positions (after the [class] token)",),
    ),
    "random-bytes": (
        lambda sources, folder, name: write_bytes(folder / f"{name}.pth", random_bytes(4096)),
        ("refused",),
    ),
    "truncated": (
        lambda sources, folder, name: write_bytes(
            folder / f"{name}.safetensors", sources["timm"].read_bytes()[:100]
        ),
        ("corrupt or truncated",),
    ),
}


BAD_FILES = {
    f"{kind}-{name}": case
    for kind, cases in (("hf", BAD_HF_FILES), ("vitkit", BAD_VITKIT_FILES),
                        ("npz", BAD_NPZ_FILES), ("state-dict", BAD_STATE_DICTS))
    for name, case in cases.items()
}  # fmt: skip


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_are_one_line_naming_file_and_field(
    sources: dict[str, Path], tmp_path: Path, case: str
) -> None:
    make, fragments = BAD_FILES[case]
    assert_refused(make(sources, tmp_path, case), *fragments)


# --- 9. Weights: not finite is warned of, not floats is refused ---------------------------------


def vitkit_state_changed(**changes: torch.Tensor) -> Builder:
    """The vitkit directory with tensors of its model.safetensors replaced."""

    def make(sources: dict[str, Path], folder: Path, name: str) -> Path:
        directory = copy_to(sources["vitkit"], folder, name)
        weights = directory / "model.safetensors"
        state = load_file(str(weights)) | {key.replace("__", "."): value
                                           for key, value in changes.items()}  # fmt: skip
        save_file(state, str(weights))
        return directory

    return make


def npz_cast(key: str, dtype: object) -> Builder:
    """The .npz with the array `key` cast to `dtype` (same shape)."""

    def make(sources: dict[str, Path], folder: Path, name: str) -> Path:
        array = npz_arrays(sources)[key]
        return npz_with(sources, folder, name, **{key.replace("/", "__"): array.astype(dtype)})

    return make


NORM = "blocks.0.norm1.weight"
GOOGLE_NORM = "Transformer/encoderblock_0/LayerNorm_0/scale"


def vitkit_norm_as(dtype: torch.dtype) -> Builder:
    return vitkit_state_changed(blocks__0__norm1__weight=torch.ones(64).to(dtype))


def timm_norm_as(dtype: torch.dtype) -> Builder:
    return timm_changed(".pth", blocks__0__norm1__weight=torch.ones(64).to(dtype))


NOT_FLOATS: dict[str, tuple[Builder, tuple[str, ...]]] = {
    "vitkit-int64": (vitkit_norm_as(torch.int64), (f"{NORM} holds torch.int64 values",)),
    "vitkit-bool": (vitkit_norm_as(torch.bool), (f"{NORM} holds torch.bool values",)),
    "vitkit-uint8": (vitkit_norm_as(torch.uint8), (f"{NORM} holds torch.uint8 values",)),
    "vitkit-float8": (
        vitkit_norm_as(torch.float8_e4m3fn),
        (f"{NORM} holds torch.float8_e4m3fn values",),
    ),
    "timm-complex": (timm_norm_as(torch.complex64), (f"{NORM} holds torch.complex64 values",)),
    "timm-int32": (timm_norm_as(torch.int32), (f"{NORM} holds torch.int32 values",)),
    "npz-int32": (npz_cast(GOOGLE_NORM, np.int32), (f"{GOOGLE_NORM} holds int32 values",)),
    "npz-bool": (npz_cast(GOOGLE_NORM, np.bool_), (f"{GOOGLE_NORM} holds bool values",)),
    "npz-complex": (npz_cast(GOOGLE_NORM, np.complex64), (f"{GOOGLE_NORM} holds complex64",)),
    "npz-strings": (npz_cast(GOOGLE_NORM, "<U4"), (f"{GOOGLE_NORM} holds <U4 values",)),
    "npz-objects": (npz_cast(GOOGLE_NORM, object), (f"{GOOGLE_NORM} holds object values",)),
}


@pytest.mark.parametrize("case", NOT_FLOATS)
def test_weights_that_are_not_floats_are_refused(
    sources: dict[str, Path], tmp_path: Path, case: str
) -> None:
    make, fragments = NOT_FLOATS[case]
    assert_refused(make(sources, tmp_path, case), *fragments, "float32")


def test_every_float_precision_loads(sources: dict[str, Path], tmp_path: Path) -> None:
    """fp16, bf16 and fp64 weights load, as the float32 values they round to."""
    half = vitkit_state_changed(
        blocks__0__norm1__weight=torch.full((64,), 1.5, dtype=torch.float16),
        blocks__0__norm1__bias=torch.full((64,), 0.25, dtype=torch.bfloat16),
    )(sources, tmp_path, "half")
    double = timm_changed(".pth", blocks__0__norm1__weight=torch.full((64,), 2.0).double())
    npz_half = npz_cast(GOOGLE_NORM, np.float16)(sources, tmp_path, "npz-half")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.all(load_model(half).blocks[0].norm1.weight == 1.5)
        assert torch.all(load_model(half).blocks[0].norm1.bias == 0.25)
        loaded = load_model(double(sources, tmp_path, "double"), num_heads=TEST_HEADS,
                            classifier="token")  # fmt: skip
        assert torch.all(loaded.blocks[0].norm1.weight == 2.0)
        expected = npz_arrays(sources)[GOOGLE_NORM].astype(np.float16).astype(np.float32)
        assert np.array_equal(load_model(npz_half).blocks[0].norm1.weight.detach(), expected)


NAN, INF = float("nan"), float("inf")


def poisoned(sources: dict[str, Path], folder: Path, kind: str) -> tuple[Path, list[str]]:
    """A checkpoint of `kind` with NaN in one tensor and inf in another; the two keys as vitkit
    names them."""
    keys = ["blocks.0.norm1.weight", "head.bias"]
    if kind == "npz":
        arrays = {"Transformer__encoderblock_0__LayerNorm_0__scale": np.full(64, NAN, F4),
                  "head__bias": np.full(10, INF, F4)}  # fmt: skip
        return npz_with(sources, folder, kind, **arrays), keys
    changes = {"blocks__0__norm1__weight": torch.full((64,), NAN),
               "head__bias": torch.full((10,), INF)}  # fmt: skip
    if kind == "vitkit":
        return vitkit_state_changed(**changes)(sources, folder, kind), keys
    if kind == "timm":
        return timm_changed(".safetensors", **changes)(sources, folder, kind), keys
    directory = copy_to(sources["hf"], folder, kind)
    state = load_file(str(directory / "model.safetensors"))
    state["vit.encoder.layer.0.layernorm_before.weight"] = torch.full((64,), NAN)
    state["classifier.bias"] = torch.full((10,), INF)
    save_file(state, str(directory / "model.safetensors"))
    return directory, keys


@pytest.mark.parametrize("kind", ["vitkit", "hf", "timm", "npz"])
def test_weights_that_are_not_finite_load_with_a_warning_naming_them(
    sources: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    path, keys = poisoned(sources, tmp_path, kind)
    stated = {"classifier": "token"} if kind == "timm" else {}  # its file cannot say it
    with pytest.warns(NonFiniteWeightsWarning) as caught:
        model = load_model(path, num_heads=TEST_HEADS, **stated)
    message = str(caught[0].message)
    assert str(path) in message and all(key in message for key in keys), message
    assert "2 tensors" in message
    assert model.blocks[0].norm1.weight.isnan().all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(sources[kind], num_heads=TEST_HEADS, **stated)  # finite: no warning


# --- Code in a file never runs -----------------------------------------------------------------


@dataclass(frozen=True)
class RunsCode:
    """Unpickling this runs a shell command: what a malicious .pth does."""

    command: str

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def malicious_pth(folder: Path, marker: Path) -> Path:
    payload = {"state_dict": {"pos_embed": RunsCode(f"touch {marker}")}}
    return state_file(folder, "evil.pth", payload)


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = malicious_pth(tmp_path, marker)
    assert_refused(path, "refused", "GLOBAL", "system")
    assert_refused(path, "refused", "GLOBAL", "system", format="timm")
    assert not marker.exists()


# --- The CLI prints one line and exits 2 --------------------------------------------------------


def test_the_cli_reports_bad_checkpoints_in_one_line(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32)).save(image)
    marker = tmp_path / "ran"
    commands = {
        "convert": ["convert", str(hf_with(sources, tmp_path, "bad-hf", num_attention_heads=0)),
                    str(tmp_path / "out"), "--to", "vitkit"],
        "classify": ["classify", str(vitkit_with(sources, tmp_path, "bad", depth="2")), str(image)],
        "pickle": ["convert", str(malicious_pth(tmp_path, marker)), str(tmp_path / "out2"),
                   "--to", "vitkit"],
        "huge": ["convert", str(hf_with(sources, tmp_path, "deep", num_hidden_layers=100_000)),
                 str(tmp_path / "out3"), "--to", "vitkit"],
    }  # fmt: skip
    expected = {"convert": "num_attention_heads", "classify": "depth must be an integer",
                "pickle": "refused", "huge": "num_hidden_layers=100000"}  # fmt: skip
    for name, argv in commands.items():
        assert main(argv) == 2, name
        # Progress lines may come first (convert reports its stages); the error is one line.
        lines = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in lines if line.startswith(f"vitkit {argv[0]}: error: ")]
        assert len(errors) == 1 and errors[0] == lines[-1], (name, lines)
        assert expected[name] in errors[0] and argv[1] in errors[0], (name, lines)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


# --- Fuzz: hypothesis-made files of every format, read under a memory ceiling ------------------

# A refusal that only happened because an allocation failed: the ceiling, not vitkit, stopped it.
ALLOCATION_FAILURES = ("allocate", "out of memory", "MemoryError")
HUGE_INTEGERS = st.sampled_from([0, -1, 2**24, 2**31, 2**63, 10**30, -(10**9)])
JSON_LEAVES = (
    st.none() | st.booleans() | st.integers(-1000, 1000) | HUGE_INTEGERS
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6)
)  # fmt: skip
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                  max_size=3),
    max_leaves=6,
)  # fmt: skip
HF_FIELDS = ["image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
             "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps",
             "qkv_bias", "model_type", "head_dim", "pooler_act"]  # fmt: skip
VITKIT_FIELDS = [field.name for field in dataclasses.fields(vitkit.ViTConfig)]
PREPROCESSING_FIELDS = [field.name for field in dataclasses.fields(vitkit.Preprocessing)]


def examples(strategy: st.SearchStrategy, count: int) -> list:
    """`count` examples of `strategy`, the same ones on every run (derandomized)."""
    found: list = []

    @settings(max_examples=count, derandomize=True, deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def gather(example: object) -> None:
        found.append(example)

    gather()
    return found


def configs(fields: list[str]) -> st.SearchStrategy:
    """Valid configs with a few fields set to random JSON, or a random JSON document."""
    return st.one_of(
        st.tuples(st.just("fields"), st.dictionaries(st.sampled_from(fields), JSON_VALUES,
                                                     min_size=1, max_size=4)),
        st.tuples(st.just("whole"), JSON_VALUES),
    )  # fmt: skip


def link_directory(source: Path, target: Path) -> Path:
    """`target`, a directory of links to `source`'s files (the fuzzer rewrites its config)."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        (target / file.name).symlink_to(file)
    return target


def write_config_example(
    source: Path, folder: Path, example: tuple, inside: str | None = None
) -> Path:
    """The checkpoint with config.json's fields (those of its object `inside`, where given) set
    as `example` says, or config.json replaced by it."""
    kind, value = example
    directory = link_directory(source, folder / "checkpoint")
    content = json.loads((source / "config.json").read_text())
    if kind == "whole":
        content = value
    else:
        (content[inside] if inside else content).update(value)
    (directory / "config.json").unlink()
    (directory / "config.json").write_text(json.dumps(content))
    return directory


GOOGLE_KEYS = [
    "embedding/kernel", "embedding/bias", "cls", "Transformer/posembed_input/pos_embedding",
    "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel",
    "Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel",
    "Transformer/encoderblock_1/LayerNorm_2/bias", "head/kernel", "head/bias",
]  # fmt: skip
SHAPES = st.lists(st.integers(0, 70), max_size=4).map(tuple)
LYING_SHAPES = st.lists(st.sampled_from([0, 1, 7, 64, 1 << 20, 1 << 31, 1 << 40]), max_size=3)
NEW_KEYS = st.from_regex(r"Transformer/encoderblock_[0-9]{1,12}/LayerNorm_0/scale", fullmatch=True)
NPZ_MUTATIONS = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(GOOGLE_KEYS)),
    st.tuples(st.just("shape"), st.sampled_from(GOOGLE_KEYS), SHAPES),
    st.tuples(st.just("dtype"), st.sampled_from(GOOGLE_KEYS),
              st.sampled_from(["i4", "?", "f2", "f8", "c8", "u1", "<U3", "V4", ">f4"])),
    st.tuples(st.just("add"), NEW_KEYS | st.text("ab/_019", min_size=1, max_size=20), SHAPES),
    st.tuples(st.just("lie"), st.sampled_from(GOOGLE_KEYS), LYING_SHAPES.map(tuple)),
    st.tuples(st.just("nonfinite"), st.sampled_from(GOOGLE_KEYS)),
)  # fmt: skip
# Damaged bytes: random ones, or the valid file's with a few flipped (headers, sizes, data).
DAMAGED_BYTES = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=2000)),
    st.tuples(st.just("flip"), st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=4)),
)
NPZ_EXAMPLES = st.one_of(
    st.tuples(st.just("mutate"), st.lists(NPZ_MUTATIONS, min_size=1, max_size=3), st.booleans()),
    DAMAGED_BYTES,
)


def npy_bytes(array: np.ndarray) -> bytes:
    header = npy_header(array.shape, np.lib.format.dtype_to_descr(array.dtype))
    return header + np.ascontiguousarray(array).tobytes()


def deflated(member: RawMember) -> RawMember:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    stored = compressor.compress(member.stored) + compressor.flush()
    return RawMember(member.name, stored, member.declared_size, member.crc, zipfile.ZIP_DEFLATED)


def damaged(valid: bytes, example: tuple) -> bytes:
    """The bytes of a DAMAGED_BYTES example: random, or `valid` with bytes flipped (at fractions
    of its length)."""
    if example[0] == "bytes":
        return example[1]
    flipped = bytearray(valid)
    for fraction in example[1]:
        flipped[int(fraction * len(flipped))] ^= 0xFF
    return bytes(flipped)


def write_npz_example(sources: dict[str, Path], folder: Path, example: tuple) -> Path:
    folder.mkdir(parents=True)
    path = folder / "checkpoint.npz"
    if example[0] != "mutate":
        return write_bytes(path, damaged(sources["npz"].read_bytes(), example))
    _, mutations, compress = example
    arrays, lies = npz_arrays(sources), {}
    for operation, key, *argument in mutations:
        if operation == "drop":
            arrays.pop(key, None)
        elif operation == "shape":
            arrays[key] = np.zeros(argument[0], F4)
        elif operation == "dtype" and key in arrays:  # the values do not matter
            arrays[key] = np.ones(arrays[key].shape, F4).astype(argument[0])
        elif operation == "add":
            arrays[key] = np.ones(argument[0], F4)
        elif operation == "lie":
            lies[key] = argument[0]
        elif operation == "nonfinite" and key in arrays:
            arrays[key] = np.full(arrays[key].shape, np.nan, F4)
    members = []
    for key, array in arrays.items():
        data = npy_bytes(array)
        if key in lies:
            descr = np.lib.format.dtype_to_descr(array.dtype)
            data = npy_header(lies[key], descr) + data[len(npy_header(array.shape, descr)) :]
        member = honest(f"{key}.npy", data)
        members.append(deflated(member) if compress else member)
    return write_bytes(path, raw_zip(members))


SAFETENSORS_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "BOOL", "U8", "F8_E4M3", "C64",
                      "X9", 5]  # fmt: skip
TIMM_KEYS = ["patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.mlp.fc1.weight",
             "blocks.1.attn.qkv.weight", "head.weight", "norm.bias"]  # fmt: skip
SAFETENSORS_EXAMPLES = st.one_of(
    st.tuples(st.just("shape"), st.sampled_from(TIMM_KEYS),
              st.lists(st.integers(-2, 70) | HUGE_INTEGERS, max_size=4)),
    st.tuples(st.just("dtype"), st.sampled_from(TIMM_KEYS), st.sampled_from(SAFETENSORS_DTYPES)),
    st.tuples(st.just("data_offsets"), st.sampled_from(TIMM_KEYS),
              st.lists(st.integers(-5, 500_000) | HUGE_INTEGERS, max_size=3)),
    st.tuples(st.just("header-length"), st.integers(0, 1 << 20) | HUGE_INTEGERS),
    st.tuples(st.just("header"), JSON_VALUES),
    DAMAGED_BYTES,
)  # fmt: skip


def write_safetensors_example(sources: dict[str, Path], folder: Path, example: tuple) -> Path:
    folder.mkdir(parents=True)
    path = folder / "checkpoint.safetensors"
    valid = sources["timm"].read_bytes()
    length = struct.unpack("<Q", valid[:8])[0]
    header, data = json.loads(valid[8 : 8 + length]), valid[8 + length :]
    operation, *arguments = example
    if operation in ("bytes", "flip"):
        return write_bytes(path, damaged(valid, example))
    if operation == "header-length":
        return write_bytes(path, struct.pack("<Q", arguments[0] % (1 << 64)) + valid[8:])
    if operation == "header":
        header = arguments[0]
    else:
        key, value = arguments
        header[key][operation] = value
    text = json.dumps(header).encode()
    return write_bytes(path, struct.pack("<Q", len(text)) + text + data)


def tensor_of(shape: list[int], dtype: torch.dtype, fill: float) -> torch.Tensor:
    return torch.full(shape, fill).to(dtype) if dtype.is_floating_point else torch.zeros(
        shape, dtype=dtype
    )  # fmt: skip


TENSORS = st.builds(
    tensor_of,
    st.lists(st.integers(0, 4), max_size=3),
    st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool,
                     torch.complex64]),
    st.sampled_from([0.0, 1.0, float("nan"), float("inf")]),
)  # fmt: skip
PICKLED_VALUES = st.recursive(
    TENSORS | st.integers() | st.text(max_size=5) | st.none() | st.floats(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=5) | st.integers(), inner, max_size=3
    ),
    max_leaves=8,
)  # fmt: skip
PTH_EXAMPLES = st.one_of(
    st.tuples(st.just("value"), PICKLED_VALUES),
    st.tuples(st.just("state-with"),
              st.dictionaries(st.sampled_from(TIMM_KEYS), TENSORS, min_size=1, max_size=3),
              st.booleans()),
    DAMAGED_BYTES,
)  # fmt: skip


def write_pth_example(sources: dict[str, Path], folder: Path, example: tuple) -> Path:
    folder.mkdir(parents=True)
    path = folder / "checkpoint.pth"
    if example[0] in ("bytes", "flip"):
        return write_bytes(path, damaged(sources["pth"].read_bytes(), example))
    if example[0] == "value":
        return state_file(folder, path.name, example[1])
    _, changes, wrapped = example
    state = timm_state(sources) | changes
    return state_file(folder, path.name, {"state_dict": state} if wrapped else state)


FUZZ: dict[str, tuple[st.SearchStrategy, Callable[[dict[str, Path], Path, object], Path], int]] = {
    "hf-config": (
        configs(HF_FIELDS),
        lambda sources, folder, example: write_config_example(sources["hf"], folder, example),
        120,
    ),
    "vitkit-config": (
        configs(VITKIT_FIELDS),
        lambda sources, folder, example: write_config_example(sources["vitkit"], folder, example,
                                                              inside="config"),
        120,
    ),
    "vitkit-preprocessing": (
        configs(PREPROCESSING_FIELDS),
        lambda sources, folder, example: write_config_example(sources["vitkit"], folder, example,
                                                              inside="preprocessing"),
        60,
    ),
    "npz": (NPZ_EXAMPLES, write_npz_example, 150),
    "safetensors": (SAFETENSORS_EXAMPLES, write_safetensors_example, 120),
    "pth": (PTH_EXAMPLES, write_pth_example, 100),
}  # fmt: skip


@pytest.mark.parametrize("kind", FUZZ)
def test_fuzzed_checkpoints_are_read_or_refused_in_one_line(
    sources: dict[str, Path], tmp_path: Path, child: None, kind: str
) -> None:
    strategy, write, count = FUZZ[kind]
    paths = [write(sources, tmp_path / f"{number:03d}", example)
             for number, example in enumerate(examples(strategy, count))]  # fmt: skip
    records = read_each_under_ceiling("test_hostile_weights:read_checkpoint", paths)
    assert not crashes(records), crashes(records)[:3]
    refusals = [record for record in records if record["outcome"] == "refused"]
    wrong = [
        record for record in refusals
        if record["type"] != "CheckpointError" or "\n" in record["message"]
        or record["path"] not in record["message"]
        or any(failure in record["message"] for failure in ALLOCATION_FAILURES)
    ]  # fmt: skip
    assert not wrong, wrong[:3]
    assert len(refusals) > len(records) / 2  # the examples are hostile: most must be refused
