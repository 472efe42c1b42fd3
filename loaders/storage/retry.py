"""Which storage errors are worth retrying, how long to wait, and when to give up on the run.

Transient: timeouts, dropped or reset connections, HTTP 408/429/5xx, S3 throttling (SlowDown) and
5xx, and otherwise unclassified OSErrors (an NFS EIO usually clears). Permanent: a missing object,
a refused permission, any other 4xx, and non-IO exceptions (a malformed uri). The library errors are
recognised through the exception chain, since s3fs re-raises botocore errors as OSError subclasses
with the original as `__cause__`.
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections import deque

from loaders.errors import StorageError
from loaders.redact import redact

__all__ = ["StorageError", "FailureBudget", "is_transient", "describe_error", "backoff_delay"]

_TRANSIENT_STATUS = frozenset({408, 429})
_THROTTLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequestsException",
})
# errnos s3fs uses for 5xx / SlowDown, plus what flaky network filesystems return.
_TRANSIENT_ERRNOS = frozenset({
    errno.EBUSY, errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
    errno.ECONNREFUSED, errno.EPIPE, errno.ENETUNREACH, errno.EHOSTUNREACH,
    getattr(errno, "EREMOTEIO", errno.EIO), getattr(errno, "ESTALE", errno.EIO),
})
_PERMANENT_OS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)

# Class names from aiohttp and botocore, matched by name so neither library is needed at import.
_TRANSIENT_NAMES = frozenset({
    "ClientConnectionError", "ClientOSError", "ServerDisconnectedError", "ServerTimeoutError",
    "ClientPayloadError", "ClientConnectorError", "ServerConnectionError", "ConnectionTimeoutError",
    "SocketTimeoutError",
    "HTTPClientError", "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
    "ConnectTimeoutError", "IncompleteReadError", "ResponseStreamingError", "ProxyConnectionError",
    "FSTimeoutError",
})


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)  # aiohttp.ClientResponseError
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)  # botocore.exceptions.ClientError
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    return None


def _is_transient_one(exc: BaseException) -> bool | None:
    """True / False where this exception alone decides, None where it says nothing."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, ConnectionError)):
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error", {}).get("Code") in _THROTTLE_CODES:
        return True
    status = _http_status(exc)
    if status is not None:
        return status >= 500 or status in _TRANSIENT_STATUS
    if isinstance(exc, _PERMANENT_OS):
        return False
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same read may succeed."""
    chain = list(_chain(exc))
    for link in chain:
        verdict = _is_transient_one(link)
        if verdict is not None:
            return verdict
    first = chain[0]
    if isinstance(first, OSError):
        return first.errno is None or first.errno in _TRANSIENT_ERRNOS
    return False


def describe_error(exc: BaseException, timeout_s: float | None = None) -> str:
    """One redacted line: `TypeName: message`, with the HTTP status where one is known."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) and not str(exc):
        message = f"no answer within {timeout_s:g} s" if timeout_s else "timed out"
    else:
        try:
            message = str(exc) or repr(exc)
        except Exception:  # noqa: BLE001 - some library errors fail to format when half-built
            message = "(message unavailable)"
    status = next((s for s in map(_http_status, _chain(exc)) if s is not None), None)
    prefix = f"HTTP {status} " if status is not None and str(status) not in message else ""
    return redact(f"{prefix}{type(exc).__name__}: {message}".replace("\n", " "))


def backoff_delay(retry: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max_s, base_s * 2**retry)]."""
    # The exponent is capped: a read held through a long outage counts hundreds of retries.
    return rng.uniform(0.0, min(max_s, base_s * (2.0 ** min(retry, 64))))


class FailureBudget:
    """Stops the run when more than `max_share` of the last `window` reads failed.

    The share is counted against the full window, also before `window` reads have been made, so
    a run whose first 21 reads fail stops at the 21st (default 10% of 200) rather than at the 1st.
    """

    def __init__(self, max_share: float = 0.1, window: int = 200, examples: int = 3):
        if not 0.0 <= max_share <= 1.0:
            raise ValueError(f"max_failure_share must be in [0, 1], got {max_share}")
        if window < 1:
            raise ValueError(f"failure_window must be >= 1, got {window}")
        self.max_share = max_share
        self.window = window
        self._recent: deque[bool] = deque(maxlen=window)  # True = failed
        self._failed_in_window = 0
        self._examples: deque[tuple[str, str]] = deque(maxlen=examples)

    def record(self, ok: bool, uri: str = "", error: str | None = None) -> None:
        """Count one delivered result; raise StorageError once the budget is exceeded."""
        if len(self._recent) == self.window and self._recent[0]:
            self._failed_in_window -= 1
        self._recent.append(not ok)
        if ok:
            return
        self._failed_in_window += 1
        self._examples.append((redact(uri), error or "unknown error"))
        if self._failed_in_window > self.max_share * self.window:
            examples = "; ".join(f"{u}: {e}" for u, e in self._examples)
            raise StorageError(
                f"storage: {self._failed_in_window} of the last {len(self._recent)} reads failed, "
                f"more than max_failure_share={self.max_share:g} of failure_window={self.window}; "
                f"stopping the run. Recent failures: {examples}")
