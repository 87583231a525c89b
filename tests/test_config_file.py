"""`vitkit train --config FILE`: YAML, TOML and a run's own train_config.json give the run the
command line gives, the command line overrides the file, and bad files are refused in one line
naming the file and the key, in a child process under a memory cap for the hostile ones."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_hostile_data import (  # noqa: F401 - child: the fixture of the tests in a child process
    assert_no_crash,
    child,
    examples,
    write_distinct,
)

from vitkit.cli.main import main
from vitkit.training.config_file import MAX_BYTES, config_from_file, read_config_file

from hostile import read_each_under_ceiling

pytestmark = pytest.mark.usefixtures("cache_in_tmp")

YAML = """\
# the tiny recipe on a user's folder, as a user writes it
preset: tiny
data: {data}
out: {out}
steps: 3
lr: 2e-3          # YAML 1.1 reads this as text; the field's type makes it a number
seed: 1
eval_flip: yes
"""
TOML = """\
preset = "tiny"
data = "{data}"
out = "{out}"
steps = 3
lr = 2e-3
seed = 1
eval_flip = true
"""


def vitkit(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err


def requested(run: Path) -> dict:
    return json.loads((run / "train_config.json").read_text())["requested"]


def assert_same_run(first: Path, second: Path) -> None:
    """Same config, same weights, same top-1: the two runs are one run."""
    assert requested(first) == requested(second)
    weights, again = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert weights.keys() == again.keys()
    assert all((weights[name] == again[name]).all() for name in weights)
    summary = json.loads((first / "summary.json").read_text())
    again_summary = json.loads((second / "summary.json").read_text())
    assert summary["validation_top1"] == again_summary["validation_top1"]


@pytest.mark.parametrize("suffix, template", [(".yaml", YAML), (".toml", TOML)])
def test_a_config_file_trains_the_run_its_command_line_would(
    capsys: pytest.CaptureFixture[str], user_folder_flat: Path, tmp_path: Path, suffix: str,
    template: str,
) -> None:  # fmt: skip
    """On a user's folder (mixed sizes and formats, unicode class names, no test split)."""
    from_file = tmp_path / "from-file"
    config = tmp_path / f"run{suffix}"
    config.write_text(template.format(data=user_folder_flat, out=from_file), encoding="utf-8")
    assert vitkit(capsys, "train", "--config", config)[0] == 0
    assert requested(from_file)["lr"] == 0.002 and requested(from_file)["steps"] == 3
    assert requested(from_file)["eval_flip"] is True and requested(from_file)["seed"] == 1
    from_flags = tmp_path / "from-flags"
    code, _ = vitkit(capsys, "train", "--preset", "tiny", "--data", user_folder_flat, "--out",
                     from_flags, "steps=3", "lr=2e-3", "seed=1", "eval_flip=true")  # fmt: skip
    assert code == 0
    assert_same_run(from_file, from_flags)
    command = f"vitkit train --config {config} --out {from_file}"
    assert html.escape(command) in (from_file / "report.html").read_text()


