"""vitkit.devices: "auto" and the other device names resolved in one place."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from vitkit import devices
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


def test_bf16_is_not_native_when_aten_is_limited_to_avx2():
    """ATEN_CPU_CAPABILITY=avx2 (as on a CPU without AVX-512) makes bf16 emulated whatever the CPU
    flags say, so precision=auto and Muon choose fp32 there."""
    probe = "import torch, vitkit.devices as d; print(d.native_bf16(torch.device('cpu')))"
    limited = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert limited.stdout.strip() == "None"


@pytest.mark.parametrize(
    ("capability", "flags", "expected"),
    [
        ("AVX512", {"avx512f", "avx512_bf16"}, "CPU with AVX512-BF16"),
        ("AVX512", {"avx512f", "amx_bf16", "avx512_bf16"}, "CPU with AMX-BF16"),
        ("AVX512", {"avx512f"}, None),
        ("AVX2", {"avx512f", "avx512_bf16"}, None),
    ],
)
def test_native_bf16_needs_the_flag_and_aten_at_avx512(monkeypatch, capability, flags, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(devices, "_cpu_flags", lambda: flags)
    assert devices.native_bf16(torch.device("cpu")) == expected
