"""vitkit.devices: "auto" and the other device names resolved in one place."""

from __future__ import annotations

import pytest
import torch

from vitkit.devices import device_problem, resolve_device
from vitkit.errors import ConfigError


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "mps", "", "meta"])
def test_names_that_are_no_device_are_one_line_config_errors(name: str) -> None:
    assert device_problem(name) == f"device must be auto, cpu, cuda or cuda:N, got {name!r}"
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:7"])
def test_spelling_is_checked_without_the_hardware(name: str) -> None:
    assert device_problem(name) is None


def test_a_gpu_this_machine_lacks_is_a_config_error() -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=f"'cuda:{count}' asked for"):
        resolve_device(f"cuda:{count}")
    if count == 0:
        with pytest.raises(ConfigError, match="no CUDA GPU is available"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda").type == "cuda"
