"""The docs' code runs: every command of the bash blocks and every Python block in README.md and
docs/*.md, in a folder laid out as the pages assume, so that a page cannot go stale unnoticed.

The folder holds stand-ins for what a reader has: `my-images/` (a user's folder: mixed sizes,
PNG and JPEG, unicode class names, a stray text file, no test split), `photo.jpg`, a demo run in
`runs/demo/finetune` (a tiny model), a small CIFAR-10 tarball at
`../shared/data/cifar10-jpg.tar.gz`, and `ViT-B_16.npz`: a ViT-B/16 of random weights in Google's
layout, also served as Google's ViT-B/16@i21k by a file:// mirror ($VITKIT_WEIGHTS_URL). Training
commands get `steps=2` added; nothing else is changed. The blocks that cannot run here are
listed in NOT_RUN, each with why and where what it shows is tested instead; a block neither run
nor listed fails the test. A block whose commands another block runs in the same order is
covered by that one and not run twice.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import vitkit
from vitkit.weights.export import export_model

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(\w+)\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)

# (page, first line of the block) -> why it is not run here, and where it is tested instead.
NOT_RUN = {
    ("README.md", "bash scripts/demo.sh"): "the 15-minute demo itself; run before every "
    "release in a fresh clone (RESULTS.md) and in miniature by test_cli.py",
    ("docs/weights.md", 'model = vitkit.load_model("ViT-B/16@i21k+in1k-384")'): "downloads "
    "ViT-L/16 (1.2 GB) and from the Hugging Face hub; downloads are tested against a server on "
    "127.0.0.1 (test_download.py, test_hostile_download.py)",
    ("docs/training.md", "vitkit train --preset demo-pretrain"): "its third command downloads "
    "CIFAR-10 and trains a ViT-B/16 at 384 px; the demo's two stages run in test_cli.py",
    ("docs/training.md", "# run.yaml"): "trains a ViT-B/16 at 224 px, too slow "
    "for a CPU test; config files are tested in test_config_file.py",
    ("docs/experiments.md", "vitkit experiment resolution"): "each experiment runs end to end, "
    "shortened, in test_experiments.py",
    ("docs/data.md", "import torch"): "downloads CIFAR-10 and streams shards from a "
    "host; both are tested against a server on 127.0.0.1 (test_cifar.py, test_shards.py)",
}
# Pages whose commands another test runs from the page itself.
RUN_ELSEWHERE = {"docs/distributed.md": "test_distributed.py runs its torchrun commands"}


@dataclass(frozen=True)
class Block:
    page: str
    language: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.strip().splitlines()[0]

    def key(self) -> tuple[str, str]:
        return self.page, self.first_line


def blocks() -> list[Block]:
    """The bash, python and yaml blocks of every page (text blocks show output: not code)."""
    found = []
    for page in PAGES:
        for match in FENCE.finditer(page.read_text(encoding="utf-8")):
            indent, language, text = match.groups()
            if language in ("bash", "python", "yaml"):
                lines = [line.removeprefix(indent) for line in text.splitlines()]
                found.append(Block(str(page.relative_to(ROOT)), language, "\n".join(lines)))
    return found


def listed(block: Block) -> tuple[str, str] | None:
    """The NOT_RUN entry of `block`, if any."""
    matching = [key for key in NOT_RUN if key[0] == block.page]
    return next((key for key in matching if block.first_line.startswith(key[1])), None)


def commands(block: Block) -> list[list[str]]:
    """The block's commands, continuation lines joined and comments dropped."""
    joined = block.text.replace("\\\n", " ")
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def test_every_block_is_run_or_listed_with_a_reason() -> None:
    every = blocks()
    assert len(every) >= 12
    readme = next(block for block in TESTED if block.page == "README.md" and "--data my-images"
                  in block.text)  # fmt: skip
    assert readme not in RUN and covered(readme, TESTED)  # docs/data.md's block runs its commands
    stale = set(NOT_RUN) - {listed(block) for block in every}
    assert not stale, f"NOT_RUN names blocks the pages no longer have: {stale}"
    assert set(RUN_ELSEWHERE) <= {block.page for block in every}


@pytest.fixture(scope="module")
def reader_template(
    tmp_path_factory: pytest.TempPathFactory, user_folder_flat: Path, cifar_subset: Path
) -> Path:
    """project/ (my-images/, photo.jpg, runs/demo/finetune, ViT-B_16.npz), beside
    shared/data/cifar10-jpg.tar.gz and mirror/ (Google's bucket layout); returns the root."""
    root = tmp_path_factory.mktemp("reader")
    project = root / "project"
    shutil.copytree(user_folder_flat, project / "my-images")
    photo = next((project / "my-images").rglob("*.jpg"))
    shutil.copyfile(photo, project / "photo.jpg")
    tarball = root / "shared" / "data" / "cifar10-jpg.tar.gz"
    tarball.parent.mkdir(parents=True)
    with tarfile.open(tarball, "w:gz") as archive:
        for split in ("train", "test"):
            archive.add(cifar_subset / split, arcname=split)
    run_in(project, ["vitkit", "train", "--preset", "tiny", "--data", str(tarball),
                     "--out", "runs/demo/finetune", "resolution=32"])  # fmt: skip
    b16 = vitkit.create_model("ViT-B/16", num_classes=21843, representation_size=768, gelu="tanh")
    export_model(b16, project / "ViT-B_16.npz", to="npz")
    (root / "mirror" / "imagenet21k").mkdir(parents=True)
    (root / "mirror" / "imagenet21k" / "ViT-B_16.npz").symlink_to(project / "ViT-B_16.npz")
    return root


@pytest.fixture
def reader_folder(reader_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the template for one test (the big file linked), with the mirror and caches
    set; returns project/."""
    root = tmp_path / "reader"
    shutil.copytree(reader_template, root, symlinks=True,
                    ignore=lambda folder, names: ["ViT-B_16.npz"] if folder.endswith("project")
                    else [])  # fmt: skip
    (root / "project" / "ViT-B_16.npz").symlink_to(reader_template / "project" / "ViT-B_16.npz")
    monkeypatch.setenv("VITKIT_WEIGHTS_URL", (root / "mirror").as_uri())
    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    return root / "project"


def run_in(folder: Path, words: list[str]) -> None:
    if words[0] == "vitkit":
        words = [sys.executable, "-m", "vitkit", *words[1:]]
        if words[3] == "train":
            words.append("steps=2")
    completed = subprocess.run(words, cwd=folder, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"{shlex.join(words)}:\n{completed.stderr[-3000:]}"


def covered(block: Block, others: list[Block]) -> bool:
    """Whether another bash block runs all of `block`'s commands in the same order (README.md
    repeats the user-folder commands of docs/data.md): running it would test nothing more."""
    if block.language != "bash":
        return False
    mine = commands(block)
    for other in others:
        if other is not block and other.language == "bash":
            theirs = iter(commands(other))
            if len(commands(other)) > len(mine) and all(words in theirs for words in mine):
                return True
    return False


TESTED = [block for block in blocks() if not listed(block) and block.page not in RUN_ELSEWHERE]
RUN = [block for block in TESTED if not covered(block, TESTED)]


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=[f"{b.page}:{b.first_line[:40]}" for b in RUN])
def test_the_block_runs(block: Block, reader_folder: Path) -> None:
    if block.language == "python":
        run_in(reader_folder, [sys.executable, "-c", block.text])
    else:
        for words in commands(block):
            if words[:2] != ["bash", "scripts/test.sh"]:  # this suite
                run_in(reader_folder, words)
