"""Evaluation: the few-shot least-squares solver against numpy, the plan of held-out and k-shot
images, and `vitkit eval` / `fewshot` / `figures` on a model trained on CIFAR-10 images and on
Google's official checkpoint; index.html opened in headless Chromium."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import vitkit
from vitkit.cli.main import main
from vitkit.data.arrays import ArrayDataset
from vitkit.data.model_input import eval_batch
from vitkit.evaluation.accuracy import top1_counts
from vitkit.evaluation.fewshot import (
    BIAS_FEATURE,
    FewShotPlan,
    LeastSquaresClassifier,
    ridge_regression,
)
from vitkit.evaluation.linear_probe import LinearProbe
from vitkit.training.presets import get_preset
from vitkit.training.trainer import train

from helpers import OFFICIAL_FIXTURE, images_loaded_in_chromium


@pytest.mark.parametrize("rows, dim", [(40, 6), (8, 30)])  # primal and dual forms
def test_ridge_regression_agrees_with_numpy_lstsq(rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    features, targets = rng.normal(size=(rows, dim)), rng.normal(size=(rows, 3))
    l2 = 0.7
    # Ridge as ordinary least squares on the augmented system [X; sqrt(l2) I] W = [Y; 0].
    augmented = np.vstack([features, np.sqrt(l2) * np.eye(dim)])
    expected = np.linalg.lstsq(augmented, np.vstack([targets, np.zeros((dim, 3))]), rcond=None)[0]
    got = ridge_regression(torch.from_numpy(features), torch.from_numpy(targets), l2).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_least_squares_classifier_targets_and_bias() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 20)
    centres = rng.normal(size=(3, 5)) * 4
    features = torch.from_numpy(centres[labels] + rng.normal(size=(60, 5)))
    classifier = LeastSquaresClassifier.fit(features, labels, 3, l2=1e-3)
    assert classifier.accuracy(features, labels) == 1.0
    # The fit regresses onto {-1, 1}: an image's outputs are close to +1 for its class.
    design = torch.cat(
        [
            (features - classifier.mean) / classifier.std,
            torch.full((60, 1), BIAS_FEATURE, dtype=torch.float64),
        ],
        dim=1,
    )
    outputs = (design @ classifier.weights).numpy()
    assert np.abs(outputs[np.arange(60), labels] - 1).mean() < 0.3
    assert np.abs(np.delete(outputs, labels + 3 * np.arange(60)) + 1).mean() < 0.3


def test_fewshot_plan_holds_out_and_nests() -> None:
    labels = np.repeat(np.arange(4), 50)
    plan = FewShotPlan.build(labels, 4, shots=(1, 5), seeds=2, holdout_per_class=10)
    assert len(plan.holdout) == 40 and np.bincount(labels[plan.holdout]).tolist() == [10] * 4
    for (shots, _seed), indices in plan.subsets.items():
        assert np.bincount(labels[indices], minlength=4).tolist() == [shots] * 4
        assert not set(indices) & set(plan.holdout)
    assert set(plan.subsets[(1, 0)]) <= set(plan.subsets[(5, 0)])
    assert set(plan.needed()) == set(plan.holdout) | {
        i for indices in plan.subsets.values() for i in indices
    }


def test_linear_probe_separates_separable_data() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 30)
    features = torch.from_numpy(rng.normal(size=(3, 8))[labels] * 3 + rng.normal(size=(90, 8)))
    probe = LinearProbe.fit(features, labels, 3, l2=1e-4)
    assert probe.accuracy(features, labels) > 0.95


@pytest.fixture(scope="module")
def trained_run(cifar_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ViT-Test/8 trained for a few hundred steps on 2,000 CIFAR-10 images at 16 px."""
    out = tmp_path_factory.mktemp("run")
    os.environ.setdefault("VITKIT_CACHE", str(out / "cache"))
    config = dataclasses.replace(
        get_preset("tiny"), data=str(cifar_subset), steps=300, batch_size=64, lr=2e-3,
        warmup_steps=20, checkpoint_every=1000, log_every=50, classifier="token",
    )  # fmt: skip
    summary = train(config, out)
    assert summary.top1 > 0.2, summary  # the model learned something
    return out


def run_cli(*args: object) -> int:
    return main([str(arg) for arg in args])


