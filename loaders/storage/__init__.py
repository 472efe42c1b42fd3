"""The storage stack: whole-object reads from local paths, NFS and object stores, latency hidden.

    from loaders.storage import AsyncReader

    with AsyncReader(max_in_flight=64) as reader:
        for result in reader.read_many((i, uri) for i, uri in enumerate(uris)):
            ...  # result.ok, result.data, result.error

reader.py      AsyncReader, ReadResult: the synchronous consumer's side (sessions, ordering, close)
fetch.py       one object read to the end: request slots, timeouts, retries, hedging
backends.py    local files (aiofiles) and fsspec filesystems; `filesystem_class`, `protocol_options`
outage.py      every request failing: reads held and retried, not failed, for up to `outage_s`
retry.py       which errors are transient, backoff, the failure budget of a run
reader_stats.py  the counters and latency sample of `AsyncReader.stats()`
event_loop.py  the one asyncio loop thread per process that every reader shares
"""

from loaders.storage.reader import AsyncReader, ReadResult

__all__ = ["AsyncReader", "ReadResult"]
