"""Several training processes as one: the process group of a `torchrun` launch.

torchrun starts one process per GPU on each node (on a CPU, one per group of cores) and tells each
who it is in environment variables: RANK (0 .. WORLD_SIZE-1 across all nodes), WORLD_SIZE, and
LOCAL_RANK, its index on its own node, which picks its GPU. Without them, or with WORLD_SIZE=1,
there is one process and no process group at all, so a plain `vitkit train` runs exactly as it
does without torchrun.

Every collective waits at most `timeout_seconds` for the other processes, so a process that died
or hangs stops the run with an error instead of a silent, endless wait: gloo's collectives raise
(at once when a peer's connection closes, else at the timeout), and NCCL's watchdog aborts the
process at the timeout. torchrun then ends the job, and running the same command again resumes
from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import torch
import torch.distributed as dist

from vitkit.errors import TrainingError, VitkitError

T = TypeVar("T")

# Substrings of the errors gloo, NCCL and c10d raise when a peer is gone or too slow: they come
# as plain RuntimeErrors from inside DDP's backward or FSDP's all-gathers, not only DistError.
_LOST_PEER_SIGNS = ("gloo", "nccl", "c10d", "timed out", "connection", "peer")


class Launch(NamedTuple):
    """What torchrun says about this process (rank 0 of 1 when it did not start it)."""

    rank: int
    world_size: int
    local_rank: int


def launch() -> Launch:
    """This process's place in a torchrun launch, from its environment."""
    launched = Launch(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not 0 <= launched.rank < launched.world_size:
        raise ValueError(f"RANK {launched.rank} is outside [0, WORLD_SIZE={launched.world_size})")
    return launched


@dataclass(frozen=True)
class World:
    """The training processes as this one sees them, with the collectives the loop needs; each is
    a no-op in a single process."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")  # where NCCL wants the tensors it reduces

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, shows progress and writes to the run directory."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's `value`, on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over ranks (float64, so image counts stay exact)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def mean(self, value: float) -> float:
        return self.sum([value])[0] / self.size


@contextlib.contextmanager
def process_group(
    launched: Launch, *, device: torch.device, timeout_seconds: float
) -> Iterator[World]:
    """The `World` of this process, within a process group when there are several (NCCL on
    GPUs, gloo on CPUs); the group is torn down on the way out."""
    if launched.world_size == 1:
        yield World()
        return
    world = World(rank=launched.rank, size=launched.world_size, device=device)
    timeout = datetime.timedelta(seconds=timeout_seconds)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    try:
        yield world
        world.barrier()  # nobody leaves while rank 0 still writes the run's last files
    finally:
        dist.destroy_process_group()


def lost_peer(error: BaseException) -> bool:
    """Whether `error` says that another process died, hung or cannot be reached."""
    if isinstance(error, dist.DistError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and any(sign in message for sign in _LOST_PEER_SIGNS)


@contextlib.contextmanager
def entered_by_rank_zero(
    world: World, context: contextlib.AbstractContextManager
) -> Iterator[None]:
    """Rank 0 enters `context` (e.g. the run lock) for the whole block; when it is refused with
    a TrainingError, every process raises it, so that all stop together."""
    with contextlib.ExitStack() as stack:
        refusal = None
        if world.is_main:
            try:
                stack.enter_context(context)
            except TrainingError as error:
                refusal = str(error)
        if refusal := world.broadcast(refusal):
            raise TrainingError(refusal)
        yield


@contextlib.contextmanager
def lost_peers_explained(
    world: World, *, timeout_seconds: float, resume_hint: str
) -> Iterator[None]:
    """Turn the errors a collective raises when another process died or hangs (gloo's start
    with their source location and end with advice) into one TrainingError saying what happened
    and that the same command resumes."""
    try:
        yield
    except VitkitError:
        raise
    except Exception as error:
        if not (world.distributed and lost_peer(error)):
            raise
        message = re.sub(r"^\[[^]]*\]\s*", "", str(error).strip())
        reason = message.splitlines()[0].split(". ")[0][:300]
        raise TrainingError(
            f"process {world.rank} of {world.size} lost contact with the others ({reason}). "
            f"Another process died or hangs: each waits at most dist_timeout_seconds="
            f"{timeout_seconds:g} s for the others; its own log says why it stopped. {resume_hint}"
        ) from error


class StopRequest:
    """Ctrl-C in a single process: the first becomes a request that the loop honours at the next
    step boundary (it saves a checkpoint and returns); a second interrupts at once. Under
    torchrun, Ctrl-C reaches every process and torchrun ends the job: the signal is left alone
    there, and the same command resumes from the last checkpoint."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self, world: World) -> Iterator[None]:
        if world.distributed:
            yield
            return
        try:
            previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
