"""`vitkit experiment`: the statistics against scipy, the experiment record (resume, one
experiment per folder), and the resolution experiment end to end at a tiny budget, its report
opened in headless Chromium."""

from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import vitkit
from vitkit.cli.main import main
from vitkit.errors import ConfigError, TrainingError
from vitkit.experiments import record as record_module
from vitkit.experiments.engine import Experiment, Request, Seed, run_experiment
from vitkit.experiments.record import ExperimentRecord
from vitkit.experiments.resolution import EXPERIMENT as RESOLUTION
from vitkit.experiments.statistics import PairedDifference, Spread
from vitkit.training.trainer import train

from helpers import events, images_loaded_in_chromium, jsonl, tiny

pytestmark = pytest.mark.usefixtures("cache_in_tmp")


def assert_runs_shown(out: Path, page: str, arms: dict[str, list[list[str]]]) -> None:
    """The report's sections on the runs: every stage's metrics carry a training time that
    grows to the run's own recorded seconds; the first seed's final model of each arm has
    its figures written, and their data-driven captions stand on the page, or, for a model
    without attention, a note says so."""
    record = json.loads((out / "experiment.json").read_text())
    for seeds in arms.values():
        for stages in seeds:
            for key in stages:
                lines = (out / "runs" / key / "metrics.jsonl").read_text().splitlines()
                seconds = [json.loads(line)["seconds"] for line in lines]
                assert seconds == sorted(seconds) and seconds[0] > 0
                assert seconds[-1] == pytest.approx(record["runs"][key]["seconds"], abs=0.05)
    assert (out / "curves.png").stat().st_size > 10_000
    for seeds in arms.values():
        key = seeds[0][-1]
        figures = out / "runs" / key / "figures"
        if vitkit.load_model(out / "runs" / key).config.depth == 0:
            assert not figures.exists() and f"({key})</h3>\n<p>A ResNet without attention" in page
            continue
        captions = json.loads((figures / "captions.json").read_text())
        assert "block 1's heads span" in captions["attention_distance.png"]
        for name in ("embedding_filters.png", "attention_distance.png"):
            assert captions[name] in page
        assert f'href="runs/{key}/figures/index.html"' in page


@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_the_paired_interval_is_scipys(n: int) -> None:
    rng = np.random.default_rng(n)
    first, second = rng.normal(0.7, 0.02, n), rng.normal(0.69, 0.02, n)
    difference = PairedDifference.of(list(first), list(second))
    reference = stats.ttest_rel(first, second).confidence_interval(0.95)
    assert difference.mean == pytest.approx(np.mean(first - second), abs=1e-15)
    assert (difference.low, difference.high) == pytest.approx(
        (reference.low, reference.high), abs=1e-12
    )
    spread = Spread.of(list(first))
    assert (spread.mean, spread.std) == pytest.approx((first.mean(), first.std(ddof=1)))


def test_one_seed_has_a_mean_but_no_interval() -> None:
    difference = PairedDifference.of([0.7], [0.6])
    assert difference.mean == pytest.approx(0.1) and math.isnan(difference.low)
    assert difference.percent() == "+10.00 points (one seed, no interval)"
    with pytest.raises(ValueError, match="need pairs"):
        PairedDifference.of([0.7, 0.6], [0.6])


def open_record(folder: Path, settings: dict, command: str = "", name: str = "resolution"):
    """The resolution experiment's record in `folder` for `settings`, as its `run` opens it."""
    return ExperimentRecord.open(folder, name, settings, command, own_fields=RESOLUTION.own_fields)


def test_a_folder_holds_one_experiment_with_one_set_of_settings(tmp_path: Path) -> None:
    settings = {"seeds": [0, 1, 2], "budget_seconds": 180.0, "overrides": []}
    open_record(tmp_path, settings, "vitkit experiment resolution")
    again = open_record(tmp_path, dict(settings))
    assert again.content["command"] == "vitkit experiment resolution"
    with pytest.raises(TrainingError, match=r"made with seeds=\[0, 1, 2\], this command asks for"):
        open_record(tmp_path, {**settings, "seeds": [0]})
    with pytest.raises(TrainingError, match="holds the 'resolution' experiment"):
        open_record(tmp_path, settings, name="posemb")
    (tmp_path / "experiment.json").write_text("[1, 2]")
    with pytest.raises(TrainingError, match="not an experiment record"):
        open_record(tmp_path, settings)


