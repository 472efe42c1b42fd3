"""Storage outages: reads held (not failed) while nothing answers, single bad objects still failed.

Fetcher tests use a fake store on a plain asyncio loop (milliseconds of backoff, fast); the
AsyncReader tests stop a real loopback object server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
import torch

from loaders.devtools.objserver import ObjectServer
from loaders.errors import DataError, StorageError
from loaders.storage import AsyncReader
from loaders.storage.fetch import Fetcher
from loaders.storage.reader_stats import ReaderStats


class FakeStore:
    """Answers `uri.encode()`; refuses every connection until `down_until`, some uris always."""

    def __init__(self, down_s: float = 0.0, bad: set = (), missing: set = ()):
        self.down_until = time.monotonic() + down_s
        self.bad, self.missing = set(bad), set(missing)
        self.requests = 0

    async def read(self, uri: str) -> bytes:
        self.requests += 1
        await asyncio.sleep(0.001)
        if uri in self.missing:
            raise FileNotFoundError(uri)
        if time.monotonic() < self.down_until or uri in self.bad:
            raise ConnectionRefusedError(f"connect to {uri} refused")
        return uri.encode()


def fetch_all(store: FakeStore, uris: list[str], *, outage_s: float = 5.0, max_in_flight: int = 8):
    stats = ReaderStats()

    async def run():
        fetcher = Fetcher(store, stats, max_in_flight=max_in_flight, timeout_s=1.0, retries=2,
                          hedge_after_s=None, backoff_base_s=0.001, backoff_max_s=0.02, outage_s=outage_s)
        outcomes = await asyncio.gather(*(fetcher.fetch(i, u) for i, u in enumerate(uris)))
        return outcomes, fetcher.outage

    outcomes, monitor = asyncio.run(run())
    return outcomes, stats, monitor


URIS = [f"http://store/o{i}" for i in range(40)]


def test_an_outage_holds_reads_and_skips_nothing(caplog):
    caplog.set_level(logging.WARNING, logger="loaders.storage.outage")
    store = FakeStore(down_s=0.3)
    outcomes, stats, _ = fetch_all(store, URIS)
    assert [o.data for o in outcomes] == [u.encode() for u in URIS]  # none failed
    assert stats.outages == 1 and stats.reads_held > 0 and stats.outage_s >= 0.25
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # one when it starts, one when it ends
    assert lines[0].startswith("storage outage:") and "refused" in lines[0]
    assert lines[1].startswith("storage reachable again after")


def test_one_failing_object_is_still_failed_after_its_retries():
    store = FakeStore(bad={URIS[3]})
    outcomes, stats, _ = fetch_all(store, URIS)
    assert [o.error is None for o in outcomes] == [i != 3 for i in range(40)]
    assert "transient" in outcomes[3].error and outcomes[3].attempts == 3
    assert stats.outages == 0 and stats.reads_held == 0


def test_a_missing_object_fails_at_once_even_in_an_outage():
    store = FakeStore(down_s=0.3, missing={URIS[5]})
    outcomes, stats, _ = fetch_all(store, URIS)
    assert outcomes[5].error is not None and "permanent" in outcomes[5].error
    assert outcomes[5].attempts == 1
    assert all(o.error is None for i, o in enumerate(outcomes) if i != 5)
    assert stats.outages == 1


@pytest.mark.timeout(30)
def test_an_outage_longer_than_outage_s_stops_with_one_line():
    store = FakeStore(down_s=60.0)
    started = time.monotonic()
    outcomes, stats, monitor = fetch_all(store, URIS, outage_s=0.3)
    assert time.monotonic() - started < 3.0
    assert all(o.error is not None for o in outcomes)
    message = str(monitor.fatal)
    assert isinstance(monitor.fatal, StorageError) and "\n" not in message
    assert message.startswith("storage: no read has succeeded for") and "outage_s=0.3" in message
    assert "refused" in message


# -- AsyncReader against a stopped object server --------------------------------------------


OBJECTS = {f"o{i}": bytes([i]) * 100 for i in range(60)}


@pytest.mark.timeout(30)
def test_reader_rides_out_a_stopped_server():
    server = ObjectServer(OBJECTS).start()
    port, url = server.port, server.url
    restarted = []

    def outage():
        server.stop()
        time.sleep(1.5)
        restarted.append(ObjectServer(OBJECTS, port=port).start())

    try:
        with AsyncReader(max_in_flight=4, backoff_max_s=0.2, outage_s=30) as reader:
            results = []
            for result in reader.read_many((i, f"{url}o{i}") for i in range(60)):
                results.append(result)
                if len(results) == 10:
                    threading.Thread(target=outage).start()
                    time.sleep(0.2)
            stats = reader.stats()
    finally:
        for srv in restarted:
            srv.stop()
    assert [r.data for r in results] == [OBJECTS[f"o{i}"] for i in range(60)]
    assert stats["failures"] == 0 and stats["outages"] == 1 and stats["outage_s"] > 1.0


@pytest.mark.timeout(30)
def test_reader_stops_after_outage_s_with_one_line():
    server = ObjectServer(OBJECTS).start()
    url = server.url
    server.stop()
    with AsyncReader(max_in_flight=4, backoff_max_s=0.1, outage_s=0.5) as reader:
        with pytest.raises(StorageError) as info:
            list(reader.read_many((i, f"{url}o{i}") for i in range(20)))
    message = str(info.value)
    assert "\n" not in message and "outage_s=0.5" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


# -- the JointLoader hands a loader's own error on as itself ---------------------------------


class _Failing:
    """The part of an ItemLoader a JointLoader uses, failing at the first batch."""

    def __init__(self, error: BaseException):
        self.error = error
        self.batch_size, self.manifest, self.world_size = 1, [0] * 4, 1
        self.device = torch.device("cpu")

    def next_batch(self):
        raise self.error

    def state_dict(self):
        return {}

    def close(self):
        pass


@pytest.mark.parametrize("error, kind, text", [
    (StorageError("storage: no read has succeeded for 300 s"), StorageError, "^storage: no read"),
    (DataError("every video item failed"), DataError, "^every video item failed$"),
    (ValueError("a bug"), RuntimeError, "^data loader failed: a bug$"),
])
def test_joint_loader_reraises_loader_errors_as_themselves(error, kind, text):
    from loaders.joint_loader import JointLoader

    loader = JointLoader({"video": _Failing(error)})
    with pytest.raises(kind, match=text) as info:
        next(iter(loader))
    loader.close()
    assert (info.value is error) == isinstance(error, (StorageError, DataError))


def test_joint_loader_closes_the_shared_reader():
    from loaders.joint_loader import JointLoader

    reader = AsyncReader(max_in_flight=2)
    loader = JointLoader({"video": _Failing(ValueError("x"))}, reader=reader)
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        reader.read_many([])