@pytest.mark.slow
def test_fewshot_on_trained_features_beats_chance(
    trained_run: Path, cifar_subset: Path, tmp_path: Path
) -> None:
    assert run_cli("fewshot", "--checkpoint", trained_run, "--data", cifar_subset,
                   "--out", tmp_path, "--seeds", "3", "--linear-probe") == 0  # fmt: skip
    report = json.loads((tmp_path / "fewshot.json").read_text())
    assert set(report["shots"]) == {"1", "5", "10", "25"}
    ten_shot = report["shots"]["10"]
    assert len(ten_shot["accuracies"]) == 3
    print(f"\n10-shot {ten_shot['mean']:.3f} +- {ten_shot['std']:.3f}, "
          f"probe {report['linear_probe']['top1']:.3f}")  # fmt: skip
    assert ten_shot["mean"] > 0.2  # chance is 0.1
    assert report["shots"]["25"]["mean"] > report["shots"]["1"]["mean"]
    assert report["linear_probe"]["top1"] > 0.2


def test_eval_writes_report_and_confusion_matrix(
    trained_run: Path, cifar_subset: Path, tmp_path: Path
) -> None:
    assert run_cli("eval", "--checkpoint", trained_run, "--data", cifar_subset,
                   "--out", tmp_path) == 0  # fmt: skip
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["images"] == 500
    summary = json.loads((trained_run / "summary.json").read_text())
    assert result["top1"] == pytest.approx(summary["top1"])  # the training loop's own count
    assert result["top1"] <= result["top5"] <= 1
    confusion = np.array(result["confusion"])
    assert confusion.sum() == 500 and np.trace(confusion) == round(result["top1"] * 500)
    per_class = np.diag(confusion) / confusion.sum(axis=1)
    np.testing.assert_allclose(per_class, list(result["per_class"].values()))
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000


def test_eval_limit_takes_the_same_number_of_every_class(
    trained_run: Path, cifar_subset: Path, tmp_path: Path
) -> None:
    for out in (tmp_path / "a", tmp_path / "b"):
        assert run_cli("eval", "--checkpoint", trained_run, "--data", cifar_subset,
                       "--out", out, "--limit", 100) == 0  # fmt: skip
    first, again = (
        json.loads((out / "eval.json").read_text()) for out in (tmp_path / "a", tmp_path / "b")
    )
    assert first["images"] == 100 and set(first["counts"].values()) == {10}
    assert first == again  # the same subset every time


def test_eval_refuses_a_head_with_other_classes(
    cifar_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli("eval", "--checkpoint", OFFICIAL_FIXTURE / "params.npz",
                   "--data", cifar_subset, "--out", tmp_path)  # fmt: skip
    assert code == 2
    assert "7 classes" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["run", "official"])
def test_figures_page_loads_every_image_in_chromium(
    source: str, trained_run: Path, cifar_subset: Path, tmp_path: Path
) -> None:
    checkpoint = trained_run if source == "run" else OFFICIAL_FIXTURE / "params.npz"
    out = tmp_path / "figures"
    assert run_cli("figures", "--checkpoint", checkpoint, "--data", cifar_subset,
                   "--out", out, "--images", "40", "--shown", "4") == 0  # fmt: skip
    names = {path.name for path in out.iterdir()}
    assert {
        "embedding_filters.png",
        "position_similarity.png",
        "attention_distance.png",
        "attention_rollout.png",
        "attention_heads.png",
        "index.html",
    } <= names
    loaded = images_loaded_in_chromium(out / "index.html", tmp_path)
    assert loaded == {"images": 5, "loaded": 5}, loaded
    if source == "run":  # the check sees a picture that does not load
        (out / "attention_heads.png").write_bytes(b"not a png")
        assert images_loaded_in_chromium(out / "index.html", tmp_path)["loaded"] == 4


