"""`torch.compile` for training runs: inductor's cache kept under $VITKIT_HOME, and a time limit.

Inductor generates and builds code on a compiled model's first call. On a 2-core CPU that took
49 s for the demo's model at 16 px and did not finish within 8 minutes at 32 px, while the whole
demo has 13 minutes; on a GPU, ViT-B takes about a minute. Two things keep that bounded:
- The cache: inductor's compiled code is kept in $VITKIT_HOME/inductor (unless
  TORCHINDUCTOR_CACHE_DIR says otherwise), so a second run of the same model and shapes loads it
  instead of building it again, and it stays with vitkit's other downloads and caches.
- The limit: the first step of each compiled model runs under a wall-clock alarm of
  `compile_time_limit` seconds. When it rings, the compile is abandoned, the model is returned to
  eager mode and the step runs again eagerly (no optimizer step had happened, and the step's
  random draws are keyed by the step, so the retry is the step the eager run would take).
  The alarm is a Unix signal, so it works in the main thread of a single process only; with
  several processes the ranks could disagree, so there is no limit there.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

from vitkit.download import default_cache_dir

Result = TypeVar("Result")


class CompileTimeLimit(BaseException):
    """Raised by the alarm during the first compiled step. A BaseException, as KeyboardInterrupt
    is, so that dynamo's handling of compiler errors (which wraps Exceptions) lets it through."""


def keep_compile_cache() -> None:
    """Point inductor's cache at $VITKIT_HOME/inductor unless the user chose a folder; called
    before the first compile (inductor reads the variable when it first needs the folder)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_cache_dir() / "inductor"))


def is_compiled(model: nn.Module) -> bool:
    """Whether `Module.compile` was applied to `model` (and not undone)."""
    return getattr(model, "_compiled_call_impl", None) is not None


def run_eagerly(model: nn.Module) -> None:
    """Undo `Module.compile` on `model` and drop dynamo's compiled code and its half-finished
    state. (`Module.compile` stores the compiled call in `_compiled_call_impl`, and PyTorch has
    no public inverse.)"""
    torch._dynamo.reset()
    model._compiled_call_impl = None


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def ring(signum: int, frame: object) -> None:
        raise CompileTimeLimit

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class FirstCompileLimit:
    """Runs the first step of each compiled model under the time limit (see the module
    docstring); once a compile has run past it, every later model runs eagerly too."""

    seconds: float  # 0: no limit
    gave_up: bool = False
    _timed: set[int] = field(default_factory=set)

    def run(self, model: nn.Module, step: Callable[[], Result]) -> Result:
        """`step()`, which must be safe to run again from its start after an interruption."""
        if not is_compiled(model):
            return step()
        if self.gave_up:
            run_eagerly(model)
            return step()
        if id(model) in self._timed:
            return step()
        self._timed.add(id(model))
        limited = self.seconds and threading.current_thread() is threading.main_thread()
        start = time.perf_counter()
        try:
            with _alarm(self.seconds) if limited else nullcontext():
                result = step()
        except CompileTimeLimit:
            self.gave_up = True
            run_eagerly(model)
            print(
                f"torch.compile was still compiling after {self.seconds:g} s "
                "(compile_time_limit): training eagerly",
                file=sys.stderr,
            )
            return step()
        print(f"torch.compile: first step {time.perf_counter() - start:.1f} s", file=sys.stderr)
        return result