def fixed_step_experiment(measured: list[str]) -> Experiment:
    """Arms "a" and "b" of 2-step tiny runs (no time budget: the steps are fixed), measuring
    twice each final run's top-1 and noting in `measured` each run it measured."""

    def runs(arm: str, seed: int, request: Request, record: ExperimentRecord) -> list:
        lr = 1e-3 if arm == "a" else 1e-2
        return [(arm, tiny(Path(request.data), seed=seed, steps=2, lr=lr))]

    def measure(record: ExperimentRecord, seed: Seed) -> None:
        for keys in seed.keys.values():
            key = keys[-1]

            def twice(key: str = key) -> float:
                measured.append(key)
                return 2 * record.runs[key]["top1"]

            record.measured(key, "twice", twice)

    return Experiment(
        name="fixed-steps", title="Fixed steps", introduction="Two arms.", default_seeds=2,
        default_budget_seconds=None, own_fields=frozenset({"seed", "lr"}), arms=("a", "b"),
        runs=runs, result=lambda page, record, outcome: page.paragraph(f"{outcome.top1}"),
        layout="runs/seedN/ARM", figures=lambda outcome: {}, measure=measure, timed=False,
    )  # fmt: skip


def test_an_experiment_at_fixed_steps_records_what_it_measures_once(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The benchmarks' form: steps fixed by the runs, no budget (one given is refused, as a
    missing one is for a timed experiment), a number measured per run, kept in the record and
    not measured again when the same request resumes."""
    measured: list[str] = []
    experiment = fixed_step_experiment(measured)
    out = tmp_path / "fixed"
    with pytest.raises(ConfigError, match="runs fix their steps; it takes no time budget"):
        run_experiment(experiment, Request(str(image_tree), [0], 5.0), out)
    with pytest.raises(ConfigError, match="budget_seconds: expected a positive number"):
        run_experiment(RESOLUTION, Request(str(image_tree), [0], None), out)
    assert not out.exists()
    outcome = run_experiment(experiment, Request(str(image_tree), [0, 1], None), out)
    runs = json.loads((out / "experiment.json").read_text())["runs"]
    assert sorted(runs) == ["seed0/a", "seed0/b", "seed1/a", "seed1/b"]
    for run in runs.values():
        assert run["steps"] == 2 and run["measured"] == {"twice": 2 * run["top1"]}
    assert outcome.top1["a"] == [runs["seed0/a"]["top1"], runs["seed1/a"]["top1"]]
    assert measured == ["seed0/a", "seed0/b", "seed1/a", "seed1/b"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(record_module, "train", no_training)
    measured.clear()
    again = run_experiment(experiment, Request(str(image_tree), [0, 1], None), out)
    assert measured == [] and again.top1 == outcome.top1
    assert json.loads((out / "experiment.json").read_text())["runs"] == runs
    assert f"{outcome.top1}" in html.unescape((out / "report.html").read_text())


@pytest.mark.slow
def test_the_resolution_experiment_end_to_end(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two seeds at a 2 s budget per arm on a 3-class folder: every run recorded, the report's
    table and interval made from those results (the interval checked against scipy), the plot
    loading in Chromium, and the same command again training nothing."""
    out = tmp_path / "experiment"
    command = ["experiment", "resolution", "--data", str(image_tree), "--out", str(out),
               "--seeds", "2", "--budget", "2", "--hardware", "cpu"]  # fmt: skip
    assert main(command) == 0
    record = json.loads((out / "experiment.json").read_text())
    assert record["settings"]["seeds"] == [0, 1] and record["settings"]["budget_seconds"] == 2.0
    stages = ["low", "low_then_high-pretrain", "low_then_high", "high"]
    assert sorted(record["runs"]) == sorted(f"seed{s}/{stage}" for s in (0, 1) for stage in stages)
    top1 = {
        arm: [record["runs"][f"seed{seed}/{arm}"]["top1"] for seed in (0, 1)]
        for arm in ("low", "low_then_high", "high")
    }
    page = html.unescape((out / "report.html").read_text())
    for values in top1.values():
        for value in values:
            assert f"{value:.2%}" in page
    interval = stats.ttest_rel(top1["low_then_high"], top1["low"]).confidence_interval(0.95)
    mean = np.mean(np.subtract(top1["low_then_high"], top1["low"]))
    if np.isfinite(interval.low):  # equal differences over both seeds leave no spread
        assert f"CI {interval.low * 100:+.2f} to {interval.high * 100:+.2f}" in page
    assert f"{mean * 100:+.2f} points" in page
    arms = {"low": [[f"seed{s}/low"] for s in (0, 1)], "high": [[f"seed{s}/high"] for s in (0, 1)],
            "low_then_high": [[f"seed{s}/low_then_high-pretrain", f"seed{s}/low_then_high"]
                              for s in (0, 1)]}  # fmt: skip
    assert_runs_shown(out, page, arms)
    # The result plot, the curves, and the hybrid's three small figures for each of the 3 arms.
    assert images_loaded_in_chromium(out / "report.html", tmp_path) == {"images": 11, "loaded": 11}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(record_module, "train", no_training)
    assert main(command) == 0


