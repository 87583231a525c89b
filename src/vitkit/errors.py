"""The error types of vitkit, in one place, under one base class.

Files, URLs and command lines come from strangers and from careless hands. Every problem vitkit
finds with them is raised as a `VitkitError` whose one-line message names the file, key or field,
so that the CLI prints that line and exits with status 2, and a caller catches bad input with one
`except VitkitError` without also catching vitkit's own bugs (which stay tracebacks). Each type also
derives from the built-in error it refines (ValueError, RuntimeError), so code written against
those keeps working.
"""

from __future__ import annotations


class VitkitError(Exception):
    """Bad input or an impossible request; the message says what and where, in one line."""


class ConfigError(VitkitError, ValueError):
    """A field of a `ViTConfig` or `TrainConfig` has a wrong type, range or choice."""


class CheckpointError(VitkitError, ValueError):
    """A checkpoint cannot be read or does not fit the architecture; the message says why."""


class DataError(VitkitError, ValueError):
    """Input data (an image, a folder, a label file, a shard) cannot be used; the message says
    which."""


class DownloadError(VitkitError, ValueError):
    """A file could not be fetched, or what was fetched fails its checksum or format check; the
    message names the URL and, where it helps, the local path."""


class TrainingError(VitkitError, RuntimeError):
    """The run cannot go on (a non-finite loss, a changed config, a folder another run holds);
    the message says why and what is kept."""
