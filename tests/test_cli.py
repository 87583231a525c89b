"""The `vitkit` commands, run in-process on generated images and the shared official fixture."""

from __future__ import annotations

import html
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli.main import main
from vitkit.data import Preprocessing, eval_transform
from vitkit.data.shared import default_shared_dir

from helpers import (
    OFFICIAL_FIXTURE,
    SHARED,
    chromium,
    events,
    images_loaded_in_chromium,
    jsonl,
    screenshot_in_chromium,
)

CHECKPOINT = OFFICIAL_FIXTURE / "params.npz"
FIXTURE_CLASSES = 7
PROBABILITY_LINE = re.compile(r"^  (\d\.\d{4})  (.+)$")


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def parse_predictions(out: str) -> dict[str, list[tuple[float, str]]]:
    """{image path: [(probability, class), ...]} from classify's output."""
    predictions: dict[str, list[tuple[float, str]]] = {}
    current = ""
    for line in out.splitlines():
        if match := PROBABILITY_LINE.match(line):
            predictions[current].append((float(match[1]), match[2]))
        elif line and not line.startswith(" "):
            current = line
            predictions[current] = []
    return predictions


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three small images of different sizes and modes, one in a sub-folder."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "b.png")
    Image.fromarray(rng.integers(0, 256, (20, 50), dtype=np.uint8)).save(folder / "sub" / "c.png")
    return folder


def test_models_lists_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0
    for name in vitkit.list_models():
        assert re.search(rf"^{re.escape(name)}\s", out, re.MULTILINE), name
    # ViT-B/16 at 224 px: 86.6M parameters with a 1000-class head, 17.6 GMACs, 14*14 + 1 tokens.
    assert re.search(r"^ViT-B/16\s+86\.6M\s+35\.1\s+197$", out, re.MULTILINE)


def test_classify_prints_top_k_for_every_image(
    capsys: pytest.CaptureFixture[str], image_folder: Path
) -> None:
    code, out, err = run(capsys, "classify", CHECKPOINT, image_folder, "--top-k", "3")
    assert code == 0
    assert "3/3" in err  # the progress bar
    predictions = parse_predictions(out)
    assert sorted(predictions) == [str(path) for path in sorted(image_folder.rglob("*.png"))]
    for top in predictions.values():
        probabilities = [probability for probability, _ in top]
        assert len(top) == 3
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0 < probability <= 1 for probability in probabilities)


def test_classify_skips_unreadable_images_only_when_asked(
    capsys: pytest.CaptureFixture[str], image_folder: Path
) -> None:
    """A broken file stops classify in one line naming it and the way out; with --skip-bad the
    others are classified and a warning counts and names the skipped one."""
    broken = image_folder / "sub" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    code, out, err = run(capsys, "classify", CHECKPOINT, image_folder)
    assert code == 2 and str(broken) in err and "--skip-bad leaves such images out" in err
    with pytest.warns(UserWarning, match=rf"skipped 1 unreadable images: {re.escape(str(broken))}"):
        code, out, err = run(capsys, "classify", CHECKPOINT, image_folder, "--skip-bad")
    assert code == 0 and sorted(parse_predictions(out)) == [
        str(path) for path in sorted(image_folder.rglob("*.png"))
    ]


def test_vitkit_reads_its_own_timm_export_back_when_told_what_the_file_cannot_say(
    capsys: pytest.CaptureFixture[str], image_folder: Path, tmp_path: Path
) -> None:
    """A timm state dict records neither the heads of a width no paper variant has nor an
    average pooling beside a [class] token: classify refuses the first in one line naming
    --num-heads, and with --num-heads and --classifier gives the native model's logits."""
    model = vitkit.create_model("ViT-Test/8", img_size=16, width=96, num_heads=3,
                                classifier="gap", num_classes=3)  # fmt: skip
    torch.nn.init.normal_(model.head.weight)
    native = vitkit.save_pretrained(model, tmp_path / "native")
    exported = tmp_path / "model.safetensors"
    assert run(capsys, "convert", native, exported, "--to", "timm")[0] == 0
    code, _, err = run(capsys, "classify", exported, image_folder)
    assert code == 2 and "--num-heads" in err.strip().splitlines()[-1]
    code, told, _ = run(capsys, "classify", exported, image_folder, "--json", "--num-heads", "3",
                        "--classifier", "gap")  # fmt: skip
    _, own, _ = run(capsys, "classify", native, image_folder, "--json")
    for a, b in zip(json.loads(told), json.loads(own), strict=True):
        np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-5)


