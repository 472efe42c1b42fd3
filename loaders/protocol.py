"""The one interface the trainer reads data through: VideoLoader, ImageLoader and JointLoader."""

from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

from loaders.batch import Batch


@runtime_checkable
class Loader(Protocol):
    """An endless stream of Batches that resumes exactly, reports its work and closes its threads.

    state_dict() is the position after the last batch handed out (never one merely prefetched or
    decoded ahead); load_state_dict() takes it back before the first batch. Each batch's
    `stats` holds only measurements of how it was made: read_wait, decode, assembly (seconds),
    items, skipped (counts).
    """

    def __iter__(self) -> Iterator[Batch]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def stats(self) -> dict: ...

    def close(self) -> None: ...
