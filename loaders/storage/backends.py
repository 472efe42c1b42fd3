"""Whole-object reads from any uri, as coroutines on the reader's event loop.

- local and NFS paths (no protocol, or file://): aiofiles, on the reader's thread pool;
- async fsspec filesystems (s3://, gs://, http(s)://, ...): created with `asynchronous=True` on
  the loop and awaited natively, one instance per filesystem class and options;
- any other fsspec protocol: the synchronous filesystem's `cat_file` on the thread pool.

Each instance is owned here (`skip_instance_cache=True`, never fsspec's global cache) so that
`close` can close its HTTP sessions. Options are never formatted into text: they hold secrets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json

import aiofiles
import fsspec
from fsspec.core import split_protocol

from loaders.errors import LoaderError

_LOCAL = frozenset({None, "file", "local"})
_S3 = frozenset({"s3", "s3a"})


# protocol -> the extra of this package that installs its filesystem
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def filesystem_class(protocol: str | None) -> type:
    """fsspec's filesystem class for `protocol`; LoaderError in one line when its package is missing
    (naming the extra that installs it) or the protocol is unknown."""
    try:
        return fsspec.get_filesystem_class(protocol or "file")
    except ImportError as e:
        extra = _EXTRAS.get(protocol)
        how = f"pip install 'omnimae[{extra}]'" if extra else str(e).splitlines()[0]
        raise LoaderError(f"{protocol}:// uris need a package that is not installed: {how}") from None
    except ValueError:
        raise LoaderError(f"{protocol}:// is not a protocol fsspec knows") from None


def protocol_options(storage_options: dict | None, protocol: str) -> dict:
    """The options for `protocol`: storage_options is one dict for every protocol or {protocol: dict}."""
    opts = storage_options or {}
    if opts and all(isinstance(v, dict) for v in opts.values()) and \
            set(opts) <= set(fsspec.available_protocols()):
        return dict(opts.get(protocol, {}))
    return dict(opts)


class Backends:
    """Reads objects for one AsyncReader; every method but `__init__` runs on the loop thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, executor: concurrent.futures.Executor,
                 storage_options: dict | None, pool_size: int):
        self.loop = loop
        self.executor = executor
        self.pool_size = pool_size
        self._options = storage_options or {}
        self._filesystems: dict[tuple, fsspec.AbstractFileSystem] = {}  # (class, options) -> fs
        self._by_protocol: dict[str, fsspec.AbstractFileSystem] = {}     # fast path per read

    def options_for(self, protocol: str) -> dict:
        return protocol_options(self._options, protocol)

    def filesystem(self, protocol: str) -> fsspec.AbstractFileSystem:
        """The filesystem for `protocol`, created on first use with the pool sized to the reader."""
        fs = self._by_protocol.get(protocol)
        if fs is not None:
            return fs
        cls = filesystem_class(protocol)
        options = self.options_for(protocol)
        # A token, not the options themselves: they may hold keys and must never be printed.
        token = (cls, json.dumps(options, sort_keys=True, default=repr))
        fs = self._filesystems.get(token)
        if fs is None:
            fs = self._create(cls, protocol, options)
            self._filesystems[token] = fs
        self._by_protocol[protocol] = fs
        return fs

    def _create(self, cls, protocol: str, options: dict) -> fsspec.AbstractFileSystem:
        options = copy.deepcopy(options)
        if not cls.async_impl:
            return cls(skip_instance_cache=True, **options)
        if protocol in _S3:
            config = options.setdefault("config_kwargs", {})
            # One connection per request in flight (botocore's default pool is 10).
            config.setdefault("max_pool_connections", self.pool_size)
            # The reader owns retries (timeouts, backoff, hedging); botocore's would hide failures.
            config.setdefault("retries", {"total_max_attempts": 1})
        if protocol in ("http", "https"):
            options.setdefault("get_client", _sized_client_factory(self.pool_size))
        fs = cls(asynchronous=True, loop=self.loop, skip_instance_cache=True, **options)
        if protocol in _S3 and "retries" not in options:
            fs.retries = 1  # s3fs's own retry loop (class default 5), for the same reason
        return fs

    async def read(self, uri: str) -> bytes:
        """The whole object at `uri`."""
        protocol, path = split_protocol(uri)
        if protocol in _LOCAL:
            async with aiofiles.open(path, "rb", executor=self.executor) as f:
                return await f.read()
        fs = self.filesystem(protocol)
        if not fs.async_impl:
            return await self.loop.run_in_executor(self.executor, fs.cat_file, uri)
        if protocol in _S3:
            # With a start offset s3fs sends one ranged GET; without one it asks for the size
            # first (a HEAD) to decide on a multi-part download: two round trips per object.
            return await fs._cat_file(uri, start=0)
        return await fs._cat_file(uri)

    async def close(self) -> None:
        """Close the HTTP sessions of every filesystem created here."""
        filesystems, self._filesystems, self._by_protocol = list(self._filesystems.values()), {}, {}
        for fs in filesystems:
            for attr in ("_s3", "_session"):  # s3fs's botocore client; http/gcsfs aiohttp session
                client = getattr(fs, attr, None)
                if client is not None and hasattr(client, "close"):
                    try:
                        await client.close()
                    except Exception:  # noqa: BLE001 - closing must not mask the caller's error
                        pass


def _sized_client_factory(limit: int):
    """HTTPFileSystem `get_client` with an aiohttp connection pool of `limit` connections."""
    import aiohttp

    async def get_client(**kwargs):
        if "connector" not in kwargs:
            kwargs["connector"] = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
        return aiohttp.ClientSession(**kwargs)

    return get_client