def test_classify_matches_the_model(capsys: pytest.CaptureFixture[str], image_folder: Path) -> None:
    """The printed top classes are the model's, whatever the batching."""
    model = vitkit.load_model(CHECKPOINT)
    path = image_folder / "a.png"
    image = eval_transform(Preprocessing.google(model.config.img_size))(Image.open(path))
    with torch.no_grad():
        probabilities = model(image[None]).softmax(dim=-1)[0]
    top = probabilities.topk(FIXTURE_CLASSES)
    expected = [(round(p, 4), str(i)) for p, i in zip(top.values.tolist(), top.indices.tolist())]

    outputs = []
    for batch_size in ("1", "2", "32"):
        args = [CHECKPOINT, image_folder, "--top-k", "10", "--batch-size", batch_size]
        code, out, _ = run(capsys, "classify", *args)
        assert code == 0
        outputs.append(out)
    assert outputs[0] == outputs[1] == outputs[2]
    assert parse_predictions(outputs[0])[str(path)] == expected  # top-k capped at 7 classes


@pytest.mark.parametrize("normalization", ["google", "imagenet"])
def test_classify_normalization(
    capsys: pytest.CaptureFixture[str], image_folder: Path, normalization: str
) -> None:
    """--normalization picks the statistics the image is normalised with before the model."""
    model = vitkit.load_model(CHECKPOINT)
    path = image_folder / "b.png"
    preprocessing = getattr(Preprocessing, normalization)(model.config.img_size)
    with torch.no_grad():
        logits = model(eval_transform(preprocessing)(Image.open(path))[None])
    top = logits.softmax(dim=-1)[0].topk(FIXTURE_CLASSES)
    expected = [(round(p, 4), str(i)) for p, i in zip(top.values.tolist(), top.indices.tolist())]
    args = [CHECKPOINT, path, "--top-k", "7", "--normalization", normalization]
    code, out, _ = run(capsys, "classify", *args)
    assert code == 0
    assert parse_predictions(out)[str(path)] == expected


