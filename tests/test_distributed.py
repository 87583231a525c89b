"""Training on several processes (torchrun, gloo on the CPU): DDP and FSDP2 give the weights of one
process, a two-node run resumes on one process, a dead or hung process stops the job with a clear
error, and the pieces underneath (batch split, evaluation slices, activation checkpointing).

The launchers are the documentation's own commands (read from docs/distributed.md), with the
process count, rendezvous address and run id replaced. One process and two differ only in the
order of float32 sums (see WEIGHT_TOLERANCE), with random augmentation off and, since its draws
are keyed by each image's index in the global batch, with it on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.data.arrays import ArrayDataset
from vitkit.evaluation.accuracy import top1_counts
from vitkit.training.distributed import World
from vitkit.training.parallel import parallelize
from vitkit.training.presets import get_preset

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"
pytestmark = pytest.mark.slow  # torchrun and several processes, throughout

TORCHRUN = Path(sys.executable).with_name("torchrun")
STEPS, CHECKPOINT_EVERY = 40, 10
# The compared runs: the tiny preset without random augmentation (no crop, no flip; the preset
# has no dropout, stochastic depth or mixing), EMA on so that its sharding is checked too.
RUN_FIELDS = [f"steps={STEPS}", f"checkpoint_every={CHECKPOINT_EVERY}", "crop_scale_min=1",
              "hflip=false", "ema_decay=0.9", "log_every=5"]  # fmt: skip
# Weights of 2 processes vs 1 after STEPS AdamW steps (lr 1e-3): they differ only in the order
# of float32 sums (a mean over 32 images vs the average of two means over 16, or of micro-batch
# sums), measured at 1.2e-6 at most (DDP, FSDP, and one process with micro-batches alike). One
# AdamW step moves a weight by up to about lr = 1e-3, so a wrong split of the data or of the
# gradients shows at that scale, far above this bound.
WEIGHT_TOLERANCE = 2e-5
# Except the key bias (the middle third of each qkv bias): its gradient is zero in exact
# arithmetic (it adds q.b to every attention logit of a query, which softmax ignores), and Adam
# scales the float32 rounding noise that stands in for it to steps of about lr, whose signs
# depend on the order of the sums: 1.8e-4 measured. It can only be held to lr x steps.
KEY_BIAS_TOLERANCE = 1e-3 * STEPS
# Adam's moments, relative to each tensor's largest: a gradient averaged wrongly (e.g. summed
# over processes) changes exp_avg by a factor and exp_avg_sq by its square, where float32 sums
# give relative differences of 3e-6 at most.
MOMENT_RTOL = 1e-4
# Seconds a collective waits for a missing process in these runs (production default: 600).
TIMEOUT = 20


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """For every process: one decode cache for the module, one thread per process (2 cores)."""
    if not TORCHRUN.is_file():
        pytest.fail(f"torchrun is missing beside {sys.executable}; it ships with torch")
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "VITKIT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(
    cifar_subset: Path, environment: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The run the others are compared with: one process, without torchrun."""
    out = tmp_path_factory.mktemp("reference") / "run"
    completed = subprocess.run(
        [sys.executable, "-m", "vitkit", "train", *_train_args(cifar_subset, out)],
        env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out


def _train_args(data: Path, out: Path, *fields: str) -> list[str]:
    return ["--preset", "tiny", "--data", str(data), "--out", str(out), *RUN_FIELDS, *fields]


def guide_launcher(marker: str, **replace: str) -> list[str]:
    """The torchrun command of the guide's code line holding `marker`, up to `-m vitkit train`,
    with the values of the options in `replace` (--nproc-per-node given as nproc_per_node)."""
    text = GUIDE.read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if marker in line and "torchrun" in line]
    assert len(lines) == 1, (
        f"one command in {GUIDE.name} with {marker!r} expected, found {len(lines)}"
    )
    words = shlex.split(lines[0])
    words = words[words.index("torchrun") :]
    module = words.index("-m")
    assert words[module : module + 3] == ["-m", "vitkit", "train"], lines[0]
    launcher = words[: module + 3]
    for name, value in replace.items():
        option = "--" + name.replace("_", "-")
        launcher[launcher.index(option) + 1] = value
    return [str(TORCHRUN), *launcher[1:]]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(command: list[str], environment: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # so that a failed test can end the whole tree
    )  # fmt: skip


def _finish(process: subprocess.Popen, timeout: float) -> str:
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate()[0][-3000:]
        raise AssertionError(f"not done after {timeout} s: {output}") from None


def _last_checkpoint(run: Path) -> dict[str, Any]:
    path = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    return torch.load(path, weights_only=True)


