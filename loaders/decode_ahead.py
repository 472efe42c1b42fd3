"""The decode-ahead stage: a thread that reads and decodes the next batches while the caller assembles.

    stage = DecodeStage(read_and_decode, depth=1, device=device, name="omnimae-video-decode")
    decoded = stage.get()   # the next one; meanwhile the thread is decoding the one after it
    stage.stop(timeout_s=1.0)

`produce` runs on the stage's thread, at most `depth` batches ahead of the caller: the decoder's
threads do not idle while the caller assembles (crops, masks) on the device. What `produce`
returns is handed over in order; an error it raises is raised by `get()`, then by every later call.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

import torch

T = TypeVar("T")


def use_device(device: torch.device) -> None:
    """Make `device` current on this (new) thread: a thread starts on GPU 0 whatever the main
    thread chose, and pinned buffers or a CUDA context made there would land on every rank's GPU 0."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


@dataclass
class _Failed:
    error: BaseException


class DecodeStage(Generic[T]):
    """`produce()` called on its own thread, at most `depth` results ahead of `get()`."""

    def __init__(self, produce: Callable[[], T], *, depth: int, device: torch.device, name: str):
        self._produce = produce
        self._device = device
        self._free = threading.Semaphore(depth)  # results that may be made before one is taken
        self._ready: queue.SimpleQueue = queue.SimpleQueue()  # results, or one _Failed at the end
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            use_device(self._device)
            while True:
                while not self._free.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                self._ready.put(self._produce())
        except BaseException as error:  # noqa: BLE001 - handed to the caller, raised there
            self._ready.put(_Failed(error))

    def get(self) -> T:
        """The next result; an error of the thread is raised here (and again on every call)."""
        while True:
            try:
                item = self._ready.get(timeout=0.1)
                break
            except queue.Empty:
                if self._stop.is_set():
                    raise RuntimeError("the loader is closed") from None
        if isinstance(item, _Failed):
            self._ready.put(item)
            raise item.error
        self._free.release()
        return item

    def stop(self, timeout_s: float) -> bool:
        """Ask the thread to stop after the result it is making; True once it has ended."""
        self._stop.set()
        self.thread.join(timeout=timeout_s)
        return not self.thread.is_alive()