def test_a_runs_train_config_json_trains_that_run_again(
    capsys: pytest.CaptureFixture[str], user_folder_flat: Path, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    code, _ = vitkit(capsys, "train", "--preset", "tiny", "--data", user_folder_flat, "--out",
                     first, "steps=3", "seed=2", "label_smoothing=0.2")  # fmt: skip
    assert code == 0
    again = tmp_path / "again"
    assert vitkit(capsys, "train", "--config", first / "train_config.json", "--out", again)[0] == 0
    assert_same_run(first, again)
    assert requested(again)["label_smoothing"] == 0.2


def test_the_command_line_overrides_the_file(
    capsys: pytest.CaptureFixture[str], image_tree: Path, tmp_path: Path
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(YAML.format(data="nowhere", out=tmp_path / "files-out"), encoding="utf-8")
    out = tmp_path / "flags-out"
    code, _ = vitkit(capsys, "train", "--config", config, "--data", image_tree, "--out", out,
                     "steps=2", "lr=1e-3")  # fmt: skip
    assert code == 0
    assert not (tmp_path / "files-out").exists()
    assert requested(out)["steps"] == 2 and requested(out)["lr"] == 0.001
    assert requested(out)["data"] == str(image_tree) and requested(out)["seed"] == 1


BAD_FILES = {
    # name: (file name, contents, what the one error line names besides the file)
    "unknown key": ("run.yaml", "preset: tiny\nlearning_rate: 0.1\n", "'learning_rate'"),
    "ill-typed": ("run.yaml", "preset: tiny\nlr: fast\n", "lr must be a number, got 'fast'"),
    "out of range": ("run.toml", "lr = -1.0\n", "lr must be in (0, 100], got -1.0"),
    "nested": ("run.yaml", "preset: tiny\nlr: [0.1, 0.2]\n", "'lr' must be a single value"),
    "section": ("run.toml", "[optimizer]\nlr = 0.1\n", "'optimizer' must be a single value"),
    "unknown preset": ("run.yaml", "preset: fastest\n", "fastest"),
    "not a mapping": ("run.yaml", "- preset\n- tiny\n", "expected a mapping"),
    "invalid YAML": ("run.yaml", "preset: [tiny\n", "not valid YAML"),
    "invalid TOML": ("run.toml", "preset = tiny\n", "not valid TOML"),
    "unknown suffix": ("run.cfg", "preset: tiny\n", "ends in .yaml, .yml, .toml or .json"),
    "train_config.json with an unknown field": (
        "train_config.json", '{"requested": {"lr": 0.1, "warp": 9}}', "'warp'"),
}  # fmt: skip


@pytest.mark.parametrize("problem", list(BAD_FILES))
def test_a_bad_config_file_is_refused_in_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, problem: str
) -> None:
    name, contents, fragment = BAD_FILES[problem]
    config = tmp_path / name
    config.write_text(contents, encoding="utf-8")
    code, err = vitkit(capsys, "train", "--config", config, "--out", tmp_path / "run")
    assert code == 2 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if "error:" in line]
    assert f"{config}: " in line and fragment in line, line
    assert not (tmp_path / "run").exists()


def test_train_needs_a_preset_or_a_config_and_a_run_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, err = vitkit(capsys, "train", "--out", tmp_path / "run")
    assert code == 2 and "give --preset NAME or --config FILE" in err
    config = tmp_path / "run.yaml"
    config.write_text("preset: tiny\n", encoding="utf-8")
    code, err = vitkit(capsys, "train", "--config", config)
    assert code == 2 and "give --out DIR (or out in the --config file)" in err


def read_and_build(path: str) -> None:
    """What `vitkit train --config` does with a file before training: the child's reader."""
    config_from_file(read_config_file(path))


@pytest.mark.usefixtures("child")
def test_hostile_config_files_are_refused_under_a_memory_cap(tmp_path: Path) -> None:
    """No code runs from a file, no alias bomb or nesting takes the reader down, and a huge file
    is refused before it is parsed."""
    marker = tmp_path / "ran"
    files = {
        "python-tag.yaml": f"lr: !!python/object/apply:os.system ['touch {marker}']\n",
        # 9^12 strings if anything walked it: each level a list of 9 aliases of the one below
        "alias-bomb.yaml": "l0: &l0 [x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 12))
        + "lr: *l11\n",
        "deep.yaml": "lr: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "deep.json": '{"lr": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "deep.toml": "lr = " + "[" * 100_000 + "]" * 100_000 + "\n",
        "huge.yaml": "lr: 0.1\n" + "#" * MAX_BYTES + "\n",
        "binary.toml": "\udcff",
    }
    paths = []
    for name, text in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(text.encode("utf-8", "surrogateescape"))
    records = read_each_under_ceiling("test_config_file:read_and_build", paths, timeout_s=120)
    for record in records:
        assert record["outcome"] == "refused", record
        assert record["message"].startswith(f"{record['path']}: ")
        assert "\n" not in record["message"]
    assert not marker.exists()


@pytest.mark.usefixtures("child")
def test_fuzzed_config_files_are_read_or_refused(tmp_path: Path) -> None:
    """Hypothesis cuts valid YAML and TOML files and writes text from their characters; one child
    reads them all, and each is read or refused in one line naming the file."""
    contents = []
    for name, template in (("run.yaml", YAML), ("run.toml", TOML)):
        valid = template.format(data="d", out="o")
        texts = st.integers(0, len(valid)).map(lambda cut, valid=valid: valid[:cut]) | st.text(
            alphabet=valid + "[]{}:=,'\"&*!|>-#\\\t", max_size=120
        )
        contents += [(name, text.encode()) for text in examples(texts, 150)]
    records = read_each_under_ceiling(
        "test_config_file:read_and_build", write_distinct(tmp_path / "corpus", contents)
    )
    assert_no_crash(records)
    for record in records:
        if record["outcome"] == "refused":
            assert record["message"].startswith(f"{record['path']}: "), record
            assert "\n" not in record["message"], record
