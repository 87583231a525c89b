"""The training loop: schedule, config parsing, a tiny run end to end, exact resume after a kill,
Ctrl-C, non-finite losses, changed configs, gradient accumulation and fine-tuning from a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit import devices
from vitkit.errors import TrainingError
from vitkit.training import build, planner, trainer
from vitkit.training.build import build_model
from vitkit.training.config import parse_overrides
from vitkit.training.distributed import World
from vitkit.training.presets import PRESETS
from vitkit.training.run_dir import RunDir
from vitkit.training.schedule import learning_rate
from vitkit.training.step import TrainStep
from vitkit.training.trainer import train

from helpers import tiny

pytestmark = pytest.mark.usefixtures("cache_in_tmp")


def test_schedule_matches_torch_cosine_and_linear_warmup() -> None:
    base, warmup, total = 0.1, 5, 25
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=base)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup)
    for step in range(warmup):
        ours = learning_rate(
            step, base=base, total_steps=total, warmup_steps=warmup, decay="cosine"
        )
        assert ours == pytest.approx(base * (step + 1) / warmup)
    for step in range(warmup, total + 1):
        ours = learning_rate(
            step, base=base, total_steps=total, warmup_steps=warmup, decay="cosine"
        )
        assert ours == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12)
        optimizer.step()
        cosine.step()
    linear = [learning_rate(s, base=1.0, total_steps=10, warmup_steps=0, decay="linear")
              for s in range(11)]  # fmt: skip
    assert linear == pytest.approx([1 - s / 10 for s in range(11)])


def test_overrides_are_typed_and_checked() -> None:
    config = parse_overrides(PRESETS["tiny"], ["lr=0.5", "steps=3", "hflip=false", "decay=linear"])
    assert (config.lr, config.steps, config.hflip, config.decay) == (0.5, 3, False, "linear")
    with pytest.raises(ValueError, match="unknown field 'lrate'"):
        parse_overrides(PRESETS["tiny"], ["lrate=1"])
    with pytest.raises(ValueError, match="steps must be an integer"):
        parse_overrides(PRESETS["tiny"], ["steps=many"])
    with pytest.raises(ValueError, match="optimizer must be one of adamw, sgd"):
        parse_overrides(PRESETS["tiny"], ["optimizer=lion"])
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size"):
        parse_overrides(PRESETS["tiny"], ["micro_batch_size=5"])


def test_tiny_run_end_to_end(image_tree: Path, tmp_path: Path) -> None:
    summary = train(tiny(image_tree), tmp_path / "run")
    run = tmp_path / "run"
    for name in ("model.safetensors", "config.json", "summary.json", "train_config.json",
                 "metrics.jsonl"):  # fmt: skip
        assert (run / name).is_file(), name
    assert summary.complete and summary.steps == 6 and summary.seconds > 0
    assert summary.images_seen == 6 * tiny(image_tree).batch_size
    assert json.loads((run / "summary.json").read_text()) == summary.to_json()
    model = vitkit.load_model(run)
    assert model.config.img_size == (16, 16) and model.config.num_classes == 3
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records[:6]] == [1, 2, 3, 4, 5, 6]
    losses = [record["loss"] for record in records if "loss" in record]
    assert max(losses[-2:]) < losses[0]  # it learns: the loss falls within six steps
    # top-1 is a count over the test split, the same count an independent evaluation makes
    test = vitkit.data.open_dataset(str(image_tree), split="test")
    assert summary.top1 * len(test) == pytest.approx(round(summary.top1 * len(test)))
    assert records[-1] == {"step": 6, "seconds": summary.seconds, "top1": summary.top1,
                           "split": "test"}  # fmt: skip
    seconds = [record["seconds"] for record in records]  # training time, evaluation left out
    assert seconds == sorted(seconds) and 0 < seconds[0] and seconds[-2] <= summary.seconds
    assert len(list((run / "checkpoints").glob("*.pt"))) == 2  # the last two are kept
    # the same command again: the run is complete, nothing is redone
    assert train(tiny(image_tree), run) == summary


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vitkit.cli.main", "train", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _wait_for_checkpoint(run: Path, process: subprocess.Popen, minimum_step: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        steps = [int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.pt")]
        if steps and max(steps) >= minimum_step:
            return
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(image_tree: Path, tmp_path: Path) -> None:
    env = {**os.environ, "VITKIT_CACHE": str(tmp_path / "cache")}
    args = ["--preset", "tiny", "--data", str(image_tree), "steps=60", "checkpoint_every=10",
            "drop_path=0.1", "randaugment_ops=1", "mixup_alpha=0.5"]  # fmt: skip
    reference = _cli(*args, "--out", str(tmp_path / "reference"), env=env)
    assert reference.wait(timeout=300) == 0, reference.communicate()[0]

    killed = _cli(*args, "--out", str(tmp_path / "killed"), env=env)
    _wait_for_checkpoint(tmp_path / "killed", killed, minimum_step=20)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = _cli(*args, "--out", str(tmp_path / "killed"), env=env)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert "resuming from" in output

    assert (tmp_path / "reference" / "curves.png").is_file()  # drawn by the command
    expected, got = _weights(tmp_path / "reference"), _weights(tmp_path / "killed")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    summaries = [json.loads((tmp_path / run / "summary.json").read_text())
                 for run in ("reference", "killed")]  # fmt: skip
    assert summaries[0]["top1"] == summaries[1]["top1"]


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_cleanly(image_tree: Path, tmp_path: Path) -> None:
    env = {**os.environ, "VITKIT_CACHE": str(tmp_path / "cache")}
    args = ["--preset", "tiny", "--data", str(image_tree), "steps=200", "checkpoint_every=1000"]
    process = _cli(*args, "--out", str(tmp_path / "run"), env=env)
    deadline = time.monotonic() + 120
    metrics = tmp_path / "run" / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    assert "stopped at step" in output
    assert list((tmp_path / "run" / "checkpoints").glob("step-*.pt"))
    resumed = _cli(*args, "--out", str(tmp_path / "run"), env=env)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0 and "resuming from" in output, output


def test_non_finite_loss_stops_naming_the_step(image_tree: Path, tmp_path: Path) -> None:
    # No checkpoint before the end: the state may turn non-finite before the loss does, and a
    # checkpoint would stop the run there (tests/test_hostile_training.py).
    config = tiny(image_tree, lr=100.0, steps=50, warmup_steps=0, grad_clip=0.0,
                  checkpoint_every=1000)  # fmt: skip
    with pytest.raises(TrainingError, match=r"the loss became (nan|inf) at step \d+"):
        train(config, tmp_path / "run")
    for path in (tmp_path / "run" / "checkpoints").glob("step-*.pt"):
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_changed_config_is_refused_unless_forced(image_tree: Path, tmp_path: Path) -> None:
    train(tiny(image_tree, steps=2), tmp_path / "run")
    with pytest.raises(TrainingError, match=r"another config \(changed: lr\)"):
        train(tiny(image_tree, steps=2, lr=0.5), tmp_path / "run")
    train(tiny(image_tree, steps=2, lr=0.5), tmp_path / "run", force=True)


def test_gradient_accumulation_equals_the_full_batch(image_tree: Path, tmp_path: Path) -> None:
    """The training step with 4 micro-batches of 8 gives the update of one batch of 32 (up to
    float summation), augmentation and all."""
    results = []
    images, labels = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8), torch.arange(32) % 3
    for micro in (0, 8):
        config = tiny(image_tree, micro_batch_size=micro)
        device, world = torch.device("cpu"), World()
        model = build.new_model(config, num_classes=3, device=device)
        state = build.build_state(config, model, precision="fp32", device=device, world=world)
        augment = build.build_augment(config, model, num_classes=3)
        step = build.build_step(config, augment, precision="fp32", device=device, world=world,
                                run_dir=RunDir(tmp_path))  # fmt: skip
        assert step.micro_batches == (4 if micro else 1)
        step(state, images, labels, lr=1e-3)
        results.append(torch.cat([p.detach().flatten() for p in state.model.parameters()]))
    assert state.step == 1
    assert (results[0] - results[1]).abs().max() <= 1e-6


def test_fine_tune_from_a_run_at_higher_resolution(image_tree: Path, tmp_path: Path) -> None:
    """The fine-tuned model is the init's, resized; it keeps the init's preprocessing (here made
    ImageNet's), which the augmentation and the saved run then use, at the new resolution."""
    train(tiny(image_tree, representation_size=32), tmp_path / "pretrain")
    pretrained = vitkit.load_model(tmp_path / "pretrain")
    assert pretrained.preprocessing == vitkit.Preprocessing.google(16)  # vitkit's own default
    config_file = tmp_path / "pretrain" / "config.json"
    content = json.loads(config_file.read_text())
    content["preprocessing"].update(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    config_file.write_text(json.dumps(content))
    config = tiny(image_tree, init=str(tmp_path / "pretrain"), resolution=32, optimizer="sgd",
                  lr=0.01, weight_decay=0.0)  # fmt: skip
    model = build_model(config, num_classes=3)
    assert model.config.img_size == (32, 32) and model.config.representation_size is None
    assert model.preprocessing == vitkit.Preprocessing.imagenet(32)
    augment = build.build_augment(config, model, num_classes=3).config
    assert (augment.resolution, augment.mean) == ((32, 32), (0.485, 0.456, 0.406))
    assert torch.count_nonzero(model.head.weight) == 0
    expected = vitkit.resize_pos_embed(pretrained.pos_embed.detach(), new_grid=(4, 4))
    assert torch.equal(model.pos_embed.detach(), expected)
    summary = train(config, tmp_path / "finetune")
    assert summary.resolution == 32
    assert vitkit.load_model(tmp_path / "finetune").preprocessing == model.preprocessing


def test_ema_weights_are_the_final_model(image_tree: Path, tmp_path: Path) -> None:
    """With ema_decay the saved model holds the averaged weights, which differ from the raw ones,
    and the summary reports both accuracies."""
    summary = train(tiny(image_tree, ema_decay=0.5, steps=4), tmp_path / "run")
    assert summary.top1 is not None and summary.top1_without_ema is not None
    state = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))[-1],
                       weights_only=True)  # fmt: skip
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    ema = {key.removeprefix("module."): value for key, value in state["ema"].items()}
    assert all(torch.equal(saved[key], ema[key]) for key in saved)
    assert any(not torch.equal(saved[key], state["model"][key]) for key in saved)


