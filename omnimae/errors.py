"""What a run can stop on that the user must fix: one line on stderr, exit 2, no traceback.

`RunError` is the trainer's side (a bad config, an unusable checkpoint, a run folder that cannot be
written); `loaders.errors.LoaderError` is the data path's (storage down, a data set all bad). The
command-line tools catch both; any other exception is a bug and keeps its (redacted) traceback.
"""

from __future__ import annotations


class RunError(Exception):
    """The run cannot go on as asked; the message says what and how to go on, in one line."""


class CheckpointError(RunError):
    """A checkpoint cannot be written (full disk) or read (not ours, torn, another world size)."""
