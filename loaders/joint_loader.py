"""JointLoader: one modality per step, in an epoch order shuffled identically on every rank.

A background thread assembles batches ahead so that at least `prefetch` are ready while the step
runs; each loader reads and decodes on a thread of its own meanwhile (loaders.item_loader). The
queue holds (batch, state) pairs, the state being the loaders' *after* that batch, and
`state_dict()` returns the state of the last batch handed out: resuming skips exactly what was
consumed, not what was merely prefetched or decoded ahead.

The loaders may share one AsyncReader (one pool of `max_in_flight` requests per process, whatever
the number of data sets); pass it as `reader=` and `close()` closes it after the loaders.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import numpy as np

from loaders.batch import Batch
from loaders.decode_ahead import use_device
from loaders.errors import LoaderError
from loaders.item_loader import ItemLoader

_DONE = object()


def epoch_order(steps: dict[str, int], seed: int, epoch: int, group: int = 1) -> list[str]:
    """The modality of every micro batch of one epoch: `steps[m]` optimizer steps of modality m,
    shuffled with (seed, epoch) so every rank draws the same order; each step is `group` micro
    batches of one modality (gradient accumulation never mixes modalities in one step)."""
    names = sorted(steps)
    order = np.repeat(np.array(names), [steps[n] for n in names])
    np.random.default_rng([seed, epoch, 7]).shuffle(order)
    return [str(m) for m in order for _ in range(group)]


class JointLoader:
    """Yields Batches from several loaders ({"image": ImageLoader, "video": VideoLoader}); a Loader
    (loaders.protocol), plus `queue_depths()` for the profiler.

    repeats: data set ratios (paper Fig. 5c): an epoch holds `len(manifest) * repeat` samples of
    each data set, i.e. that many / global batch steps of it.
    group: micro batches per optimizer step (gradient accumulation), kept in one modality.
    reader: the AsyncReader the loaders share, owned (closed) by this JointLoader; None = each
        loader closes its own.
    """

    def __init__(self, loaders: dict[str, ItemLoader], *, repeats: dict[str, float] | None = None, seed: int = 0,
                 prefetch: int = 2, world_size: int | None = None, group: int = 1, reader=None):
        if not loaders:
            raise ValueError("JointLoader needs at least one loader")
        self.loaders = loaders
        self.reader = reader
        self.seed = seed
        self.prefetch = max(1, prefetch)
        self.group = group
        repeats = repeats or {}
        self.steps_per_epoch = {}
        for name, loader in loaders.items():
            world = world_size or loader.world_size
            global_batch = loader.batch_size * world * group
            samples = len(loader.manifest) * repeats.get(name, 1.0)
            self.steps_per_epoch[name] = max(1, int(samples // global_batch))
        self.epoch = 0
        self.position = 0  # micro batches of the current epoch handed out
        self._order = epoch_order(self.steps_per_epoch, seed, 0, group)
        self._queue: queue.Queue | None = None  # (batch, state after it) pairs; _DONE once the producer ends
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._consumed_state: dict | None = None
        self._error: BaseException | None = None

    def __len__(self) -> int:
        """Micro batches per epoch."""
        return len(self._order)

    # ---- production (background thread) ------------------------------------------------------

    def _snapshot(self, epoch: int, position: int) -> dict:
        return {"epoch": epoch, "position": position,
                "loaders": {name: loader.state_dict() for name, loader in self.loaders.items()}}

    def _produce(self) -> None:
        epoch, position, order = self.epoch, self.position, self._order
        try:
            use_device(next(iter(self.loaders.values())).device)  # assembly runs on this thread
            while not self._stop.is_set():
                if position >= len(order):
                    epoch, position = epoch + 1, 0
                    order = epoch_order(self.steps_per_epoch, self.seed, epoch, self.group)
                batch = self.loaders[order[position]].next_batch()
                position += 1
                item = (batch, self._snapshot(epoch, position))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # handed to the consumer, raised there
            self._error = e
            self._queue.put(_DONE)

    def _start(self) -> None:
        # The position before the first batch, taken before the producer moves the loaders on:
        # state_dict() before anything is consumed must not count prefetched batches.
        if self._consumed_state is None:
            self._consumed_state = self._snapshot(self.epoch, self.position)
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._produce, name="omnimae-joint-loader", daemon=True)
        self._thread.start()

    # ---- consumption -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        if self._stop.is_set():
            raise RuntimeError("JointLoader is closed")
        if self._thread is None:
            self._start()
        while True:
            item = self._queue.get()
            if item is _DONE:
                self._queue.put(_DONE)  # the producer is gone: every later call raises too
                if isinstance(self._error, LoaderError):
                    raise self._error  # storage or data: one line for the command-line tool
                raise RuntimeError(f"data loader failed: {self._error}") from self._error
            batch, self._consumed_state = item
            self.epoch, self.position = self._consumed_state["epoch"], self._consumed_state["position"]
            yield batch

    def state_dict(self) -> dict:
        if self._consumed_state is not None:
            return self._consumed_state
        return self._snapshot(self.epoch, self.position)

    def load_state_dict(self, state: dict) -> None:
        if self._thread is not None:
            raise RuntimeError("load_state_dict must be called before iterating")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = epoch_order(self.steps_per_epoch, self.seed, self.epoch, self.group)
        for name, loader_state in state["loaders"].items():
            self.loaders[name].load_state_dict(loader_state)
        self._consumed_state = state

    def queue_depths(self) -> dict[str, float]:
        """Batches ready ahead of the step, and storage requests in flight now (for the profiler)."""
        depths = {"queue/batches_ready": float(self._queue.qsize()) if self._queue is not None else 0.0}
        if self.reader is not None:  # shared: one count for every loader
            depths["queue/reads_in_flight"] = float(self.reader.stats().get("in_flight", 0))
            return depths
        for name, loader in self.loaders.items():
            depths[f"queue/{name}_reads_in_flight"] = float(loader.reader.stats().get("in_flight", 0))
        return depths

    def stats(self) -> dict:
        """Per loader; with a shared reader each loader's "reader" entry is the shared reader's."""
        return {name: loader.stats() for name, loader in self.loaders.items()}

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop the producer (it finishes the batch it is building), then close the loaders.

        A producer stuck longer than `timeout_s` (storage that never answers) is unblocked by
        closing the loaders' readers under it, which makes its pending read raise; one stuck on
        the shared reader (an outage being ridden out) is unblocked after a second the same way."""
        self._stop.set()
        started = time.monotonic()
        if self._thread is not None:
            while self._thread.is_alive() and time.monotonic() < started + timeout_s:
                try:  # unblock a producer waiting on a full queue
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.1)
                if self.reader is not None and time.monotonic() > started + 1.0:
                    self.reader.close()
        if self.reader is not None:  # first: a decode thread blocked on it then stops at once
            self.reader.close()
        for loader in self.loaders.values():
            loader.close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