def _assert_close_weights(got: dict[str, Any], expected: dict[str, Any], label: str) -> None:
    """Weights within WEIGHT_TOLERANCE, key biases within KEY_BIAS_TOLERANCE; prints the worst."""
    assert got.keys() == expected.keys()
    worst = {"weights": 0.0, "key biases": 0.0}
    for name, value in expected.items():
        difference = (got[name].float() - value.float()).abs()
        if name.endswith("attn.qkv.bias"):
            query, key, other = difference.chunk(3)
            worst["key biases"] = max(worst["key biases"], key.max().item())
            difference = torch.cat([query, other])
        worst["weights"] = max(worst["weights"], difference.max().item())
    print(f"\n{label}: max difference from one process: " + ", ".join(
        f"{what} {value:.1e}" for what, value in worst.items()))  # fmt: skip
    assert worst["weights"] <= WEIGHT_TOLERANCE and worst["key biases"] <= KEY_BIAS_TOLERANCE


def _assert_same_training(run: Path, reference: Path) -> None:
    """Same final step, weights, EMA and optimizer state as the reference, within tolerance."""
    got, expected = _last_checkpoint(run), _last_checkpoint(reference)
    assert got["step"] == expected["step"] == STEPS
    _assert_close_weights(got["model"], expected["model"], f"{run.parent.name} weights")
    _assert_close_weights(got["ema"], expected["ema"], f"{run.parent.name} EMA")
    optimizer, expected_optimizer = got["optimizer"], expected["optimizer"]
    assert optimizer["param_groups"] == expected_optimizer["param_groups"]
    assert optimizer["state"].keys() == expected_optimizer["state"].keys()
    for index, state in expected_optimizer["state"].items():
        assert torch.equal(optimizer["state"][index]["step"], state["step"])
        for moment in ("exp_avg", "exp_avg_sq"):
            scale = state[moment].abs().max().item()
            torch.testing.assert_close(
                optimizer["state"][index][moment], state[moment],
                rtol=MOMENT_RTOL, atol=MOMENT_RTOL * scale,
            )  # fmt: skip
    final = [load_file(str(directory / "model.safetensors")) for directory in (run, reference)]
    _assert_close_weights(*final, f"{run.parent.name} final weights")


def _logged_steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record["step"] for record in map(json.loads, lines) if "loss" in record]


@pytest.mark.parametrize(
    "parallel", [["parallel=ddp"], ["parallel=fsdp", "activation_checkpointing=true"]],
    ids=["ddp", "fsdp-activation-checkpointing"],
)  # fmt: skip
def test_two_processes_match_one_process(
    parallel: list[str],
    cifar_subset: Path,
    reference: Path,
    environment: dict[str, str],
    tmp_path: Path,
) -> None:
    """DDP, and FSDP2 with activation checkpointing, on 2 processes that each accumulate their 16
    images in 2 passes of 8: the weights, EMA and Adam state of one process with the whole
    batch of 32, and the same metric lines."""
    launcher = guide_launcher("--standalone", nproc_per_node="2")
    out = tmp_path / parallel[0].split("=")[1] / "run"
    fields = [*parallel, "micro_batch_size=8", f"dist_timeout_seconds={TIMEOUT}"]
    output = _finish(_launch([*launcher, *_train_args(cifar_subset, out, *fields)], environment),
                     timeout=300)  # fmt: skip
    assert output.count('"steps": 40') == 1, output[-3000:]  # rank 0 alone prints the summary
    _assert_same_training(out, reference)
    # Rank 0 alone logs: every logged step once, as one process logs them.
    assert _logged_steps(out) == _logged_steps(reference)


# Every random augmentation the trainer has: Inception crop, flip, RandAugment, Mixup or CutMix.
AUGMENTATION_ON = ["crop_scale_min=0.35", "hflip=true", "randaugment_ops=2", "mixup_alpha=0.8",
                   "cutmix_alpha=1.0"]  # fmt: skip