@pytest.mark.slow
def test_the_posemb_experiment_end_to_end(image_tree: Path, tmp_path: Path) -> None:
    """Two seeds of every position-embedding variant at a 1 s budget: each run trained with its
    variant, its top-1 and 5-shot accuracy recorded and in the report beside the paper's Table 8,
    both plots loading in Chromium."""
    out = tmp_path / "experiment"
    assert main(["experiment", "posemb", "--data", str(image_tree), "--out", str(out),
                 "--seeds", "2", "--budget", "1", "--hardware", "cpu"]) == 0  # fmt: skip
    record = json.loads((out / "experiment.json").read_text())
    variants = ["none", "learned_1d", "learned_2d", "relative", "sincos_2d"]
    assert sorted(record["runs"]) == sorted(f"seed{s}/{v}" for s in (0, 1) for v in variants)
    for key, result in record["runs"].items():
        assert 0 <= result["fewshot"] <= 1 and 0 <= result["top1"] <= 1
        saved = json.loads((out / "runs" / key / "config.json").read_text())
        assert saved["config"]["pos_embed_type"] == key.split("/")[1]
    page = html.unescape((out / "report.html").read_text())
    assert "61.38%" in page and "64.21%" in page  # the paper's no / 1-D position embedding
    for variant in variants:
        mean = np.mean([record["runs"][f"seed{s}/{variant}"]["fewshot"] for s in (0, 1)])
        assert f"{mean:.2%} ±" in page
    assert_runs_shown(out, page, {v: [[f"seed{s}/{v}"] for s in (0, 1)] for v in variants})
    # 2 result plots, the curves, and the small figures: position similarity only where the
    # model adds position embeddings to its tokens (not "none", not "relative").
    assert images_loaded_in_chromium(out / "report.html", tmp_path) == {"images": 16, "loaded": 16}


def test_the_resnet_preset_is_a_resnet_that_saves_loads_and_refuses_muon(
    image_tree: Path, tmp_path: Path
) -> None:
    """BiT-R26-CIFAR has no transformer block; it round-trips through vitkit's format with the
    same outputs, and Muon (which needs the blocks' matrices) is refused in one line."""
    model = vitkit.create_model("BiT-R26-CIFAR", img_size=32).eval()
    assert len(model.blocks) == 0 and model.config.depth == 0
    vitkit.save_pretrained(model, tmp_path / "resnet")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vitkit.load_model(tmp_path / "resnet").eval()(images), model(images))
    config = dataclasses.replace(tiny(image_tree), model="BiT-R26-CIFAR", resolution=32,
                                 optimizer="muon", steps=1)  # fmt: skip
    with pytest.raises(ConfigError, match="optimizer muon .* has none \\(depth 0\\)"):
        train(config, tmp_path / "run")


