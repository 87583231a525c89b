"""Writes that must not follow links or leave half a result, and reads that must not hang.

A run's lock, `vitkit convert`'s files and a checkpoint path come from a user's folder, where a
stranger (or an accident) may have left a symbolic link, a FIFO or a device. A write never goes
through a link it did not create; a conversion lands whole or not at all, even when killed between
its files, and the next run removes what a killed one left; a reader refuses anything but a
regular file in one line instead of blocking forever or reading /dev/zero until memory runs out.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.cli.main import main
from vitkit.errors import CheckpointError, TrainingError
from vitkit.training.trainer import train
from vitkit.weights.export import export_model

from helpers import random_test_vit, tiny

VICTIM_TEXT = "a file the user cares about\n"


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def outputs(model: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return model(torch.randn(2, 3, 32, 32, generator=generator))


# --- the run lock and metrics.jsonl ------------------------------------------------------------


def test_a_run_lock_that_is_a_link_is_refused_and_its_target_kept(
    image_tree: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").symlink_to(victim)
    with pytest.raises(TrainingError, match=r"run\.lock is a symbolic link"):
        train(tiny(image_tree, steps=2), run)
    assert victim.read_text() == VICTIM_TEXT


def test_a_run_lock_that_is_a_fifo_is_refused_in_one_line(
    image_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "run.lock")
    code = main(["train", "--preset", "tiny", "--data", str(image_tree), "--out", str(run)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "run.lock is not a regular file" in error and "\n" not in error


def test_metrics_that_are_a_link_are_not_appended_through(image_tree: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(vitkit.VitkitError, match=r"metrics\.jsonl is a symbolic link"):
        train(tiny(image_tree, steps=2), run)
    assert victim.read_text() == VICTIM_TEXT


# --- vitkit convert: where it writes -------------------------------------------------------------


def test_a_destination_that_is_a_dangling_link_is_refused(tmp_path: Path) -> None:
    destination = tmp_path / "model.safetensors"
    destination.symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match="is a symbolic link, not a file"):
        export_model(random_test_vit(), destination, to="timm")
    assert destination.is_symlink() and not (tmp_path / "elsewhere.safetensors").exists()
    assert hidden_leftovers(tmp_path) == []


def test_a_missing_parent_folder_is_created(tmp_path: Path) -> None:
    written = export_model(random_test_vit(), tmp_path / "a" / "b" / "m.safetensors", to="timm")
    assert written.is_file()


def test_a_labels_file_that_is_a_folder_refuses_the_whole_export(tmp_path: Path) -> None:
    model = random_test_vit()
    model.class_names = tuple(f"class {index}" for index in range(model.config.num_classes))
    (tmp_path / "m.labels.txt").mkdir()
    with pytest.raises(CheckpointError, match=r"m\.labels\.txt is a folder"):
        export_model(model, tmp_path / "m.safetensors", to="timm")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.labels.txt"]  # no weights


def test_an_unwritable_place_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = export_model(random_test_vit(), tmp_path / "m", to="vitkit")
    code = main(["convert", str(source), "/sys/vitkit-test.safetensors", "--to", "timm"])
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert code == 2 and error.startswith("vitkit convert: error: cannot export to timm")
    assert "Operation not permitted" in error or "Read-only" in error or "Permission" in error


def _capped_file_size(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_file_too_large_for_the_limit_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    source = export_model(random_test_vit(width=128, mlp_dim=512), tmp_path / "in", to="vitkit")
    out = tmp_path / "out"
    out.mkdir()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitkit.cli.main",
            "convert",
            str(source),
            str(out / "m.safetensors"),
            "--to",
            "timm",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: _capped_file_size(64 << 10),  # far below the model's ~1 MB
    )
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 2, completed.stderr
    assert "File too large" in lines[-1] and "nothing was written" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    assert list(out.iterdir()) == []


KILLED_BETWEEN_FILES = textwrap.dedent(
    """
    import os, signal, sys
    import vitkit.weights.hf as hf
    from vitkit.cli.main import main

    def killed(*args, **kwargs):  # the weights are written; the process dies before the config
        os.kill(os.getpid(), signal.SIGKILL)

    hf.atomic_write_json = killed
    main(["convert", sys.argv[1], sys.argv[1], "--to", "hf"])
    """
)


def test_an_in_place_conversion_killed_between_its_files_leaves_the_source_whole(
    tmp_path: Path,
) -> None:
    model = random_test_vit()
    folder = export_model(model, tmp_path / "model", to="vitkit")
    before = sorted(path.name for path in folder.iterdir())
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BETWEEN_FILES, str(folder)], capture_output=True, timeout=120
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert sorted(path.name for path in folder.iterdir()) == before
    assert torch.equal(outputs(vitkit.load_model(folder)), outputs(model))  # still loads as it was
    assert len(hidden_leftovers(tmp_path)) == 1  # what the killed process staged

    assert main(["convert", str(folder), str(folder), "--to", "hf"]) == 0
    assert hidden_leftovers(tmp_path) == []  # the rerun removed the killed run's files
    assert (folder / "preprocessor_config.json").is_file()
    converted = vitkit.load_model(folder)
    assert (outputs(converted) - outputs(model)).abs().max() < 1e-5


# --- readers: only regular files ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "device", "folder-named-pth"])
def test_a_checkpoint_that_is_no_regular_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "zero.pth"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    expected = "no known checkpoint" if kind == "folder-named-pth" else "not a regular file"
    with pytest.raises(CheckpointError, match=expected):
        vitkit.load_model(path)


def test_a_labels_file_that_is_a_fifo_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = export_model(random_test_vit(), tmp_path / "m", to="vitkit")
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    os.mkfifo(tmp_path / "labels.txt")
    code = main(["classify", str(checkpoint), str(image), "--labels", str(tmp_path / "labels.txt")])
    assert code == 2 and "labels.txt is a FIFO" in capsys.readouterr().err