def test_classify_with_labels_and_img_size(
    capsys: pytest.CaptureFixture[str], image_folder: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class-{i}\n" for i in range(FIXTURE_CLASSES)))
    code, out, _ = run(
        capsys, "classify", CHECKPOINT, image_folder / "b.png", "--labels", labels,
        "--img-size", "128", "--top-k", "2",
    )  # fmt: skip
    assert code == 0
    names = [name for _, name in parse_predictions(out)[str(image_folder / "b.png")]]
    assert len(names) == 2
    assert all(re.fullmatch(r"class-(\d) \(\1\)", name) for name in names)


def test_classify_names_from_the_checkpoint_and_labels_override(
    capsys: pytest.CaptureFixture[str], image_folder: Path, tmp_path: Path
) -> None:
    """A checkpoint that records class names prints them; --labels replaces them."""
    from vitkit.weights.native import save_pretrained

    model = vitkit.load_model(CHECKPOINT)
    model.class_names = tuple(f"name-{i}" for i in range(FIXTURE_CLASSES))
    named = save_pretrained(model, tmp_path / "named")
    image = image_folder / "b.png"
    code, out, _ = run(capsys, "classify", named, image, "--top-k", "7")
    assert code == 0
    names = [name for _, name in parse_predictions(out)[str(image)]]
    assert all(re.fullmatch(r"name-(\d) \(\1\)", name) for name in names) and len(names) == 7

    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class-{i}\n" for i in range(FIXTURE_CLASSES)))
    code, out, _ = run(capsys, "classify", named, image, "--labels", labels)
    assert code == 0
    names = [name for _, name in parse_predictions(out)[str(image)]]
    assert all(re.fullmatch(r"class-(\d) \(\1\)", name) for name in names)


def test_classify_json_is_one_document_matching_the_text(
    capsys: pytest.CaptureFixture[str], image_folder: Path
) -> None:
    code, text, _ = run(capsys, "classify", CHECKPOINT, image_folder, "--top-k", "3")
    assert code == 0
    code, out, err = run(capsys, "classify", CHECKPOINT, image_folder, "--top-k", "3", "--json")
    assert code == 0 and "3/3" in err  # the progress bar stays on stderr
    document = json.loads(out)
    expected = parse_predictions(text)
    assert [entry["path"] for entry in document] == list(expected)
    for entry in document:
        assert set(entry) == {"path", "predictions", "logits"}
        assert len(entry["predictions"]) == 3
        # The logits are every class's: their softmax (numpy's) gives the printed top 3.
        logits = np.asarray(entry["logits"], dtype=np.float64)
        assert logits.shape == (7,)
        softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        top = np.argsort(-softmax)[:3]
        assert [p["index"] for p in entry["predictions"]] == top.tolist()
        np.testing.assert_allclose(
            [p["probability"] for p in entry["predictions"]], softmax[top], rtol=1e-5
        )
        for prediction, (probability, index) in zip(entry["predictions"], expected[entry["path"]]):
            assert set(prediction) == {"label", "index", "probability"}
            assert prediction["label"] is None  # Google's .npz records no names
            assert prediction["index"] == int(index)
            assert round(prediction["probability"], 4) == probability


def assert_one_line_error(code: int, err: str, *fragments: str | Path) -> None:
    assert code == 2
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1
    for fragment in fragments:
        assert str(fragment) in error_lines[0]


def test_missing_checkpoint_exits_2(
    capsys: pytest.CaptureFixture[str], image_folder: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "ViT-B_16.npz"
    code, _, err = run(capsys, "classify", missing, image_folder)
    assert_one_line_error(code, err, missing)


def test_corrupt_image_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], image_folder: Path
) -> None:
    corrupt = image_folder / "sub" / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _, err = run(capsys, "classify", CHECKPOINT, image_folder)
    assert_one_line_error(code, err, corrupt, "cannot read the image")


@pytest.mark.parametrize("problem", ["empty folder", "missing image", "labels", "img-size"])
def test_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str], image_folder: Path, tmp_path: Path, problem: str
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    args, fragments = {
        "empty folder": ([empty], [empty, "no images found"]),
        "missing image": ([tmp_path / "gone.png"], [tmp_path / "gone.png"]),
        "labels": ([image_folder, "--labels", labels], [labels, "2 labels", "7 classes"]),
        "img-size": ([image_folder, "--img-size", "60"], [CHECKPOINT, "patch size"]),
    }[problem]
    code, _, err = run(capsys, "classify", CHECKPOINT, *args)
    assert_one_line_error(code, err, *fragments)


