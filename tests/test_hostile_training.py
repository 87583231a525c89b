"""Training given bad values, a busy folder, a forced resume, a diverged state and a full disk.

Grouped by cause: (1) every TrainConfig field is checked for type, range and choice, the same way
from Python and from the command line; (2) one run per output folder; (3) what --force may change
is applied and recorded, the rest refused; (4) divergence and failed writes end the run with one
line that says which checkpoints are intact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.cli.main import main
from vitkit.errors import CheckpointError, ConfigError, DataError, TrainingError
from vitkit.training import build
from vitkit.training.config import TrainConfig, model_field_changes, parse_overrides
from vitkit.training.presets import PRESETS
from vitkit.training.run_dir import RunDir
from vitkit.training.schedule import learning_rate
from vitkit.training.trainer import train
from vitkit.weights.export import export_model

from helpers import tiny

pytestmark = pytest.mark.usefixtures("cache_in_tmp")

# (field, the text a command line gives, the value Python code gives): each refused. The first
# rows are the reproducers; the rest cover every other kind of check.
BAD_VALUES = [
    ("checkpoint_every", "0", 0),
    ("batch_size", "0", 0),
    ("resolution", "17", 17),
    ("model", "ViT-Q/3", "ViT-Q/3"),
    ("lr", "nan", float("nan")),
    ("device", "tpu", "tpu"),
    ("drop_path", "2", 2.0),
    ("ema_decay", "2", 2.0),
    ("micro_batch_size", "-1", -1),
    ("representation_size", "-3", -3),
    ("randaugment_ops", "-1", -1),
    ("steps", "-5", -5),
    ("epochs", "-1", -1.0),
    ("budget_seconds", "-5", -5.0),
    ("label_smoothing", "5", 5.0),
    ("crop_scale_min", "-1", -1.0),
    ("mixup_alpha", "-1", -1.0),
    ("optimizer", "lamb", "lamb"),
    ("decay", "step", "step"),
    ("lr", "x", "x"),
    ("lr", "inf", float("inf")),
    ("lr", "0", 0.0),
    ("steps", "1e3", "1e3"),
    ("hflip", "maybe", "maybe"),
    ("seed", "-1", -1),
    ("device", "cuda:x", "cuda:x"),
    ("precision", "fp8", "fp8"),
    ("optimizer", "lamb", "lamb"),
    ("eval_flip", "sometimes", "sometimes"),
    ("compile_time_limit", "-1", -1.0),
    ("train_fraction", "0", 0.0),
    ("train_fraction", "1.5", 1.5),
    ("model_fields", "depth", "depth"),
    ("model_fields", "patch_sise=2", "patch_sise=2"),
    ("model_fields", "num_classes=3", "num_classes=3"),
    ("model_fields", "depth=x", "depth=x"),
    ("classifier", "cls", "cls"),
    ("parallel", "zero3", "zero3"),
    ("randaugment_magnitude", "31", 31),
    ("beta2", "1", 1.0),
    ("warmup_fraction", "1.5", 1.5),
    ("log_every", "0", 0),
    ("eval_every", "-1", -1),
    ("grad_clip", "-1", -1.0),
    ("weight_decay", "-0.1", -0.1),
    ("dist_timeout_seconds", "0", 0.0),
    ("cutmix_alpha", "nan", float("nan")),
    ("lr", "1e300", 1e300),  # finite, but past float32: the optimiser's step would overflow
    ("weight_decay", "1e39", 1e39),
    ("dist_timeout_seconds", "1e300", 1e300),
]


@pytest.mark.parametrize(("name", "text", "value"), BAD_VALUES)
def test_a_bad_field_is_one_line_naming_it_the_same_from_python_and_the_cli(
    name: str,
    text: str,
    value: object,
    image_tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ConfigError) as from_python:
        dataclasses.replace(PRESETS["tiny"], **{name: value})
    message = str(from_python.value)
    assert name in message and "\n" not in message
    out = tmp_path / "run"
    code = main(["train", "--preset", "tiny", "--data", str(image_tree), "--out", str(out),
                 f"{name}={text}"])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2
    assert error == f"vitkit train: error: {message}\n"
    assert not out.exists()  # refused before anything was written


def test_python_values_of_the_wrong_type_are_refused_not_coerced() -> None:
    for fields in ({"steps": True}, {"lr": "0.1"}, {"hflip": 1}, {"model": 3}, {"seed": 1.5}):
        with pytest.raises(ConfigError, match=next(iter(fields))):
            TrainConfig(**{"steps": 1, **fields})
    # An integer for a float field is a number: stored as a float, so the saved config matches.
    assert TrainConfig(steps=1, lr=1).lr == 1.0 and isinstance(TrainConfig(steps=1, lr=1).lr, float)


def test_command_line_syntax_errors_are_config_errors() -> None:
    for assignment, expected in (("lrate=1", "unknown field 'lrate'"), ("lr", "field=value")):
        with pytest.raises(ConfigError, match=expected):
            parse_overrides(PRESETS["tiny"], [assignment])


def test_every_preset_is_valid_and_help_shows_the_ranges(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for config in PRESETS.values():
        assert dataclasses.replace(config) == config  # validation passes and changes nothing
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "lr=0.001 (float, in (0, 100]): peak learning rate" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# One run per output folder.

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from vitkit.training.run_dir import RunDir
    with RunDir(sys.argv[1]).locked():
        print("held", flush=True)
        time.sleep(600)
    """
)


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_holder(
    image_tree: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(
            TrainingError, match=rf"in use by another training run \(pid {holder.pid} "
        ):
            train(tiny(image_tree, steps=2), run)
        assert sorted(path.name for path in run.iterdir()) == ["run.lock"]  # nothing written
    finally:
        holder.kill()  # a crash: the lock is released by the OS, and the next run takes it
        holder.wait()
    summary = train(tiny(image_tree, steps=2), run)
    assert summary.steps == 2


# ---------------------------------------------------------------------------------------------
# --force: what it may change is applied and recorded; the rest is refused.


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_forced_length_and_lr_are_applied_and_recorded(image_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(image_tree, steps=4, warmup_steps=2, checkpoint_every=2), run)
    forced = tiny(image_tree, steps=8, warmup_steps=2, checkpoint_every=2, lr=2e-3)
    summary = train(forced, run, force=True)
    assert summary.steps == 8
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["requested"]["steps"] == 8 and saved["requested"]["lr"] == 2e-3
    assert saved["total_steps"] == 8
    assert saved["forced"] == [{"at_step": 4, "changed": {"steps": [4, 8], "lr": [1e-3, 2e-3]}}]
    rates = {record["step"]: record["lr"] for record in _metrics(run) if "lr" in record}
    # metrics log the rate of the step just taken (0-based step - 1), under the new plan.
    expected = learning_rate(5, base=2e-3, total_steps=8, warmup_steps=2, decay="cosine")
    assert rates[6] == pytest.approx(expected)


def test_force_cannot_change_what_the_checkpoints_depend_on(
    image_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    train(tiny(image_tree, steps=2), run)
    capsys.readouterr()
    for assignment in ("model=ViT-CIFAR/4", "batch_size=16", "seed=3", "optimizer=sgd"):
        code = main(["train", "--preset", "tiny", "--data", str(image_tree), "--out", str(run),
                     "--force", "steps=2", assignment])  # fmt: skip
        error = capsys.readouterr().err
        field = assignment.split("=")[0]
        assert code == 2 and error.count("\n") == 1
        assert f"--force cannot change {field}" in error
    assert json.loads((run / "train_config.json").read_text())["requested"]["steps"] == 2


def test_forcing_fewer_steps_than_taken_is_refused(image_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(image_tree, steps=4), run)
    with pytest.raises(TrainingError, match="at step 4 already"):
        train(tiny(image_tree, steps=2), run, force=True)


def test_checkpoints_of_another_model_are_refused_in_one_line(
    image_tree: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    train(tiny(image_tree, steps=2), other)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(other / "checkpoints", run / "checkpoints")
    with pytest.raises(TrainingError, match="saved by another model") as refused:
        train(tiny(image_tree, steps=2, model="ViT-CIFAR/4"), run)
    assert "\n" not in str(refused.value)


# ---------------------------------------------------------------------------------------------
# Divergence and failed writes.


def test_a_non_finite_state_at_a_checkpoint_stops_the_run_in_one_line(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With grad_clip=0 no gradient norm is checked, so weights can turn inf in an update after
    a finite loss, and the checkpoint is the first place that sees it. A real divergence that
    does exactly this is hard to produce on demand, so the first update poisons one weight."""
    real_build = build.build_optimizer

    def poisoning_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
        optimizer = real_build(model, config)
        real_step = optimizer.step

        def step() -> None:
            real_step()
            with torch.no_grad():
                model.get_parameter("cls_token").fill_(float("inf"))

        optimizer.step = step
        return optimizer

    monkeypatch.setattr(build, "build_optimizer", poisoning_optimizer)
    config = tiny(image_tree, steps=4, grad_clip=0.0, checkpoint_every=1)
    with pytest.raises(
        TrainingError, match=r"stopped at step 1: .*NaN or inf \(model\.cls_token"
    ) as error:
        train(config, tmp_path / "run")
    assert "\n" not in str(error.value)
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*.pt"))


# The demo of a full disk: the OS refuses to let a file grow past RLIMIT_FSIZE (EFBIG once
# SIGXFSZ is ignored), a real failed write rather than a simulated one.
FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    from vitkit.cli.main import main
    limit = int(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.slow
def test_a_full_disk_says_so_and_the_saved_checkpoints_resume(
    image_tree: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(image_tree), "--out", str(run), "--force",
            "checkpoint_every=2"]  # fmt: skip
    assert main([*args, "steps=2"]) == 0
    checkpoint_bytes = (run / "checkpoints" / "step-00000002.pt").stat().st_size
    failed = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(checkpoint_bytes // 2), *args, "steps=4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode == 2, failed.stderr
    last_line = failed.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"vitkit train: error: cannot write to {run}: File too large")
    assert "(last: step 2) are intact" in last_line
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == [
        "step-00000002.pt",
        "step-00000002.pt.sha256",
    ]  # no half-written file left
    assert main([*args, "steps=4"]) == 0
    state = torch.load(run / "checkpoints" / "step-00000004.pt", weights_only=True)
    assert state["step"] == 4


def test_init_decides_the_architecture_and_train_config_records_it(
    image_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pretrained = tmp_path / "pretrained"
    train(tiny(image_tree, steps=2, classifier="gap"), pretrained)
    capsys.readouterr()
    finetuned = tmp_path / "finetuned"
    train(tiny(image_tree, steps=2, init=str(pretrained), resolution=32), finetuned)
    assert (
        "the architecture is init's (width 64, depth 2, 4 heads, patch 8, 32x32 px, gap pooling); "
        "not used: "
        "model='ViT-Test/8', model_fields='', representation_size=0, classifier='token'"
    ) in capsys.readouterr().err
    saved = json.loads((finetuned / "train_config.json").read_text())
    built = json.loads((pretrained / "config.json").read_text())["config"]
    assert saved["architecture"]["classifier"] == "gap"  # the checkpoint's, not the default
    assert saved["architecture"]["img_size"] == [32, 32]
    assert {key: value for key, value in saved["architecture"].items() if key != "img_size"} == {
        key: value for key, value in built.items() if key != "img_size"
    }


def test_resolution_zero_fine_tunes_at_the_checkpoints_own(
    image_tree: Path, tmp_path: Path
) -> None:
    pretrained = tmp_path / "pretrained"
    train(tiny(image_tree, steps=2, resolution=24), pretrained)
    summary = train(tiny(image_tree, steps=2, init=str(pretrained), resolution=0), tmp_path / "ft")
    assert summary.resolution == 24
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["config"]["img_size"] == [
        24,
        24,
    ]
    with pytest.raises(ConfigError, match="resolution=0 means the init checkpoint's own"):
        train(tiny(image_tree, resolution=0), tmp_path / "no-init")


@pytest.mark.parametrize(
    "fields", [{"parallel": "fsdp"}, {"precision": "fp16", "device": "cuda"}], ids=["fsdp", "fp16"]
)
def test_muon_is_refused_where_its_state_would_not_fit(fields: dict[str, str]) -> None:
    """Muon pairs two optimizers: FSDP's sharded optimizer state and fp16's loss scaler expect
    one torch optimizer, so those combinations are one-line ConfigErrors up front."""
    with pytest.raises(ConfigError, match="optimizer muon works with parallel=ddp") as error:
        TrainConfig(model="ViT-Test/8", resolution=16, steps=1, optimizer="muon", **fields)
    assert "\n" not in str(error.value)


def test_model_fields_take_tuples_and_cut_long_values_short() -> None:
    """resnet_layers is a tuple: written in parentheses or brackets, its commas stay inside it;
    an unknown name of 5,000 characters is named in a line of readable length."""
    changes = model_field_changes("resnet_layers=(3, 4, 9), depth=2, fc_norm=true")
    assert changes == {"resnet_layers": (3, 4, 9), "depth": 2, "fc_norm": True}
    assert model_field_changes("resnet_layers=[2,2,2,2]") == {"resnet_layers": (2, 2, 2, 2)}
    with pytest.raises(ConfigError) as error:
        model_field_changes("x" * 5000 + "=1")
    assert len(str(error.value)) < 200


# ---------------------------------------------------------------------------------------------
# A run folder's own files, read back on resume and for reports, may have been edited or be a
# stranger's: each is read within a cap, as a regular file, and checked, or refused in one line.


def _tamper(run: Path, name: str, how: str) -> None:
    path = run / name
    path.unlink(missing_ok=True)
    if how == "fifo":
        os.mkfifo(path)
    elif how == "huge":
        with path.open("wb") as file:  # sparse: nothing written
            file.truncate(3 << 30)
    elif how == "not-json":
        path.write_text("{ not json\n")
    elif how == "a-list":
        path.write_text("[1, 2]\n")
    elif how == "wrong-types":
        fields = {"steps": "x", "images_seen": 1, "resolution": 16, "seconds": 1.0}
        path.write_text(json.dumps({**fields, "total_steps": "x", "requested": {}}))


@pytest.fixture(scope="module")
def finished_run(image_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    train(tiny(image_tree, steps=2), run)
    return run


DAMAGE = ["fifo", "huge", "not-json", "a-list"]


@pytest.mark.parametrize(
    ("name", "how"),
    [
        (name, how)
        for name in ("train_config.json", "summary.json")
        for how in DAMAGE + ["wrong-types"]
    ]
    + [("metrics.jsonl", how) for how in DAMAGE],  # its records are free-form objects
)
def test_a_damaged_run_file_is_one_line_naming_it(
    finished_run: Path, tmp_path: Path, name: str, how: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _tamper(run, name, how)
    read = {
        "train_config.json": lambda: RunDir(run).saved_config(),
        "summary.json": lambda: RunDir(run).summary(),
        "metrics.jsonl": lambda: RunDir(run).metric_records(),
    }[name]
    with pytest.raises(TrainingError) as error:
        read()
    message = str(error.value)
    assert name in message and "\n" not in message


# ---------------------------------------------------------------------------------------------
# Recipes that cannot trap: a run length given on the command line replaces the preset's, two
# lengths at once are refused, and a warm-up as long as the run (which would never let the
# learning rate decay) is refused, also when epochs or a budget only later become steps.


def test_a_length_on_the_command_line_replaces_the_presets() -> None:
    preset = PRESETS["finetune"]
    assert preset.steps == 10_000
    budgeted = parse_overrides(preset, ["budget_seconds=90", "warmup_steps=0"])
    assert (budgeted.steps, budgeted.epochs, budgeted.budget_seconds) == (0, 0.0, 90.0)
    assert parse_overrides(preset, ["epochs=2", "warmup_steps=0"]).steps == 0


def test_two_lengths_at_once_are_refused_naming_both() -> None:
    with pytest.raises(ConfigError, match=r"not steps=10000 and budget_seconds=90 \(only one"):
        dataclasses.replace(PRESETS["finetune"], budget_seconds=90)


def test_a_warmup_as_long_as_the_steps_is_refused() -> None:
    with pytest.raises(ConfigError, match="warmup_steps 500 is not shorter than the run's 300"):
        parse_overrides(PRESETS["finetune"], ["steps=300"])


def test_a_warmup_longer_than_the_epochs_make_is_refused_before_training(
    image_tree: Path, tmp_path: Path
) -> None:
    """144 images in full batches of 32 make 4 steps an epoch: 2 epochs are 8 steps, not past 12."""
    config = tiny(image_tree, steps=0, epochs=2, warmup_steps=12)
    with pytest.raises(ConfigError, match="warmup_steps 12 is not shorter than the run's 8 steps"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step was taken


def test_an_unreadable_image_stops_training_or_is_skipped_by_name(
    image_tree: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(image_tree, tree)
    (tree / "train" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(DataError, match=r"broken\.png: cannot read the image.*; skip_bad leaves"):
        train(tiny(tree, steps=1), tmp_path / "stopped")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable images: .*broken\.png"):
        summary = train(tiny(tree, steps=1, skip_bad=True), tmp_path / "skipped")
    assert summary.steps == 1
    out = tmp_path / "cli"
    code = main(["train", "--preset", "tiny", "--data", str(tree), "--out", str(out),
                 "steps=1", "skip_bad=true"])  # fmt: skip
    assert code == 0


def test_init_settings_state_what_an_init_file_cannot_say(image_tree: Path, tmp_path: Path) -> None:
    """A timm export of a width-96, average-pooled model as init: refused in one line naming
    num_heads without init_settings, fine-tuned with them, the architecture they state trained."""
    model = vitkit.create_model("ViT-Test/8", img_size=16, width=96, num_heads=3,
                                classifier="gap", num_classes=3)  # fmt: skip
    exported = export_model(model, tmp_path / "init.safetensors", to="timm")
    with pytest.raises(CheckpointError, match="num_heads"):
        train(tiny(image_tree, steps=2, init=str(exported)), tmp_path / "untold")
    told = tiny(image_tree, steps=2, init=str(exported), init_settings="num_heads=3,classifier=gap")
    train(told, tmp_path / "told")
    trained = json.loads((tmp_path / "told" / "train_config.json").read_text())["architecture"]
    assert (trained["num_heads"], trained["classifier"], trained["width"]) == (3, "gap", 96)
    with pytest.raises(ConfigError, match="init_settings: expected num_heads=N"):
        tiny(image_tree, init_settings="heads=3")