def test_budgeted_run_replans_when_the_machine_slows_down(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step count planned from fast calibration steps is corrected at checkpoints from the
    measured pace, so a run whose steps become slower still ends at its budget. The planner's
    clock is a fake one that each step advances: 1/32 s while calibrating, 1/8 s afterwards (exact
    in binary), so the numbers are exact whatever the machine's speed."""
    clock = {"now": 0.0, "per_step": 1 / 32}
    monkeypatch.setattr(planner, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    real_step, real_calibrate = TrainStep.__call__, trainer.calibrate

    def timed_step(self, *args, **kwargs):
        clock["now"] += clock["per_step"]
        return real_step(self, *args, **kwargs)

    def calibrate_then_slow_down(*args, **kwargs):
        seconds = real_calibrate(*args, **kwargs)
        clock["per_step"] = 1 / 8
        return seconds

    monkeypatch.setattr(TrainStep, "__call__", timed_step)
    monkeypatch.setattr(trainer, "calibrate", calibrate_then_slow_down)
    config = tiny(image_tree, steps=0, budget_seconds=3.0, checkpoint_every=5, log_every=5,
                  warmup_steps=0, warmup_fraction=0.0)  # fmt: skip
    summary = train(config, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "train_config.json").read_text())
    # planned 3 / (1/32) = 96 steps; at step 5 (5/8 s) the pace says 5 + (3 - 5/8) * 8 = 24
    assert summary.steps == 24 and summary.seconds == 3.0
    # The re-planned count is the one train_config.json holds, so a resumed run keeps it.
    assert record["total_steps"] == 24


def test_the_budget_calibration_leaves_the_run_as_it_would_be(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The steps timed to plan a budget run on throw-away state: a budgeted run that is not
    re-planned (no checkpoint before its end) ends with the weights of a run given its step
    count outright, bit for bit. The planner's clock is a fake one advancing 1/32 s per step, so
    the plan (32 steps) does not depend on the machine's load."""
    clock = {"now": 0.0}
    monkeypatch.setattr(planner, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    real_step = TrainStep.__call__

    def timed_step(self, *args, **kwargs):
        clock["now"] += 1 / 32
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", timed_step)
    budgeted = tiny(image_tree, steps=0, budget_seconds=1.0, checkpoint_every=100_000)
    train(budgeted, tmp_path / "budgeted")
    planned = json.loads((tmp_path / "budgeted" / "train_config.json").read_text())["total_steps"]
    train(tiny(image_tree, steps=planned, checkpoint_every=100_000), tmp_path / "steps")
    first = load_file(tmp_path / "budgeted" / "model.safetensors")
    second = load_file(tmp_path / "steps" / "model.safetensors")
    assert planned == 32 and first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize(
    ("native", "model", "expected"),
    [(None, "ViT-S/16", "fp32"), ("CPU with AMX-BF16", "R+ViT-CIFAR/4", "fp32"),
     ("CPU with AMX-BF16", "ViT-Ti/16", "bf16"), ("CPU with AVX512-BF16", "ViT-S/16", "bf16")],
)  # fmt: skip
def test_auto_precision_is_bf16_only_where_it_was_measured_faster(
    native: str | None, model: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """precision=auto on a CPU: bf16 with native bf16 and a model of ViT-Ti's width or more
    (1.47-1.62x faster measured), fp32 for the demo's width-128 model (0.71x) or without native
    bf16; an explicit precision is kept whatever the machine."""
    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    architecture = vitkit.models.config.get_config(model)
    cpu = torch.device("cpu")
    precision, why = build.resolve_precision("auto", cpu, architecture)
    assert precision == expected and why.startswith("auto: ")
    assert build.resolve_precision("fp32", cpu, architecture) == ("fp32", "asked for")


def test_the_run_says_which_precision_it_chose(
    image_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train(tiny(image_tree, steps=1), tmp_path / "run")
    assert "precision fp32 (auto: " in capsys.readouterr().err  # the tiny model is 64 wide


def test_muon_steps_the_encoder_matrices_and_adamw_the_rest(image_tree: Path) -> None:
    """optimizer=muon: Muon holds exactly the 2-D weights of the encoder blocks, AdamW every
    other parameter, each once; the schedule's lr reaches both."""
    config = tiny(image_tree, optimizer="muon")
    model = build.new_model(config, num_classes=3, device=torch.device("cpu"))
    optimizer = build.build_optimizer(model, config)
    held = {name: [id(p) for g in getattr(optimizer, name).param_groups for p in g["params"]]
            for name in ("muon", "adamw")}  # fmt: skip
    names = {id(param): name for name, param in model.named_parameters()}
    assert sorted(held["muon"] + held["adamw"]) == sorted(names)
    assert all(names[i].startswith("blocks.") and "weight" in names[i] for i in held["muon"])
    assert {names[i] for i in held["muon"]} >= {
        "blocks.0.attn.qkv.weight",
        "blocks.1.mlp.fc2.weight",
    }
    for group in optimizer.param_groups:
        group["lr"] = 0.123
    assert optimizer.muon.param_groups[0]["lr"] == optimizer.adamw.param_groups[0]["lr"] == 0.123


def test_a_muon_run_resumes_exactly(image_tree: Path, tmp_path: Path) -> None:
    """Its checkpoint holds both optimizers' states: a run resumed from step 4 ends with the
    weights of the run that was not interrupted."""
    config = tiny(image_tree, optimizer="muon", steps=6, checkpoint_every=2)
    train(config, tmp_path / "whole")
    train(config, tmp_path / "resumed")
    run = tmp_path / "resumed"
    for leftover in [*run.glob("checkpoints/step-00000006.pt*"), run / "summary.json"]:
        leftover.unlink()
    train(config, run)
    expected, got = _weights(tmp_path / "whole"), _weights(run)
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def _compile_env(tmp_path: Path) -> dict[str, str]:
    """A fresh process's environment with $VITKIT_HOME in the test's folder and no inductor
    cache chosen: the compile tests run `vitkit train` in such a process, because dynamo and
    inductor keep state per process (compiled code, the cache folder) that earlier tests of the
    same test process would have set."""
    env = {**os.environ, "VITKIT_HOME": str(tmp_path / "home")}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    env.pop("VITKIT_CACHE", None)
    return env


def test_a_compile_past_its_time_limit_trains_eagerly_exactly(
    image_tree: Path, tmp_path: Path
) -> None:
    """A first compiled step that runs past compile_time_limit is abandoned and redone eagerly:
    the run ends with the weights of a run that never compiled, bit for bit."""
    args = ["--preset", "tiny", "--data", str(image_tree)]
    compiled = _cli(*args, "--out", str(tmp_path / "compiled"), "compile=true",
                    "compile_time_limit=0.01", env=_compile_env(tmp_path))  # fmt: skip
    output = compiled.communicate(timeout=600)[0]
    assert compiled.returncode == 0, output
    assert "still compiling after 0.01 s (compile_time_limit): training eagerly" in output
    eager = _cli(*args, "--out", str(tmp_path / "eager"), env=_compile_env(tmp_path))
    assert eager.wait(timeout=600) == 0
    first = load_file(tmp_path / "compiled" / "model.safetensors")
    second = load_file(tmp_path / "eager" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.slow
def test_a_compiled_run_fills_the_cache_in_vitkit_home(image_tree: Path, tmp_path: Path) -> None:
    """Within its time limit the compile is kept (its first step is reported), inductor's code
    lands in $VITKIT_HOME/inductor, and the compiled run trains as the eager one does."""
    args = ["--preset", "tiny", "--data", str(image_tree)]
    compiled = _cli(*args, "--out", str(tmp_path / "compiled"), "steps=2", "compile=true",
                    env=_compile_env(tmp_path))  # fmt: skip
    output = compiled.communicate(timeout=900)[0]
    assert compiled.returncode == 0, output
    assert "torch.compile: first step" in output
    assert any(path.is_file() for path in (tmp_path / "home" / "inductor").rglob("*"))
    eager = _cli(*args, "--out", str(tmp_path / "eager"), "steps=2", env=_compile_env(tmp_path))
    assert eager.wait(timeout=600) == 0
    first = load_file(tmp_path / "compiled" / "model.safetensors")
    second = load_file(tmp_path / "eager" / "model.safetensors")
    assert all(torch.allclose(first[key], second[key], atol=1e-4) for key in first)


def test_train_fraction_trains_on_a_class_balanced_share(image_tree: Path, tmp_path: Path) -> None:
    """train_fraction=0.5 of the 3 x 48 training images keeps 72 (24 per class): two epochs of
    full batches of 32 are 2 x 2 steps, against 2 x 4 on all 144 images."""
    config = tiny(image_tree, steps=0, epochs=2, train_fraction=0.5)
    assert train(config, tmp_path / "half").steps == 2 * (72 // 32)
    assert train(tiny(image_tree, steps=0, epochs=2), tmp_path / "all").steps == 2 * (144 // 32)