@pytest.mark.slow
def test_demo_runs_the_three_stages(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo on a tiny 16 px dataset with a few seconds of budget: the three stages run,
    the fine-tuned model is at 32 px, and summary.json has the keys checks rely on."""
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split, count in (("train", 160), ("test", 8)):
        for label in range(2):
            folder = tmp_path / "data" / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 120, (16, 16, 3), dtype=np.uint8)
                pixels[..., label] += 120
                Image.fromarray(pixels).save(folder / f"{index}.png")
    out = tmp_path / "demo"
    code, output, _ = run(capsys, "demo", "--data", tmp_path / "data", "--out", out,
                          "--budget", "3", "--set", "log=tensorboard")  # fmt: skip
    assert code == 0, output
    for stage in ("pretrain", "finetune", "finetune_at_pretrain_res"):  # TensorBoard's runs
        losses = events(out / stage).Scalars("train/loss")
        assert [event.step for event in losses] == [
            record["step"] for record in jsonl(out / stage) if "loss" in record
        ]
    summary = json.loads((out / "summary.json").read_text())
    assert {"top1", "top1_pretrain_res", "seconds"} <= set(summary)
    assert all(0 <= summary[key] <= 1 for key in ("top1", "top1_pretrain_res"))
    assert vitkit.load_model(out / "finetune").config.img_size == (32, 32)
    assert vitkit.load_model(out / "finetune_at_pretrain_res").config.img_size == (16, 16)
    assert "Fine-tuning at the higher resolution" in output
    assert (out / "figures" / "index.html").is_file()
    assert (out / "figures" / "attention_rollout.png").stat().st_size > 1000
    # One page holds it all: the table has summary.json's numbers, the claim its margin.
    assert f"report: {out / 'report.html'}" in output
    report = (out / "report.html").read_text()
    for stage in summary["stages"].values():
        assert f"<td>{stage['top1']:.2%}</td>" in report
        assert f"<td>{stage['steps']}</td>" in report
    assert f"{100 * (summary['top1'] - summary['top1_pretrain_res']):+.2f} points" in report
    assert "block 1&#x27;s heads span" in report  # the figures' captions, with this model's data
    if chromium() or os.environ.get("VITKIT_REQUIRE_CHROMIUM"):
        loaded = images_loaded_in_chromium(out / "report.html", tmp_path)
        assert loaded == {"images": 8, "loaded": 8}, loaded  # 3 curves, 5 figures
        shot = screenshot_in_chromium(out / "report.html", tmp_path / "report.png", tmp_path)
        assert shot.stat().st_size > 20_000


def test_the_demo_refuses_a_bad_change_before_training(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "demo", "--out", tmp_path / "demo", "--set", "warp=9")
    assert_one_line_error(code, err, "unknown field 'warp'")
    assert not (tmp_path / "demo").exists()


def test_train_writes_a_report_page(
    capsys: pytest.CaptureFixture[str], image_tree: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code, output, _ = run(capsys, "train", "--preset", "tiny", "--data", image_tree, "--out", out,
                          "steps=4", "lr=2e-3")  # fmt: skip
    assert code == 0
    assert f"report: {out / 'report.html'}" in output
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.html").read_text()
    assert f"<td>{summary['top1']:.2%}</td>" in report and "<td>4</td>" in report
    assert "<td>lr</td><td>0.002</td>" in report and "<td>ViT-Test/8</td>" in report
    assert "vitkit train --preset tiny" in report
    # The inspection figures of the trained model, captioned with its own numbers.
    assert f"inspection figures: {out / 'figures' / 'index.html'}" in output
    captions = json.loads((out / "figures" / "captions.json").read_text())
    assert "block 1's heads span" in captions["attention_distance.png"]
    for caption in captions.values():
        assert html.escape(caption) in report
    if chromium() or os.environ.get("VITKIT_REQUIRE_CHROMIUM"):
        loaded = images_loaded_in_chromium(out / "report.html", tmp_path)
        assert loaded == {"images": 7, "loaded": 7}, loaded  # curves, confusion matrix, 5 figures


def test_default_shared_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VITKIT_SHARED", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert default_shared_dir().resolve() == SHARED.resolve()
    monkeypatch.setenv("VITKIT_SHARED", str(tmp_path))
    assert default_shared_dir() == tmp_path


def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"vitkit {importlib.metadata.version('vitkit')} (torch ")


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    for command in ("models", "pretrained", "classify", "demo", "train", "experiment", "eval",
                    "fewshot", "figures", "shard", "convert", "export-onnx"):  # fmt: skip
        assert re.search(rf"^    {command}(\s|$)", listed, re.MULTILINE), command


def test_a_command_starts_without_the_other_commands_dependencies() -> None:
    """`vitkit classify` and `convert` import neither FSDP, nor the reports (matplotlib), nor the
    experiments (scipy); `vitkit train` imports the reports, and FSDP only once it shards."""
    heavy = ("torch.distributed.fsdp", "matplotlib.pyplot", "scipy.stats")
    probe = (
        "import sys\nfrom vitkit.cli.main import build_parser\n"
        "build_parser(sys.argv[1]).parse_args(sys.argv[1:])\n"
        f"print(' '.join(name for name in {heavy!r} if name in sys.modules))"
    )
    loaded = {}
    for words in (["classify", "m.safetensors", "a.jpg"], ["convert", "a", "b", "--to", "timm"],
                  ["train", "--preset", "tiny"]):  # fmt: skip
        completed = subprocess.run([sys.executable, "-c", probe, *words], capture_output=True,
                                   text=True, timeout=120, check=True)  # fmt: skip
        loaded[words[0]] = completed.stdout.split()
    assert loaded["classify"] == [] and loaded["convert"] == []
    assert loaded["train"] == ["matplotlib.pyplot"]
