"""The one error type for unusable checkpoints, so callers can catch bad files in one place."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the architecture; the message says why."""