def test_eval_runs_an_official_checkpoint_on_data_with_its_classes(tmp_path: Path) -> None:
    """Google's fixture classifies into 7 classes: on a 7-class folder, eval reports every class,
    and its top-1 is the agreement of the official model's argmax with the labels, recomputed
    here from the logits of `vitkit.load_model` (checked against vit_jax elsewhere)."""
    from PIL import Image

    import vitkit
    from vitkit.data import eval_transform

    rng = np.random.default_rng(0)
    for label in range(7):
        folder = tmp_path / "data" / "test" / f"c{label}"
        folder.mkdir(parents=True)
        for index in range(3):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    checkpoint = OFFICIAL_FIXTURE / "params.npz"
    assert run_cli("eval", "--checkpoint", checkpoint, "--data", tmp_path / "data",
                   "--out", tmp_path / "eval") == 0  # fmt: skip
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["images"] == 21 and len(result["per_class"]) == 7
    model = vitkit.load_model(checkpoint)
    transform = eval_transform(model.preprocessing)
    hits = 0
    for label in range(7):
        for index in range(3):
            image = Image.open(tmp_path / "data" / "test" / f"c{label}" / f"{index}.png")
            with torch.no_grad():
                hits += int(model(transform(image.convert("RGB"))[None]).argmax() == label)
    assert result["top1"] == pytest.approx(hits / 21)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["eval", "--checkpoint", "missing-run", "--data", "{data}"], ["missing-run"]),
        (["figures", "--checkpoint", "{run}", "--data", "no-such-data", "--out", "{out}"],
         ["no-such-data", "no such file"]),
        (["fewshot", "--checkpoint", "{run}", "--data", "{data}", "--shots", "5000"],
         ["5000", "class"]),
        (["fewshot", "--checkpoint", "{run}", "--data", "{data}", "--shots", "1,x"],
         ["--shots", "1,x"]),
        (["eval", "--checkpoint", "{run}", "--data", "{data}", "--img-size", "30"],
         ["30", "patch"]),
    ],
    ids=["missing-checkpoint", "missing-data", "too-many-shots", "bad-shots", "bad-img-size"],
)  # fmt: skip
def test_bad_input_exits_2_naming_the_problem(
    args: list[str], fragments: list[str], trained_run: Path, cifar_subset: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    values = {"run": trained_run, "data": cifar_subset, "out": tmp_path / "out"}
    argv = [arg.format(**values) for arg in args]
    try:
        code = run_cli(*argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    for fragment in fragments:
        assert fragment.lower() in err.lower(), (fragment, err)


def test_top1_counts_split_over_ranks_agree_with_the_report(
    trained_run: Path, cifar_subset: Path
) -> None:
    """The loop's count (each rank its slice, summed) and the eval report count the same images
    the same way, and top1_accuracy is their ratio."""
    from vitkit.data.sources import open_dataset
    from vitkit.evaluation.accuracy import classification_report, top1_accuracy, top1_counts
    from vitkit.weights.load import load_model

    model = load_model(trained_run)
    test = open_dataset(str(cifar_subset), split="test")
    settings = dict(preprocessing=model.preprocessing)
    report = classification_report(model, test, progress=None, **settings)
    counts = [top1_counts(model, test, rank=rank, world_size=3, **settings) for rank in range(3)]
    assert sum(total for _, total in counts) == len(test) == report.images
    assert sum(correct for correct, _ in counts) == round(report.top1 * len(test))
    assert top1_accuracy(model, test, **settings) == report.top1
    assert 0.1 < report.top1 < 1.0  # a trained model: the counts are not all zero or all one


def test_flip_averaged_top1_counts_the_mean_of_both_logits() -> None:
    """flip_average: a prediction is the argmax of (logits(x) + logits(mirror of x)) / 2,
    computed here by hand from the model's outputs."""
    dataset = ArrayDataset(
        images=np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8),
        labels=np.random.default_rng(1).integers(0, 3, 40),
        classes=("a", "b", "c"),
    )
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-Test/8", img_size=16, num_classes=3).eval()
    torch.nn.init.normal_(model.head.weight)
    preprocessing = model.preprocessing
    inputs = eval_batch(torch.from_numpy(dataset.images).permute(0, 3, 1, 2), preprocessing)
    with torch.no_grad():
        averaged = (model(inputs) + model(inputs.flip(-1))) / 2
    expected = int((averaged.argmax(-1) == torch.from_numpy(dataset.labels)).sum())
    got = top1_counts(model, dataset, preprocessing=preprocessing,
                      batch_size=16, flip_average=True)  # fmt: skip
    assert got == (expected, 40)
