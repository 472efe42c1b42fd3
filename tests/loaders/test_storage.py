"""AsyncReader against the local object server, local files and a sync fsspec backend."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import threading
import time

import aiohttp
import fsspec
import pytest

from loaders.devtools.objserver import ObjectServer
from loaders.redact import redact
from loaders.storage import AsyncReader, ReadResult, event_loop
from loaders.storage.retry import FailureBudget, StorageError, backoff_delay, describe_error, is_transient


def payload(i: int) -> bytes:
    return f"object {i} ".encode() * (1 + i % 7)


@pytest.fixture(scope="module")
def objects():
    return {f"obj_{i:04d}.bin": payload(i) for i in range(500)}


@pytest.fixture
def server(objects):
    with ObjectServer(objects) as srv:
        yield srv


def items(server: ObjectServer, n: int, start: int = 0):
    return [(i, f"{server.url}obj_{i:04d}.bin") for i in range(start, start + n)]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every test must leave the threads it found: readers closed, loop and pools joined."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = set(threading.enumerate()) - before
    assert not leaked, f"threads left behind: {leaked}"


# -- delivery -----------------------------------------------------------------------------------


def test_ordered_complete_no_duplicates_at_high_concurrency(objects):
    with ObjectServer(objects, latency_s=0.02, jitter_s=0.015, seed=1) as srv:
        with AsyncReader(max_in_flight=64) as reader:
            results = list(reader.read_many(items(srv, 500)))
            stats = reader.stats()
        assert len(srv.peers) <= 64  # the connection pool is the in-flight bound
    assert [r.key for r in results] == list(range(500))
    assert all(r.ok and r.data == payload(r.key) and r.attempts == 1 for r in results)
    assert stats["requests"] == stats["reads"] == 500
    assert stats["max_in_flight"] == 64 and stats["in_flight"] == 0
    assert stats["bytes"] == sum(len(payload(i)) for i in range(500))
    assert 0.004 < stats["latency_p50_s"] <= stats["latency_p95_s"] <= stats["latency_p99_s"]
    assert stats["bytes_per_s"] > 0 and stats["consumer_wait_s"] > 0


def test_unordered_delivers_each_once(objects):
    with ObjectServer(objects, latency_s=0.01, jitter_s=0.01, seed=2) as srv:
        with AsyncReader(max_in_flight=32) as reader:
            results = list(reader.read_many(items(srv, 300), ordered=False))
    keys = [r.key for r in results]
    assert sorted(keys) == list(range(300)) and keys != list(range(300))
    assert all(r.data == payload(r.key) for r in results)


def test_straggler_bounds_undelivered_reads(objects):
    """A slow head stalls submission after max_in_flight + reorder_window reads."""
    with ObjectServer(objects) as srv:
        srv.delay_next("obj_0000.bin", 1, 0.5)
        with AsyncReader(max_in_flight=4, reorder_window=8) as reader:
            stream = reader.read_many(items(srv, 100))
            first = next(stream)
            requested_while_stalled = srv.request_count()
            rest = list(stream)
    assert first.key == 0 and first.latency_s >= 0.45
    assert requested_while_stalled <= 4 + 8
    assert [r.key for r in rest] == list(range(1, 100))


def test_local_paths_and_file_urls(tmp_path):
    paths = []
    for i in range(20):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(payload(i))
        paths.append(path)
    with AsyncReader(max_in_flight=8) as reader:
        plain = list(reader.read_many((i, str(p)) for i, p in enumerate(paths)))
        urls = list(reader.read_many((i, p.as_uri()) for i, p in enumerate(paths)))
        pathlike = reader.read(paths[3])
        missing = next(reader.read_many([("x", str(tmp_path / "missing.bin"))]))
    assert [r.data for r in plain] == [r.data for r in urls] == [payload(i) for i in range(20)]
    assert pathlike == payload(3)
    assert not missing.ok and "FileNotFoundError" in missing.error and missing.attempts == 1


def test_sync_fsspec_protocol_falls_back_to_a_thread():
    fs = fsspec.filesystem("memory")
    for i in range(10):
        fs.pipe_file(f"/storage_test/{i}.bin", payload(i))
    try:
        with AsyncReader(max_in_flight=4) as reader:
            results = list(reader.read_many((i, f"memory://storage_test/{i}.bin")
                                            for i in range(10)))
    finally:
        fs.rm("/storage_test", recursive=True)
    assert [r.data for r in results] == [payload(i) for i in range(10)]


# -- errors, retries, hedging -------------------------------------------------------------------


def test_transient_errors_are_retried(server):
    server.fail_next("obj_0001.bin", 2, "503")
    server.fail_next("obj_0002.bin", 1, "reset")
    with AsyncReader(max_in_flight=8, retries=3, backoff_base_s=0.01) as reader:
        results = list(reader.read_many(items(server, 5)))
        stats = reader.stats()
    assert all(r.ok for r in results)
    assert results[1].attempts == 3 and server.request_count("obj_0001.bin") == 3
    assert results[2].attempts >= 1  # aiohttp may retry a reset keep-alive connection itself
    assert stats["retries"] >= 2 and stats["request_errors"] >= 2


def test_random_faults_lose_nothing(objects):
    with ObjectServer(objects, latency_s=0.01, jitter_s=0.005, error_rate=0.15,
                      reset_rate=0.05, seed=3) as srv:
        with AsyncReader(max_in_flight=32, retries=6, backoff_base_s=0.005,
                         max_failure_share=0.5) as reader:
            results = list(reader.read_many(items(srv, 300)))
            stats = reader.stats()
        injected = sum(srv.faults_injected.values())
    assert [r.key for r in results] == list(range(300))
    assert all(r.data == payload(r.key) for r in results if r.ok)
    assert sum(not r.ok for r in results) == stats["failures"] <= 1
    assert injected > 30 and stats["retries"] > 30


def test_exhausted_retries_are_reported_transient(server):
    server.fail_next("obj_0000.bin", 10, "503")
    with AsyncReader(retries=2, backoff_base_s=0.001) as reader:
        result = next(reader.read_many(items(server, 1)))
        assert reader.stats()["failures"] == 1
    assert not result.ok and result.data is None and result.attempts == 3
    assert "503" in result.error and "transient" in result.error
    assert server.request_count("obj_0000.bin") == 3


def test_permanent_errors_are_not_retried(server):
    with AsyncReader(retries=5) as reader:
        results = list(reader.read_many([(0, server.url + "missing.bin"), *items(server, 3, 1)]))
    assert [r.ok for r in results] == [False, True, True, True]
    assert results[0].attempts == 1 and "permanent" in results[0].error
    assert server.request_count("missing.bin") == 1


def test_timeout_is_transient(server):
    server.delay_next("obj_0000.bin", 1, 2.0)
    with AsyncReader(timeout_s=0.2, retries=1, backoff_base_s=0.001) as reader:
        result = next(reader.read_many(items(server, 1)))
    assert result.ok and result.attempts == 2 and result.latency_s < 1.5


def test_hedge_answers_a_straggler_and_cancels_the_loser(server):
    server.delay_next("obj_0003.bin", 1, 3.0)
    with AsyncReader(max_in_flight=8, hedge_after_s=0.1) as reader:
        started = time.perf_counter()
        results = list(reader.read_many(items(server, 8)))
        elapsed = time.perf_counter() - started
        stats = reader.stats()
    assert all(r.ok for r in results) and [r.key for r in results] == list(range(8))
    assert results[3].attempts == 2 and elapsed < 1.5
    assert stats["hedges"] == 1 and stats["hedge_wins"] == 1 and stats["cancelled"] == 1
    assert server.request_count("obj_0003.bin") == 2


def test_hedge_clock_starts_when_the_request_is_sent(objects):
    """Waiting for a free slot is not storage latency: it must not trigger hedges."""
    with ObjectServer(objects, latency_s=0.05) as srv:
        with AsyncReader(max_in_flight=2, hedge_after_s=0.2) as reader:
            results = list(reader.read_many(items(srv, 16)))  # 8 rounds: the last wait 0.35 s
            stats = reader.stats()
    assert all(r.ok for r in results)
    assert stats["hedges"] == 0 and stats["requests"] == 16


def test_failure_budget_stops_the_run_with_a_clear_message(server):
    signed = "?X-Amz-Signature=TOPSECRET&X-Amz-Credential=AKIDSECRET"
    batch = [(i, f"{server.url}gone_{i}.bin{signed}" if i % 3 == 0 else
              f"{server.url}obj_{i:04d}.bin") for i in range(200)]
    delivered = []
    with AsyncReader(max_in_flight=16, max_failure_share=0.1, failure_window=50) as reader:
        with pytest.raises(StorageError) as info:
            for result in reader.read_many(batch):
                delivered.append(result)
    message = str(info.value)
    assert "6 of the last" in message and "max_failure_share=0.1" in message
    assert "failure_window=50" in message and "gone_" in message
    assert "TOPSECRET" not in message and "AKIDSECRET" not in message
    assert sum(not r.ok for r in delivered) == 5  # the 6th failure raised instead


def test_failure_budget_window_slides():
    budget = FailureBudget(max_share=0.1, window=20)
    for i in range(100):  # one failure in ten never exceeds 2 of the last 20
        budget.record(ok=i % 10 != 0, uri=f"u{i}")
    budget.record(False, "a")
    with pytest.raises(StorageError, match="3 of the last 20"):
        budget.record(False, "b")


# -- lifecycle ----------------------------------------------------------------------------------


def eventually(condition, timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def loop_tasks(loop_thread: event_loop.LoopThread) -> set:
    async def others():
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    return loop_thread.run(others(), timeout=5)


def test_abandoned_generator_cancels_its_reads(objects):
    with ObjectServer(objects, latency_s=0.3) as srv:
        reader = AsyncReader(max_in_flight=16)
        stream = reader.read_many(items(srv, 100))
        next(stream)  # then 16 requests in flight, 16 more submitted
        loop_thread = reader._loop_thread
        assert eventually(lambda: reader.stats()["in_flight"] == 16)
        stream.close()  # what `break` out of a for loop does
        assert loop_tasks(loop_thread) == set()
        assert reader.stats()["in_flight"] == 0 and reader.stats()["cancelled"] > 0
        reader.close()
    assert loop_thread.loop.is_closed() and not loop_thread.thread.is_alive()


def test_close_with_reads_in_flight(objects):
    with ObjectServer(objects, latency_s=0.5) as srv:
        reader = AsyncReader(max_in_flight=32)
        stream = reader.read_many(items(srv, 100))
        consumer_error = []

        def consume():
            try:
                list(stream)
            except RuntimeError as exc:
                consumer_error.append(exc)

        consumer = threading.Thread(target=consume)
        consumer.start()
        assert eventually(lambda: reader.stats()["in_flight"] == 32)
        loop_thread = reader._loop_thread
        reader.close()
        consumer.join(5)
        assert not consumer.is_alive()
        assert consumer_error and "closed" in str(consumer_error[0])
    assert loop_thread.loop.is_closed()
    with pytest.raises(RuntimeError, match="closed"):
        reader.read_many([])


def test_readers_share_one_loop_thread_and_close_alone(objects):
    with ObjectServer(objects, latency_s=0.3) as srv, AsyncReader() as b:
        assert b.read(srv.url + "obj_0002.bin") == payload(2)
        a = AsyncReader(max_in_flight=8)
        stream = a.read_many(items(srv, 50))
        assert next(stream).data == payload(0)  # the next 8 reads go out now
        assert a._loop_thread is b._loop_thread
        names = [t.name for t in threading.enumerate()]
        assert names.count("loaders-aio-loop") == 1
        assert eventually(lambda: a.stats()["in_flight"] == 8)
        a.close()  # b keeps the loop: a's reads in flight must be gone from it
        assert loop_tasks(b._loop_thread) == set()
        assert a.stats()["in_flight"] == 0
        assert b.read(srv.url + "obj_0003.bin") == payload(3)


def _read_in_child(reader: AsyncReader, url: str, out) -> None:
    try:
        out.put(("ok", reader.read(url), threading.current_thread().name))
    finally:
        reader.close()


def test_works_after_fork(server):
    with AsyncReader() as reader:
        assert reader.read(server.url + "obj_0001.bin") == payload(1)  # parent loop running
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_read_in_child, args=(reader, server.url + "obj_0002.bin", out))
        child.start()
        status, data, _ = out.get(timeout=20)
        child.join(20)
        assert child.exitcode == 0 and status == "ok" and data == payload(2)
        assert reader.read(server.url + "obj_0003.bin") == payload(3)  # parent unaffected


def test_pickles_into_a_fresh_reader(server):
    with AsyncReader(max_in_flight=7, retries=1) as reader:
        assert reader.read(server.url + "obj_0001.bin") == payload(1)
        copy = pickle.loads(pickle.dumps(reader))
    with copy:
        assert copy.max_in_flight == 7 and copy.retries == 1 and copy.stats()["requests"] == 0
        assert copy.read(server.url + "obj_0002.bin") == payload(2)


def test_rejects_bad_items_and_arguments(server):
    with AsyncReader() as reader:
        with pytest.raises(TypeError, match="pairs"):
            list(reader.read_many(["just-a-uri"]))
        with pytest.raises(TypeError, match="str uri"):
            list(reader.read_many([(1, 2)]))
        with pytest.raises(OSError, match="missing"):
            reader.read(server.url + "missing")
    with pytest.raises(ValueError, match="max_in_flight"):
        AsyncReader(max_in_flight=0)
    with pytest.raises(ValueError, match="hedge_after_s"):
        AsyncReader(hedge_after_s=0)


# -- credentials --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, secrets", [
    ("https://alice:hunter2@host.example/v.mp4", ["alice", "hunter2"]),
    ("https://b.s3.amazonaws.com/v.mp4?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA123%2F2024"
     "&X-Amz-Signature=abcdef0123", ["AKIA123", "abcdef0123"]),
    ("https://storage.googleapis.com/b/o?X-Goog-Signature=deadbeef&X-Goog-Expires=60",
     ["deadbeef"]),
    ("https://acct.blob.core.windows.net/c/v.mp4?sv=2021&sig=SASsecret%3D", ["SASsecret"]),
    ("https://host/v.mp4?token=tok123", ["tok123"]),
    ("{'key': 'AKIA999', 'secret': 'shh-secret', 'token': 'sess'}", ["shh-secret", "sess"]),
    ("aws_secret_access_key=wJalr/XUtn password: pw0rd", ["wJalr", "pw0rd"]),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload", ["eyJhbGciOiJIUzI1NiJ9"]),
    ("{'Authorization': 'AWS4-HMAC-SHA256 Credential=AKIAXYZ/2024/us-east-1/s3/aws4_request, "
     "SignedHeaders=host, Signature=f00dcafe'}", ["AKIAXYZ", "f00dcafe"]),
    ("retry with Bearer abc.def-ghi", ["abc.def-ghi"]),
])
def test_redact_masks_credentials(text, secrets):
    out = redact(text)
    for secret in secrets:
        assert secret not in out, out
    assert "***" in out


def test_redact_keeps_what_is_not_secret():
    assert redact("s3://bucket/videos/a.mp4") == "s3://bucket/videos/a.mp4"
    assert redact("https://host/a.mp4?part=2&version=3") == "https://host/a.mp4?part=2&version=3"
    assert redact("/data/k400/train/abc.mp4") == "/data/k400/train/abc.mp4"
    for prose in ("AWS credentials were not found", "Basic authentication failed",
                  "No such file: '/data/token_list.txt'"):
        assert redact(prose) == prose


def test_failing_signed_url_leaks_no_secret(server):
    url = (server.url.replace("http://", "http://user:PASSWORD1@") +
           "missing.mp4?X-Amz-Credential=AKIDLEAK&X-Amz-Signature=SIGLEAK")
    with AsyncReader(retries=0) as reader:
        result = next(reader.read_many([(0, url)]))
        with pytest.raises(OSError) as info:
            reader.read(url)
    for text in (result.error, repr(result), str(info.value), result.uri_redacted):
        for secret in ("PASSWORD1", "AKIDLEAK", "SIGLEAK"):
            assert secret not in text, text
    assert "missing.mp4" in result.error


# -- classification -----------------------------------------------------------------------------


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def _s3fs_translated(code: str, status: int) -> Exception:
    from s3fs.errors import translate_boto_error
    return translate_boto_error(_client_error(code, status))


def _http_error(status: int) -> Exception:
    from multidict import CIMultiDictProxy, CIMultiDict
    from yarl import URL
    url = URL("https://host/v.mp4?X-Amz-Signature=SIG")
    info = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    return aiohttp.ClientResponseError(info, (), status=status, message="x")


@pytest.mark.parametrize("make, transient", [
    (lambda: asyncio.TimeoutError(), True),
    (lambda: ConnectionResetError(104, "reset"), True),
    (lambda: aiohttp.ServerDisconnectedError(), True),
    (lambda: _http_error(503), True),
    (lambda: _http_error(429), True),
    (lambda: _http_error(408), True),
    (lambda: _http_error(404), False),
    (lambda: _http_error(403), False),
    (lambda: _client_error("SlowDown", 503), True),
    (lambda: _client_error("InternalError", 500), True),
    (lambda: _client_error("AccessDenied", 403), False),
    (lambda: _s3fs_translated("SlowDown", 503), True),
    (lambda: _s3fs_translated("NoSuchKey", 404), False),
    (lambda: FileNotFoundError("x"), False),
    (lambda: PermissionError("x"), False),
    (lambda: OSError(5, "Input/output error"), True),
    (lambda: ValueError("bad uri"), False),
])
def test_error_classification(make, transient):
    assert is_transient(make()) is transient


def test_describe_error_and_backoff():
    assert describe_error(asyncio.TimeoutError(), 2.5) == "TimeoutError: no answer within 2.5 s"
    message = describe_error(_http_error(503))
    assert message.startswith("ClientResponseError: 503") and "SIG" not in message
    import random
    rng = random.Random(0)
    delays = [backoff_delay(r, 0.1, 1.0, rng) for r in range(8) for _ in range(50)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert max(backoff_delay(0, 0.1, 1.0, rng) for _ in range(100)) <= 0.1


def test_read_result_repr_hides_payload():
    r = ReadResult("k", "https://h/x?sig=S3CR3T", b"x" * 10_000, None, 0.01, 1)
    assert "10000 bytes" in repr(r) and "S3CR3T" not in repr(r) and r.ok


def test_a_reader_never_closed_leaves_no_unclosed_session_at_exit(tmp_path):
    """A run stopped by an exception may skip close(): aiohttp must not report its sessions."""
    import subprocess
    import sys

    script = tmp_path / "unclosed.py"
    script.write_text(
        "from loaders.devtools.objserver import ObjectServer\n"
        "from loaders.storage import AsyncReader\n"
        "srv = ObjectServer({'a': b'1'}).start()\n"
        "reader = AsyncReader(max_in_flight=2)\n"
        "assert reader.read(srv.url + 'a') == b'1'\n"
        "raise SystemExit('stopped without closing the reader')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.strip() == "stopped without closing the reader"