def test_overrides_reach_every_run_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    settings = {"seeds": [0], "budget_seconds": 1.0, "overrides": ["batchsize=8"]}
    with pytest.raises(ConfigError, match="unknown field 'batchsize'"):
        open_record(tmp_path / "a", settings)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_the_data_scale_experiment_end_to_end(image_tree: Path, tmp_path: Path) -> None:
    """One seed, a 1 s budget, batch 4 (the 10% share of the 144-image folder is 15 images):
    every model on every share trained on that share, top-1 and 10-shot recorded, the report's
    verdict computed from those numbers, both plots loading in Chromium."""
    out = tmp_path / "experiment"
    assert main(["experiment", "data-scale", "--data", str(image_tree), "--out", str(out),
                 "--budget", "1", "--hardware", "cpu", "--set", "batch_size=4",
                 "--set", "log=tensorboard"]) == 0  # fmt: skip
    record = json.loads((out / "experiment.json").read_text())
    assert record["settings"]["seeds"] == [0] and record["settings"]["overrides"] == [
        "batch_size=4",
        "log=tensorboard",
    ]
    models = ["BiT-R26-CIFAR", "ViT-CIFAR-4", "R+ViT-CIFAR-4"]
    fractions = ["0.1", "0.25", "0.5", "1"]
    assert sorted(record["runs"]) == sorted(f"seed0/{m}/{f}" for m in models for f in fractions)
    for key in record["runs"]:
        saved = json.loads((out / "runs" / key / "train_config.json").read_text())
        assert saved["requested"]["train_fraction"] == float(key.split("/")[2])
        assert saved["requested"]["batch_size"] == 4
        run = out / "runs" / key  # TensorBoard's view of the run: its metrics.jsonl losses
        losses = [(event.step, event.value) for event in events(run).Scalars("train/loss")]
        assert losses == [(r["step"], pytest.approx(r["loss"])) for r in jsonl(run) if "loss" in r]
    top1 = {m: [record["runs"][f"seed0/{m}/{f}"]["top1"] for f in fractions] for m in models}
    first = (top1["BiT-R26-CIFAR"][0] - top1["ViT-CIFAR-4"][0]) * 100
    last = (top1["BiT-R26-CIFAR"][-1] - top1["ViT-CIFAR-4"][-1]) * 100
    page = html.unescape((out / "report.html").read_text())
    assert f"{first:+.2f} points at 10% of the data, {last:+.2f} at 100%" in page
    assert_runs_shown(out, page, {m: [[f"seed0/{m}/1"]] for m in models})
    # 2 result plots, the curves, and three small figures for the ViT and the hybrid each.
    assert images_loaded_in_chromium(out / "report.html", tmp_path) == {"images": 9, "loaded": 9}


@pytest.mark.slow
def test_the_mpp_experiment_end_to_end(image_tree: Path, tmp_path: Path) -> None:
    """Two seeds at a 2 s budget per arm: the masked patch pre-training trained without labels
    and fine-tuned from, every arm's top-1 and every representation's 10-shot accuracy recorded
    and in the report beside the paper's section 4.6, the differences computed from them."""
    out = tmp_path / "experiment"
    assert main(["experiment", "mpp", "--data", str(image_tree), "--out", str(out),
                 "--seeds", "2", "--budget", "2", "--hardware", "cpu"]) == 0  # fmt: skip
    record = json.loads((out / "experiment.json").read_text())
    runs = ["scratch", "mpp", "mpp_then_finetune", "scratch_half", "random_init"]
    assert sorted(record["runs"]) == sorted(f"seed{s}/{run}" for s in (0, 1) for run in runs)
    for seed in (0, 1):
        pretrain = json.loads((out / f"runs/seed{seed}/mpp/train_config.json").read_text())
        assert pretrain["requested"]["task"] == "masked_patches"
        finetune = json.loads(
            (out / f"runs/seed{seed}/mpp_then_finetune/train_config.json").read_text()
        )
        assert Path(finetune["requested"]["init"]) == out / f"runs/seed{seed}/mpp"
        assert record["runs"][f"seed{seed}/mpp"]["top1"] is None
    top1 = {arm: [record["runs"][f"seed{s}/{arm}"]["top1"] for s in (0, 1)]
            for arm in ("scratch", "mpp_then_finetune", "scratch_half")}  # fmt: skip
    fewshot = {run: [record["runs"][f"seed{s}/{run}"]["fewshot"] for s in (0, 1)]
               for run in ("random_init", "mpp", "scratch")}  # fmt: skip
    page = html.unescape((out / "report.html").read_text())
    assert "79.9%" in page and "77.9%" in page
    mean = np.mean(np.subtract(top1["mpp_then_finetune"], top1["scratch"]))
    assert f"same total time: {mean * 100:+.2f} points" in page
    mean = np.mean(np.subtract(fewshot["mpp"], fewshot["random_init"]))
    assert f"randomly initialised one's: {mean * 100:+.2f} points" in page
    for values in fewshot.values():
        assert f"{np.mean(values):.2%} ±" in page
    arms = {"scratch": [[f"seed{s}/scratch"] for s in (0, 1)],
            "scratch_half": [[f"seed{s}/scratch_half"] for s in (0, 1)],
            "mpp_then_finetune": [[f"seed{s}/mpp", f"seed{s}/mpp_then_finetune"] for s in (0, 1)],
            "masked-patch encoder": [[f"seed{s}/mpp"] for s in (0, 1)]}  # fmt: skip
    assert_runs_shown(out, page, arms)
    # 2 result plots, the curves, and three small figures for each of the 4 models.
    assert images_loaded_in_chromium(out / "report.html", tmp_path) == {"images": 15, "loaded": 15}
