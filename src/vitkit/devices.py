"""Device names: what "auto", "cpu", "cuda" and "cuda:N" mean, decided in one place; what the
machine can do natively (bf16) and its one-line description for reports.

Every command and the trainer take a device by name; "auto" is the GPU when PyTorch sees one,
else the CPU. Only torch and `vitkit.errors` are imported, so any layer may use this module.
"""

from __future__ import annotations

import os
import platform

import torch

from vitkit.errors import ConfigError

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"  # for help texts and messages


def device_problem(name: str) -> str | None:
    """Why `name` is no device vitkit runs on (auto, cpu, cuda or cuda:N), else None.

    Only the spelling is checked, not this machine's hardware: a config validated here may be
    run on another machine (see `resolve_device`, which checks both)."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # "gpu", "cuda:x", a non-string
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        return f"device must be {DEVICE_NAMES}, got {name!r}"
    return None


def resolve_device(name: str) -> torch.device:
    """The device `name` stands for on this machine: "auto" is cuda when a GPU is available, else
    cpu. Raises ConfigError, in one line, for a name that is no device (see `device_problem`) or a
    GPU this machine does not have."""
    if problem := device_problem(name):
        raise ConfigError(problem)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r} asked for, but this machine has {count} GPU(s)")
    return device


def native_bf16(device: torch.device) -> str | None:
    """What makes bf16 matrix arithmetic native on `device` ("CUDA GPU ...", "CPU with AMX-BF16",
    "CPU with AVX512-BF16"), or None where bf16 is emulated and autocast only adds casts (a CPU
    with AVX2 alone, or a GPU older than Ampere)."""
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
            return f"CUDA GPU {torch.cuda.get_device_name(device)}"
        return None
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return None  # ATen itself is limited below AVX-512 (ATEN_CPU_CAPABILITY, or an old CPU)
    flags = _cpu_flags()
    if "amx_bf16" in flags:
        return "CPU with AMX-BF16"
    if "avx512_bf16" in flags:
        return "CPU with AVX512-BF16"
    return None


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    return set((_cpu_field("flags") or "").split())


def describe_machine() -> str:
    """The machine in one line, for reports: the CPU model, its vector and bf16 features, cores,
    the GPU when there is one, and torch's version (figures depend on all of them)."""
    cpu = _cpu_field("model name") or platform.processor() or platform.machine()
    flags = _cpu_flags()
    features = [name for flag, name in _REPORTED_FLAGS if flag in flags]
    described = f"{cpu} ({', '.join(features) or 'no AVX2'}), {os.cpu_count()} CPUs"
    if torch.cuda.is_available():
        described += f", {torch.cuda.get_device_name()}"
    return f"{described}, torch {torch.__version__}"


# /proc/cpuinfo flags that decide vitkit's speed, and how reports name them.
_REPORTED_FLAGS = (
    ("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
    ("amx_bf16", "AMX-BF16"),
)  # fmt: skip


def _cpu_field(name: str) -> str | None:
    """A field of /proc/cpuinfo's first processor ("model name"), or None."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None
