"""Feeding readers files from strangers, in a process that cannot take the machine down.

A hostile file may try to make its reader allocate without bound (a huge size in a header, a
deflate bomb, a config that builds a billion layers). Such a test must not be able to swap out or
kill the machine that runs it, so the reader runs in a child process whose address space is
capped (`resource.RLIMIT_AS`): an allocation past the ceiling fails there with MemoryError (or the
child dies), and the test reports it instead of the machine suffering it. One child reads a whole
corpus of files, since starting Python with torch costs seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Address space of a reader process: Python with torch, vitkit and their libraries maps about
# 3.2 GiB before reading anything (measured with torch 2.14.1 on Linux), so this leaves a reader
# about 2.8 GiB, far more than any file in these tests justifies and far less than the machine has.
MEMORY_CEILING_BYTES = 6 << 30

_CHILD = r"""
import importlib, json, resource, sys, traceback
ceiling, target, paths = int(sys.argv[1]), sys.argv[2], json.loads(sys.stdin.read())
module_name, function_name = target.split(":")
function = getattr(importlib.import_module(module_name), function_name)
from vitkit.errors import VitkitError
resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
for path in paths:
    try:
        function(path)
        outcome = {"path": path, "outcome": "ok"}
    except VitkitError as error:
        message = str(error)
        outcome = {"path": path, "outcome": "refused", "type": type(error).__name__,
                   "message": message}
    except BaseException as error:  # noqa: BLE001 - what the test is looking for
        outcome = {"path": path, "outcome": "crashed", "type": type(error).__name__,
                   "message": str(error)[:300], "where": traceback.format_exc()[-1500:]}
    print(json.dumps(outcome), flush=True)
"""


def read_each_under_ceiling(
    reader: str,
    paths: list[Path],
    *,
    ceiling_bytes: int = MEMORY_CEILING_BYTES,
    timeout_s: float = 300,
) -> list[dict]:
    """Call `reader` ("module:function", taking one path) on each of `paths` in one child process
    whose address space is capped at `ceiling_bytes`; one record per path, in order:
    {"path", "outcome": "ok" | "refused" (a VitkitError: "type", "message") | "crashed" (any
    other exception, MemoryError included: "type", "message", "where")}.

    A child that dies or runs past `timeout_s` fails the calling test with the path it was on.
    """
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ceiling_bytes), reader],
        input=json.dumps([str(path) for path in paths]),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    records = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or len(records) != len(paths):
        on = paths[len(records)] if len(records) < len(paths) else "?"
        raise AssertionError(
            f"the reader process died (exit {completed.returncode}) on {on}: "
            f"{completed.stderr[-2000:]}"
        )
    return records


def crashes(records: list[dict]) -> list[dict]:
    """The records whose reader raised something other than a VitkitError."""
    return [record for record in records if record["outcome"] == "crashed"]