def test_random_augmentation_is_the_same_on_two_processes(
    cifar_subset: Path, environment: dict[str, str], tmp_path: Path
) -> None:
    """With every random augmentation on, 2 DDP processes (each accumulating 2 passes of 8)
    train the weights, EMA and Adam state of one process, within the tolerances above: each
    image is cropped, flipped, RandAugmented and mixed as in the single process."""
    one = tmp_path / "one" / "run"
    arguments = _train_args(cifar_subset, one, *AUGMENTATION_ON)
    completed = subprocess.run(
        [sys.executable, "-m", "vitkit", "train", *arguments],
        env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    launcher = guide_launcher("--standalone", nproc_per_node="2")
    two = tmp_path / "two" / "run"
    fields = ["parallel=ddp", "micro_batch_size=8", f"dist_timeout_seconds={TIMEOUT}"]
    arguments = _train_args(cifar_subset, two, *fields, *AUGMENTATION_ON)
    output = _finish(_launch([*launcher, *arguments], environment), timeout=300)
    assert output.count('"steps": 40') == 1, output[-3000:]
    _assert_same_training(two, one)


def test_fsdp_resumes_a_one_process_checkpoint(
    reference: Path, cifar_subset: Path, environment: dict[str, str], tmp_path: Path
) -> None:
    """A checkpoint written by one process is sharded over 2 (FSDP2: weights, EMA and Adam state)
    and the run ends where one process ends; evaluation counts the 500 test images once."""
    out = tmp_path / "resumed" / "run"
    shutil.copytree(reference, out)
    last = sorted((out / "checkpoints").glob("step-*.pt"))[-1]
    for path in (last, last.with_name(last.name + ".sha256"), out / "summary.json"):
        path.unlink()
    launcher = guide_launcher("--standalone", nproc_per_node="2")
    fields = ["parallel=fsdp", f"dist_timeout_seconds={TIMEOUT}"]
    output = _finish(_launch([*launcher, *_train_args(cifar_subset, out, *fields)], environment),
                     timeout=300)  # fmt: skip
    assert f"(step {STEPS - CHECKPOINT_EVERY} of {STEPS})" in output, output[-3000:]
    _assert_same_training(out, reference)
    summaries = [(run / "summary.json").read_text() for run in (out, reference)]
    top1 = [float(re.search(r'"top1": ([0-9.]+)', s).group(1)) for s in summaries]
    assert abs(top1[0] - top1[1]) <= 2 / 500, top1  # 500 test images, counted once each


def _worker_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The training process of `rank` under any of the torchrun processes started by the test
    (read from /proc: its parent and RANK)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(re.search(r"PPid:\s+(\d+)", status).group(1))
        if parent == launcher.pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie waits for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for_checkpoint(run: Path, processes: list[subprocess.Popen], step: int) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if (run / "checkpoints" / f"step-{step:08d}.pt.sha256").exists():
            return
        for process in processes:
            assert process.poll() is None, process.communicate()[0][-3000:]
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint of step {step} appeared")


def test_two_node_run_killed_mid_way_resumes_on_one_process(
    reference: Path, cifar_subset: Path, environment: dict[str, str], tmp_path: Path
) -> None:
    """Two torchrun launchers as two nodes (c10d rendezvous on 127.0.0.1, one process each, DDP
    accumulating 2 passes of 8): killing rank 1 after a checkpoint ends both within seconds with
    an error naming the failure; one process resumes from that checkpoint and ends where the
    uninterrupted single process ended."""
    launcher = guide_launcher(
        "--rdzv-endpoint HEAD:29500",
        nproc_per_node="1",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        rdzv_id=f"test-{os.getpid()}",
    )
    assert launcher[launcher.index("--nnodes") + 1] == "2"
    out = tmp_path / "nodes" / "run"
    args = _train_args(cifar_subset, out, "micro_batch_size=8")
    nodes = [_launch([*launcher, *args, f"dist_timeout_seconds={TIMEOUT}"], environment)
             for _ in range(2)]  # fmt: skip
    _wait_for_checkpoint(out, nodes, CHECKPOINT_EVERY)
    victim = next(filter(None, (_worker_pid(node, rank=1) for node in nodes)))
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    outputs = [_finish(node, timeout=120) for node in nodes]
    ended = time.monotonic() - killed
    print(f"\nboth launchers ended {ended:.1f} s after rank 1 was killed")
    assert all(node.returncode != 0 for node in nodes)
    assert ended < TIMEOUT + 15
    both = "\n".join(outputs)
    assert "Signal 9 (SIGKILL) received by PID" in both  # torchrun's summary names it
    assert "process 0 of 2 lost contact with the others" in both  # the survivor says why
    assert not (out / "model.safetensors").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "vitkit", "train", *args], env=environment,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(rf"resuming from .*step-\d+\.pt \(step \d+ of {STEPS}\)", resumed.stdout)
    _assert_same_training(out, reference)


