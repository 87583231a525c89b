"""Hostile and careless input to `vitkit experiment` (issue 29): a hand-edited experiment.json,
`--set` of what an experiment varies, an --out that names a file, and refused commands that must
leave nothing behind.

Every bad input is refused in one line before anything trains: a record's bad value naming the file
and its key, a command's bad argument naming the argument or field. Hand-made cases come first,
grouped by cause; then hypothesis mutates a valid record a few hundred ways, read in one child
process whose memory is capped (tests/hostile.py), where anything but a VitkitError is a crash.
The child imports `read_record` below from this module.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from test_hostile_data import (  # noqa: F401 - child: the fixture of the tests in a child process
    JSON_VALUES,
    assert_no_crash,
    child,
    examples,
    write_distinct,
)

import vitkit
from vitkit.cli.main import build_parser, main
from vitkit.errors import ConfigError, TrainingError
from vitkit.experiments import record as record_module
from vitkit.experiments.record import SET_BY_EVERY_EXPERIMENT, ExperimentRecord
from vitkit.experiments.resolution import EXPERIMENT as RESOLUTION
from vitkit.training.config import TrainConfig

from hostile import read_each_under_ceiling

pytestmark = pytest.mark.usefixtures("cache_in_tmp")

SETTINGS = {"data": "data", "seeds": [0, 1], "budget_seconds": 2.0, "overrides": []}
RECORD = {
    "experiment": "resolution",
    "settings": SETTINGS,
    "command": "vitkit experiment resolution",
    "machine": "2 CPU cores",
    "started": "2026-01-01 00:00:00 UTC",
    "runs": {
        "seed0/low": {
            "top1": 0.5,
            "steps": 10,
            "seconds": 2.0,
            "fewshot": 0.4,
            "measured": {"top1_6_views": 0.52, "images_per_second": 812.5},
        },
        "seed0/mpp": {"top1": None, "steps": 10, "seconds": 1.0},
        "seed0/random_init": {"fewshot": 0.3},
    },
}
DELETE = object()  # an edit that removes the key


def read_record(path: str) -> None:
    """Open the record at `path` as the resolution experiment does, with SETTINGS."""
    ExperimentRecord.open(
        Path(path).parent, RESOLUTION.name, SETTINGS, "", own_fields=RESOLUTION.own_fields
    )


def edited(edits: list[tuple[tuple, Any]]) -> bytes:
    """RECORD as JSON with each (key path, value) edit applied: a value set (or DELETE'd) at the
    path, the whole record replaced for the empty path."""
    content: Any = copy.deepcopy(RECORD)
    for path, value in edits:
        if not path:
            content = value
            continue
        parent = content
        for key in path[:-1]:
            parent = parent[key] if isinstance(parent, dict) and key in parent else None
        if not isinstance(parent, dict):
            continue  # an earlier edit removed or replaced the path
        if value is DELETE:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = value
    return json.dumps(content).encode()


def key_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into `value`'s objects, the empty one (the whole) first."""
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += key_paths(inner, (*prefix, key))
    return found


def refusal(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """The one line `vitkit` prints for `argv` refused with exit status 2 (after any progress
    bars: a message of several lines would not start the last line)."""
    assert main(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"vitkit {argv[0]}: error: "), line
    return line


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training any run fails the test: each refusal here must come before the first run."""

    def train(config: TrainConfig, folder: Path) -> None:
        raise AssertionError(f"trained {folder} at {config.resolution} px")

    monkeypatch.setattr(record_module, "train", train)


# --- W04: a hand-edited experiment.json --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("runs", "seed0/low", "top1"), "x", "runs['seed0/low'].top1"),
        (("runs", "seed0/low", "top1"), math.nan, "runs['seed0/low'].top1"),
        (("runs", "seed0/low", "top1"), 1e308, "runs['seed0/low'].top1"),
        (("runs", "seed0/low", "seconds"), 1e308, "runs['seed0/low'].seconds"),
        (("runs", "seed0/low", "steps"), "x", "runs['seed0/low'].steps"),
        (("runs", "seed0/low", "steps"), True, "runs['seed0/low'].steps"),
        (("runs", "seed0/low", "fewshot"), None, "runs['seed0/low'].fewshot"),
        (("runs", "seed0/low", "measured"), {"views": "x"}, "runs['seed0/low'].measured"),
        (("runs", "seed0/low", "measured"), {"views": math.inf}, "runs['seed0/low'].measured"),
        (("runs", "seed0/low", "measured"), [0.5], "runs['seed0/low'].measured"),
        (("runs", "seed0/low", "measured"), {str(n): 0 for n in range(65)}, "at most 64"),
        (("runs", "seed0/low"), {}, "runs['seed0/low']"),
        (("runs", "seed0/low", "seconds"), DELETE, "runs['seed0/low'] needs all of"),
        (("runs",), [], "runs must be"),
        (("command",), 5, "command must be"),
        (("settings",), [1], "settings must be"),
        (("experiment",), None, "experiment must be"),
    ],
)
def test_a_hand_edited_record_is_refused_naming_its_key(
    tmp_path: Path, path: tuple, value: Any, named: str
) -> None:
    (tmp_path / "experiment.json").write_bytes(edited([(path, value)]))
    with pytest.raises(TrainingError) as refused:
        read_record(str(tmp_path / "experiment.json"))
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'experiment.json'}: ") and "\n" not in message
    assert named in message


def test_a_record_is_read_with_its_settings_as_this_command_has_them(tmp_path: Path) -> None:
    """Seeds saved as [false, true] equal [0, 1]: the record goes on with the command's ints,
    not the booleans a report would name runs by ("seedFalse/low")."""
    (tmp_path / "experiment.json").write_bytes(edited([(("settings", "seeds"), [False, True])]))
    record = ExperimentRecord.open(
        tmp_path, RESOLUTION.name, SETTINGS, "", own_fields=RESOLUTION.own_fields
    )
    assert record.content["settings"]["seeds"] == [0, 1]
    assert all(type(seed) is int for seed in record.content["settings"]["seeds"])


def test_a_recorded_run_without_the_top1_it_was_evaluated_for_is_refused(
    tmp_path: Path, no_training: None
) -> None:
    """top1 null is what a run without a test split records (the masked patch pre-training); on
    a run evaluated on its test split, it would reach the report's table as None."""
    (tmp_path / "experiment.json").write_bytes(edited([(("runs", "seed0/low", "top1"), None)]))
    record = ExperimentRecord.open(
        tmp_path, RESOLUTION.name, SETTINGS, "", own_fields=RESOLUTION.own_fields
    )
    unevaluated = record.train("seed0/mpp", TrainConfig(steps=1, test_split=""))
    assert unevaluated == RECORD["runs"]["seed0/mpp"]
    with pytest.raises(TrainingError, match=r"runs\['seed0/low'\]\.top1 is null, but the run is"):
        record.train("seed0/low", TrainConfig(steps=1))


@pytest.mark.usefixtures("child")
def test_a_record_that_is_a_folder_or_3_gib_is_refused_without_reading_it(tmp_path: Path) -> None:
    """Read in a capped child: a 3 GiB (sparse) file read whole would take gigabytes."""
    huge, folder = tmp_path / "huge" / "experiment.json", tmp_path / "folder" / "experiment.json"
    huge.parent.mkdir()
    with open(huge, "wb") as file:
        file.truncate(3 << 30)
    folder.mkdir(parents=True)
    records = read_each_under_ceiling("test_hostile_experiments:read_record", [huge, folder])
    assert [record["outcome"] for record in records] == ["refused", "refused"], records
    assert records[0]["message"].startswith(f"{huge}: ") and "bytes" in records[0]["message"]
    assert records[1]["message"] == f"{folder} is a folder, not a regular file"


ODD_VALUES = st.sampled_from(
    ["x", "", None, math.nan, math.inf, -math.inf, 1e308, -1, 1.5, 2**64, True, [], {}, DELETE,
     "\ud800", "seed0/low", {"top1": 0.5}]
)  # fmt: skip
EDITS = st.lists(
    st.tuples(st.sampled_from(key_paths(RECORD)), ODD_VALUES | JSON_VALUES), max_size=3
)


@pytest.mark.usefixtures("child")
def test_fuzzed_records_are_refused_or_read(tmp_path: Path) -> None:
    """Hypothesis edits a valid record (odd values at its keys, keys removed) and cuts or
    replaces its text; every one is read, or refused in one line naming the file."""
    valid = edited([])
    texts = st.integers(0, len(valid)).map(lambda cut: valid[:cut]) | st.binary(max_size=200)
    contents = [("experiment.json", edited(edits)) for edits in examples(EDITS)]
    contents += [("experiment.json", text) for text in examples(texts, 50)]
    contents += [("experiment.json", text) for text in (
        valid, b"[" * 100_000 + b"]" * 100_000, b'{"runs": {"a": {"steps": ' + b"9" * 5000 + b"}}}"
    )]  # fmt: skip
    records = read_each_under_ceiling(
        "test_hostile_experiments:read_record", write_distinct(tmp_path / "corpus", contents)
    )
    assert_no_crash(records)
    for record in records:
        if record["outcome"] == "refused":
            assert str(Path(record["path"]).parent) in record["message"], record
            assert "\n" not in record["message"], record


# --- W12: an empty test split; an --out that names a file --------------------------------------


def test_an_empty_test_split_is_refused_before_training(
    image_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_training: None
) -> None:
    out = str(tmp_path / "out")
    line = refusal(capsys, ["experiment", "resolution", "--data", str(image_tree), "--out", out,
                            "--set", "test_split=", "--hardware", "cpu"])  # fmt: skip
    assert "--set test_split: the resolution experiment sets test_split itself" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["file", "file/sub"])
def test_an_out_that_names_a_file_is_refused_before_training(
    image_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_training: None, where: str
) -> None:
    (tmp_path / "file").write_text("mine")
    line = refusal(capsys, ["experiment", "resolution", "--data", str(image_tree), "--out",
                            str(tmp_path / where), "--hardware", "cpu"])  # fmt: skip
    assert f"{tmp_path / where}: cannot make the experiment's folder there" in line
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("where", ["file", "file/sub"])
def test_an_eval_out_that_names_a_file_is_refused_before_evaluating(
    image_tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    vitkit.save_pretrained(
        vitkit.create_model("ViT-Test/8", img_size=16, num_classes=3), tmp_path / "model"
    )
    (tmp_path / "file").write_text("mine")

    def evaluated(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluated before refusing --out")

    monkeypatch.setattr("vitkit.cli.evaluate.classification_report", evaluated)
    line = refusal(capsys, ["eval", "--checkpoint", str(tmp_path / "model"), "--data",
                            str(image_tree), "--out", str(tmp_path / where)])  # fmt: skip
    assert f"--out {tmp_path / where}: {tmp_path / 'file'} is not a folder" in line


# --- W17: --set of what an experiment varies ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "arguments", "field"),
    [
        ("resolution", ["--set", "resolution=16"], "resolution"),
        ("resolution", ["--seeds", "2", "--set", "seed=5"], "seed"),
        ("posemb", ["--set", "model_fields=pos_embed_type=none"], "model_fields"),
        ("data-scale", ["--set", "train_fraction=0.5"], "train_fraction"),
        ("mpp", ["--set", "task=masked_patches"], "task"),
        ("mpp", ["--set", "budget_seconds=5"], "budget_seconds"),
    ],
)
def test_set_may_not_change_what_the_experiment_sets_itself(
    image_tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    no_training: None,
    name: str,
    arguments: list[str],
    field: str,
) -> None:
    line = refusal(capsys, ["experiment", name, "--data", str(image_tree), "--out",
                            str(tmp_path / "out"), "--hardware", "cpu", *arguments])  # fmt: skip
    assert f"--set {field}: the {name} experiment sets {field} itself" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", ["resolution", "posemb", "data_scale", "masked_patches"])
def test_every_experiment_declares_the_seed_and_refuses_each_field_it_sets(
    tmp_path: Path, module: str
) -> None:
    experiment = importlib.import_module(f"vitkit.experiments.{module}").EXPERIMENT
    assert "seed" in experiment.own_fields
    assert experiment.own_fields <= {field.name for field in dataclasses.fields(TrainConfig)}
    for field in sorted(experiment.own_fields | SET_BY_EVERY_EXPERIMENT):
        settings = {**SETTINGS, "overrides": [f"{field}=1"]}
        with pytest.raises(ConfigError, match=f"--set {field}: the {experiment.name} experiment"):
            ExperimentRecord.open(
                tmp_path, experiment.name, settings, "", own_fields=experiment.own_fields
            )
    assert not (tmp_path / "experiment.json").exists()


# --- A refused first command leaves no record; --seeds is bounded -------------------------------


@pytest.mark.parametrize("fault", [["--budget", "nan"], ["--budget", "0"], ["--data", "{missing}"]])
def test_a_refused_command_leaves_no_record_for_the_corrected_one_to_trip_on(
    image_tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    fault: list[str],
) -> None:
    out = tmp_path / "out"
    command = ["experiment", "resolution", "--data", str(image_tree), "--out", str(out),
               "--budget", "2", "--hardware", "cpu"]  # fmt: skip
    faulty = [*command, *(part.format(missing=tmp_path / "missing") for part in fault)]
    refusal(capsys, faulty)
    assert not os.path.lexists(out / "experiment.json")

    class Trained(Exception):
        """The corrected command reached its first run."""

    def train(config: TrainConfig, folder: Path) -> None:
        raise Trained

    monkeypatch.setattr(record_module, "train", train)
    with pytest.raises(Trained):
        main(command)


def test_seeds_are_bounded_before_their_list_is_built(capsys: pytest.CaptureFixture) -> None:
    """Parsing alone: a list of 10^9 seeds would take tens of gigabytes."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["experiment", "resolution", "--out", "x", "--seeds", "1000000000"]
        )
    assert "argument --seeds: must be from 1 to 100, got 1000000000" in capsys.readouterr().err
