"""The position variants of the paper's Appendix D.4 (Table 8) as `pos_embed_type`: each builds,
saves, loads and runs at a second resolution; sincos_2d is big_vision's formula, learned_2d shares
its halves along rows and columns, relative's bias is a naive per-pair computation and depends on
the offset only, none sees no positions; bad values and exports that cannot hold a variant are
refused in one line."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import vitkit
from vitkit import CheckpointError, ConfigError, VisionTransformer
from vitkit.analysis.report import write_figures
from vitkit.models.config import PosEmbedType
from vitkit.models.pos_embed import (
    RelativePositions,
    grid_pos_embed,
    relative_bias,
    relative_position_index,
    resize_axis,
    resize_pos_embed,
    resize_relative_bias,
)
from vitkit.training.optim import param_groups
from vitkit.training.trainer import train
from vitkit.weights.export import HOLDING_FORMATS, export_model

from helpers import tiny

KINDS: tuple[str, ...] = get_args(PosEmbedType)
POSITION_PARAMETERS = {
    "learned_1d": ["pos_embed"],
    "none": [],
    "learned_2d": ["pos_embed_rows", "pos_embed_cols"],
    "relative": ["blocks.0.attn.relative_bias", "blocks.1.attn.relative_bias"],
    "sincos_2d": [],
    "rope_2d": [],
}


def variant(kind: str, **fields: object) -> VisionTransformer:
    """A ViT-Test/8 (width 64, 4 heads, 2 blocks, 4x4 grid at 32 px) of `kind` with one register
    token, every parameter random (the head and relative biases start at zero)."""
    torch.manual_seed(0)
    fields = {"reg_tokens": 1, **fields}
    model = vitkit.create_model("ViT-Test/8", pos_embed_type=kind, **fields)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.5)
    return model.eval()


def images(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))


def patch_positions(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """What `embed` adds to the patch tokens, read off its output: (h*w, D)."""
    with torch.no_grad():
        tokens = model.embed(x)[0, model.config.num_prefix_tokens :]
        return tokens - model.patch_embed(x)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_and_a_second_resolution(kind: str, tmp_path: Path) -> None:
    model = variant(kind)
    names = [name for name, _ in model.named_parameters()]
    assert [name for name in names if "pos_embed" in name or "relative" in name] == (
        POSITION_PARAMETERS[kind]
    )
    assert hasattr(model, "pos_embed") == (kind == "learned_1d")
    saved = vitkit.save_pretrained(model, tmp_path / "model")
    loaded = vitkit.load_model(saved)
    assert loaded.config == model.config and loaded.config.pos_embed_type == kind
    assert [name for name, _ in loaded.named_parameters()] == names
    x = images(32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

    # At 48x40 px (a 6x5 grid): resized when loading, or on every forward when dynamic.
    resized = vitkit.load_model(saved, img_size=(48, 40))
    dynamic = VisionTransformer(dataclasses.replace(model.config, dynamic_img_size=True))
    dynamic.load_state_dict(model.state_dict())
    x = images(48, 40, seed=1)
    with torch.no_grad():
        expected = dynamic.eval()(x)
        assert torch.equal(resized(x), expected)  # one resize function for both routes
        assert expected.std() > 0.1
    assert vitkit.load_model(saved, num_classes=3)(images(32, 32)).shape == (2, 3)


def big_vision_sincos(height: int, width: int, channels: int) -> np.ndarray:
    """big_vision's posemb_sincos_2d from its formula: omega_k = 1 / 10000^(k / (C/4 - 1)), the
    patch at (y, x) gets [sin(x omega), cos(x omega), sin(y omega), cos(y omega)]."""
    rows = []
    quarter = channels // 4
    omega = 1.0 / 10_000.0 ** (np.arange(quarter) / (quarter - 1))
    for y in range(height):
        for x in range(width):
            rows.append(np.concatenate([np.sin(x * omega), np.cos(x * omega),
                                        np.sin(y * omega), np.cos(y * omega)]))  # fmt: skip
    return np.stack(rows)


@pytest.mark.parametrize("size", [(32, 32), (48, 24)])
def test_sincos_2d_is_big_visions_formula_on_the_patches_only(size: tuple[int, int]) -> None:
    model = variant("sincos_2d", dynamic_img_size=True)
    x = images(*size)
    expected = big_vision_sincos(size[0] // 8, size[1] // 8, 64)
    np.testing.assert_allclose(patch_positions(model, x).numpy(), expected, atol=1e-5, rtol=0)
    with torch.no_grad():  # the [class] token and the register get nothing added
        prefix = model.embed(x)[0, :2]
    assert torch.equal(prefix, torch.cat([model.cls_token[0], model.reg_token[0]]))
    assert not any(buffer for buffer in model.state_dict() if "pos" in buffer)


def test_learned_2d_shares_the_row_and_column_halves() -> None:
    model = variant("learned_2d", img_size=(32, 24))  # a 4x3 grid
    added = patch_positions(model, images(32, 24)).reshape(4, 3, 64)
    x_half, y_half = added[..., :32], added[..., 32:]  # the X-embedding first (Appendix D.4)

    def same(got: torch.Tensor, expected: torch.Tensor) -> None:  # within (x + p) - x rounding
        torch.testing.assert_close(got, expected.expand_as(got), atol=1e-6, rtol=0)

    same(y_half, y_half[:, :1])  # same row, same Y half
    same(x_half, x_half[:1])  # same column, same X half
    same(y_half[:, 0], model.pos_embed_rows[0].detach())
    same(x_half[0], model.pos_embed_cols[0].detach())
    assert (y_half[0, 0] - y_half[1, 0]).abs().max() > 0.1  # the rows do differ
    assert (x_half[0, 0] - x_half[0, 1]).abs().max() > 0.1  # and the columns


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_learned_2d_tables_resize_as_the_embedding_they_make(mode: str) -> None:
    """Resizing each table along its axis equals resizing the 2-D embedding as `resize_pos_embed`
    does: the same convention as learned_1d."""
    rows, cols = torch.randn(1, 4, 8), torch.randn(1, 3, 8)
    resized = grid_pos_embed(
        resize_axis(rows, new_length=7, axis=0, mode=mode),
        resize_axis(cols, new_length=5, axis=1, mode=mode),
    )
    expected = resize_pos_embed(
        grid_pos_embed(rows, cols), new_grid=(7, 5), old_grid=(4, 3), num_prefix_tokens=0, mode=mode
    )
    torch.testing.assert_close(resized, expected, atol=1e-6, rtol=0)


def naive_bias(table: np.ndarray, grid: tuple[int, int], prefix: int) -> np.ndarray:
    """(heads, T, T) from a table (3 + (2h-1)(2w-1), heads), pair by pair: the prefix entries
    first (prefix->patch, patch->prefix, prefix->prefix), then offsets (query - key) row-major."""
    height, width = grid
    tokens = prefix + height * width
    bias = np.zeros((table.shape[1], tokens, tokens))
    for query in range(tokens):
        for key in range(tokens):
            if query < prefix and key < prefix:
                entry = 2
            elif query < prefix:
                entry = 0
            elif key < prefix:
                entry = 1
            else:
                qy, qx = divmod(query - prefix, width)
                ky, kx = divmod(key - prefix, width)
                entry = 3 + (qy - ky + height - 1) * (2 * width - 1) + (qx - kx + width - 1)
            bias[:, query, key] = table[entry]
    return bias


def test_relative_bias_is_the_naive_one_and_depends_on_the_offset_only() -> None:
    model = variant("relative", img_size=(32, 24), reg_tokens=2)  # 4x3 grid, 3 prefix tokens
    grid, prefix = (4, 3), 3
    attn = model.blocks[0].attn
    positions = RelativePositions(grid, relative_position_index(grid, prefix))
    with torch.no_grad():
        bias = relative_bias(attn.relative_bias, positions, table_grid=grid, mode="bilinear")
    expected = naive_bias(attn.relative_bias[0].detach().numpy(), grid, prefix)
    np.testing.assert_array_equal(bias.numpy(), expected)
    by_offset: dict[tuple[int, int], torch.Tensor] = {}
    for query in range(12):
        for key in range(12):
            (qy, qx), (ky, kx) = divmod(query, 3), divmod(key, 3)
            pair = bias[:, prefix + query, prefix + key]
            first = by_offset.setdefault((qy - ky, qx - kx), pair)
            assert torch.equal(pair, first)  # every pair at one offset reads one entry
    assert len(by_offset) == 7 * 5
    assert len({tuple(pair.tolist()) for pair in by_offset.values()}) == 7 * 5  # all distinct

    # The attention adds exactly this bias to its logits: the log-weights with the table differ
    # from those without by the bias, up to a constant per query row.
    tokens = 0.05 * torch.randn(2, prefix + 12, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out, weights = attn.forward_with_weights(tokens, positions)
        torch.testing.assert_close(attn(tokens, positions), out, atol=1e-5, rtol=0)  # SDPA's
        saved = attn.relative_bias.clone()
        attn.relative_bias.zero_()
        _, unbiased = attn.forward_with_weights(tokens, positions)
        attn.relative_bias.copy_(saved)
    added = (weights.log() - unbiased.log()).double()
    added -= added.mean(dim=-1, keepdim=True)
    want = torch.from_numpy(expected)
    want -= want.mean(dim=-1, keepdim=True)
    torch.testing.assert_close(added, want.expand_as(added), atol=1e-4, rtol=0)


def test_relative_bias_resizes_as_an_image_of_offsets() -> None:
    """Bilinear with aligned corners: offset 0 keeps its bias, the extreme offsets theirs."""
    table = torch.randn(1, 3 + 7 * 5, 4)  # a 4x3 grid's offsets: 7x5
    resized = resize_relative_bias(table, old_grid=(4, 3), new_grid=(6, 5), mode="bilinear")
    old, new = table[0, 3:].reshape(7, 5, 4), resized[0, 3:].reshape(11, 9, 4)
    assert torch.equal(resized[0, :3], table[0, :3])  # the prefix entries are kept
    torch.testing.assert_close(new[5, 4], old[3, 2], atol=1e-6, rtol=0)  # zero offset
    for corner in [(0, 0), (-1, -1), (0, -1), (-1, 0)]:
        torch.testing.assert_close(new[corner], old[corner], atol=1e-6, rtol=0)


def test_relative_attention_weights_match_the_fused_forward() -> None:
    """`forward_with_attention` (the figures' path) includes the bias the fused path adds."""
    model = variant("relative", dynamic_img_size=True)
    x = images(40, 48)
    with torch.no_grad():
        tokens = model.embed(x)
        positions = model.position_scheme.attention_positions((5, 6), x.device)
        for block in model.blocks:
            fused = block(tokens, positions)
            tokens, weights = block.forward_with_attention(tokens, positions)
            torch.testing.assert_close(tokens, fused, atol=1e-5, rtol=0)
        assert len(model.forward_attention(x)) == 2


@pytest.mark.parametrize("kind", ["none", "learned_1d"])
def test_none_sees_no_positions(kind: str) -> None:
    """Rolling the image by whole patches permutes the patch tokens: with average pooling and no
    position information the logits stay; with learned_1d (the control) they move."""
    model = variant(kind, classifier="gap", class_token=False)
    if kind == "none":
        assert not [name for name in model.state_dict() if "pos_embed" in name]
    x = images(32, 32)
    rolled = torch.roll(x, shifts=(8, 16), dims=(2, 3))
    with torch.no_grad():
        change = (model(rolled) - model(x)).abs().max().item()
        assert model(x).std() > 0.1
    assert change <= 1e-5 if kind == "none" else change > 1e-3


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind != "learned_1d"])
def test_compile_traces_one_graph_at_another_size(kind: str) -> None:
    """As tests/test_fast_paths.py for learned_1d: no graph break, the same outputs and
    gradients, here through each variant's resize (a dynamic model at a second size)."""
    torch._dynamo.reset()
    model = variant(kind, dynamic_img_size=True).train()
    reference = copy.deepcopy(model)
    x = images(40, 24)
    logits = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    expected = reference(x)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    logits.square().sum().backward()
    expected.square().sum().backward()
    for (name, param), other in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, other.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_old_config_files_load_and_bad_values_are_named(tmp_path: Path) -> None:
    saved = vitkit.save_pretrained(variant("learned_1d"), tmp_path / "model")
    config_file = saved / "config.json"
    content = json.loads(config_file.read_text())
    del content["config"]["pos_embed_type"]  # written before the field existed
    config_file.write_text(json.dumps(content))
    assert vitkit.load_model(saved).config.pos_embed_type == "learned_1d"
    content["config"]["pos_embed_type"] = "rope"
    config_file.write_text(json.dumps(content))
    with pytest.raises(CheckpointError) as error:
        vitkit.load_model(saved)
    message = str(error.value)
    assert "pos_embed_type must be one of 'learned_1d', 'none'" in message and "\n" not in message


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(pos_embed_type="sincos_2d", width=66, num_heads=6), "a multiple of 4"),
        (dict(pos_embed_type="learned_2d", width=63, num_heads=7), "needs an even width"),
        (dict(pos_embed_type="relative", no_embed_class=True), "no_embed_class=True needs"),
        (dict(pos_embed_type=None), "pos_embed_type must be one of"),
    ],
)
def test_impossible_combinations_are_config_errors(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        vitkit.get_config("ViT-Test/8", **fields)
    assert message in str(error.value) and "\n" not in str(error.value)


# Every format but vitkit's holds learned 1-D positions only, and timm's and transformers'
# DINOv3 rotary ones (tests/test_modern_vits.py).
REFUSING = [
    (kind, to, name)
    for kind in KINDS
    if kind != "learned_1d"
    for to, name in [("timm", "m.safetensors"), ("hf", "hf"), ("npz", "m.npz")]
    if (kind, to) not in {("rope_2d", "hf"), ("rope_2d", "timm")}
]


@pytest.mark.parametrize("kind,to,name", REFUSING)
def test_formats_without_the_variant_refuse_it(kind: str, to: str, name: str, tmp_path) -> None:
    model = variant(kind, gelu="tanh")
    with pytest.raises(CheckpointError) as error:
        export_model(model, tmp_path / name, to=to)
    message = str(error.value)
    assert f"pos_embed_type={kind!r}" in message and "\n" not in message
    assert message.endswith(f"{HOLDING_FORMATS} vitkit")
    assert not (tmp_path / name).exists()


def test_reading_a_misshapen_table_at_another_size_is_refused(tmp_path: Path) -> None:
    """A table that does not fit the config is refused before anything is built, naming it and
    the shape the file's image and patch sizes need, never resized from whatever size it has
    into one that fits."""
    saved = vitkit.save_pretrained(variant("learned_2d"), tmp_path / "model")
    state = load_file(saved / "model.safetensors")
    state["pos_embed_rows"] = torch.zeros(1, 7, 32)
    save_file(state, saved / "model.safetensors")
    needs = r"needs pos_embed_rows of shape \(1, 4, 32\) but model.safetensors holds"
    with pytest.raises(CheckpointError, match=needs):
        vitkit.load_model(saved, img_size=48)


def test_figures_leave_out_the_similarity_without_embeddings(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    relative = write_figures(variant("relative"), pixels, tmp_path / "relative", shown=1)
    assert "position_similarity.png" not in relative and "attention_rollout.png" in relative
    learned_2d = write_figures(variant("learned_2d"), pixels, tmp_path / "learned_2d", shown=1)
    assert learned_2d["position_similarity.png"].is_file()


@pytest.mark.usefixtures("cache_in_tmp")
def test_training_passes_the_field_through(image_tree: Path, tmp_path: Path) -> None:
    config = tiny(image_tree, steps=3, model_fields="pos_embed_type=relative")
    summary = train(config, tmp_path / "run")
    assert summary.complete and summary.steps == 3
    model = vitkit.load_model(tmp_path / "run")
    assert model.config.pos_embed_type == "relative"
    assert model.blocks[0].attn.relative_bias.abs().max() > 0  # trained away from zero


@pytest.mark.parametrize("kind", ["learned_1d", "learned_2d", "relative"])
def test_position_parameters_are_not_weight_decayed(kind: str) -> None:
    """Like the 1-D table, the row and column tables and the relative biases are positions, not
    kernels: the optimizer's no-decay group holds them."""
    model = vitkit.create_model("ViT-Test/8", pos_embed_type=kind)
    decayed, exempt = param_groups(model, 0.1)
    names = {id(param): name for name, param in model.named_parameters()}
    exempt_names = {names[id(param)] for param in exempt["params"]}
    positional = {name for name in names.values() if "pos_embed" in name or "relative" in name}
    assert positional and positional <= exempt_names
    assert not positional & {names[id(param)] for param in decayed["params"]}


def test_the_model_declares_its_tokens_undecayed_register_tokens_included() -> None:
    """The model names its no-decay parameters (timm's `no_weight_decay`) and the optimizer
    reads them: register tokens were once decayed, missing from a list inside training."""
    model = vitkit.create_model("ViT-Test/8", reg_tokens=4)
    assert model.no_weight_decay() == {"pos_embed", "cls_token", "reg_token"}
    decayed, exempt = param_groups(model, 0.1)
    exempt_ids = {id(param) for param in exempt["params"]}
    assert id(model.reg_token) in exempt_ids and id(model.cls_token) in exempt_ids
    assert all(param.ndim >= 2 for param in decayed["params"])