def test_a_hung_process_times_out_with_a_clear_error(
    cifar_subset: Path, environment: dict[str, str], tmp_path: Path
) -> None:
    """A process that stops answering (SIGSTOP) makes the other's next collective time out after
    dist_timeout_seconds, with an error that says so; torchrun then ends the job."""
    timeout = 8
    out = tmp_path / "hang" / "run"
    launcher = guide_launcher("--standalone", nproc_per_node="2")
    job = _launch(
        [*launcher, *_train_args(cifar_subset, out, f"dist_timeout_seconds={timeout}")],
        environment,
    )
    _wait_for_checkpoint(out, [job], CHECKPOINT_EVERY)
    hung = _worker_pid(job, rank=1)
    assert hung is not None
    os.kill(hung, signal.SIGSTOP)
    stopped = time.monotonic()
    # Rank 0 gives up after the timeout and exits; torchrun then asks rank 1 to terminate, which
    # a stopped process only does once it runs again (an operator's `kill -CONT` or `kill -9`).
    rank0 = _worker_pid(job, rank=0)
    assert rank0 is not None
    while _running(rank0) and job.poll() is None:
        assert time.monotonic() - stopped < timeout + 30, "rank 0 did not time out"
        time.sleep(0.05)
    waited = time.monotonic() - stopped
    os.kill(hung, signal.SIGCONT)
    output = _finish(job, timeout=60)
    print(f"\nrank 0 gave up {waited:.1f} s after rank 1 stopped")
    assert job.returncode != 0
    assert timeout - 1 <= waited < timeout + 15
    assert "process 0 of 2 lost contact with the others" in output, output[-3000:]
    assert f"dist_timeout_seconds={timeout} s" in output
    assert "Timed out" in output


def test_packed_training_is_refused_on_several_processes(
    cifar_subset: Path, environment: dict[str, str], tmp_path: Path
) -> None:
    """max_tokens under torchrun: the processes stop before their first step with the one-line
    reason (DDP and FSDP wrap the forward that packing bypasses), and the job fails."""
    launcher = guide_launcher("--standalone", nproc_per_node="2")
    out = tmp_path / "packed" / "run"
    fields = ["max_tokens=4", f"dist_timeout_seconds={TIMEOUT}"]
    job = _launch([*launcher, *_train_args(cifar_subset, out, *fields)], environment)
    output = _finish(job, timeout=300)
    assert job.returncode != 0
    refusal = "vitkit train: error: max_tokens: packed training runs in one process"
    # The first process to stop prints it; torchrun may end the other before it does.
    assert refusal in output, output[-3000:]
    assert "Traceback" not in output.split(refusal)[0]
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


def test_global_batch_splits_evenly_over_processes() -> None:
    config = dataclasses.replace(get_preset("tiny"), batch_size=64, micro_batch_size=8)
    assert [config.micro_batches(processes=n) for n in (1, 2, 4, 8, 16)] == [8, 4, 2, 1, 1]
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        config.micro_batches(processes=3)
    uneven = dataclasses.replace(config, batch_size=96, micro_batch_size=16)
    with pytest.raises(ValueError, match="takes 24 images per step"):
        uneven.micro_batches(processes=4)


def test_evaluation_slices_count_every_image_once() -> None:
    """Contiguous slices of 3 ranks (4, 3 and 4 of 11 images, no padding) add up to the whole."""
    rng = np.random.default_rng(0)
    dataset = ArrayDataset(
        images=rng.integers(0, 255, (11, 16, 16, 3), dtype=np.uint8),
        labels=rng.integers(0, 3, 11),
        classes=("a", "b", "c"),
    )
    torch.manual_seed(0)
    model = vitkit.create_model("ViT-Test/8", img_size=16, num_classes=3)
    torch.nn.init.normal_(model.head.weight)  # a zero head would predict class 0 everywhere
    options = dict(preprocessing=vitkit.Preprocessing.google(16), batch_size=2)
    whole = top1_counts(model, dataset, **options)
    slices = [top1_counts(model, dataset, rank=r, world_size=3, **options) for r in range(3)]
    assert [total for _, total in slices] == [4, 3, 4]
    assert tuple(map(sum, zip(*slices))) == whole and whole[1] == 11
    assert 0 < whole[0] < 11


def test_activation_checkpointing_recomputes_blocks_with_the_same_gradients() -> None:
    """Each block's forward runs again in the backward pass (fewer saved activations), and the
    gradients, parameter names and state dict keys are those of the plain model."""
    config = dataclasses.replace(get_preset("tiny"), activation_checkpointing=True, drop_path=0.2)
    torch.manual_seed(0)
    plain = vitkit.create_model("ViT-Test/8", img_size=16, num_classes=3, drop_path=0.2)
    checkpointed = vitkit.create_model("ViT-Test/8", img_size=16, num_classes=3, drop_path=0.2)
    checkpointed.load_state_dict(plain.state_dict())
    parallelize(checkpointed, config=config, world=World())  # in place
    calls: list[int] = []
    checkpointed.blocks[0].mlp.fc1.register_forward_pre_hook(lambda *_: calls.append(1))
    images = torch.randn(4, 3, 16, 16)
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same stochastic-depth draws, replayed by the recomputation
        model(images).logsumexp(dim=-1).sum().backward()
    assert len(calls) == 2
    names = [name for name, _ in checkpointed.named_parameters()]
    assert names == [name for name, _ in plain.named_parameters()]
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-6, msg=name)
