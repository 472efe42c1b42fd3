"""The data path's own errors: what a run can stop on that is not a bug.

A command-line tool catches `LoaderError` and prints its message as one line (exit 2); anything
else is a bug and keeps its traceback. Messages are redacted where they name a uri.
"""

from __future__ import annotations


class LoaderError(RuntimeError):
    """The data cannot be read as configured; the message says what and where, in one line."""


class StorageError(LoaderError):
    """Storage failed beyond what the reader rides out: too many failed reads, or an outage longer
    than `outage_s`."""


class DataError(LoaderError):
    """The data set itself is unusable: every item in a row failed to read or decode, nothing
    indexable in a folder, a manifest that lists nothing."""
