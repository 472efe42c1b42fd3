"""s3:// through s3fs against moto's real server on 127.0.0.1."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from loaders.storage import AsyncReader

BUCKET = "omnimae-test"
SECRET = "SECRETKEY0123456789"  # moto accepts any credentials; this one must never be printed


class _CountingApp:
    """WSGI middleware recording (method, path) of every request moto receives."""

    def __init__(self, app):
        self.app = app
        self.requests: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self._lock:
            self.requests[(environ["REQUEST_METHOD"], environ["PATH_INFO"])] += 1
        return self.app(environ, start_response)

    def count(self, method: str, key: str) -> int:
        with self._lock:
            return self.requests[(method, f"/{BUCKET}/{key}")]


@pytest.fixture(scope="module")
def moto_s3():
    try:
        import boto3
        from moto.server import ThreadedMotoServer
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
    except Exception as exc:  # noqa: BLE001 - any failure to start is a reason to skip
        pytest.skip(f"moto's S3 server could not start on 127.0.0.1: {type(exc).__name__}: {exc}")
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    counter = _CountingApp(server._server.app)
    server._server.app = counter  # werkzeug's server calls self.app per request
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key=SECRET)
    client.create_bucket(Bucket=BUCKET)
    objects = {f"clips/{i:03d}.mp4": f"clip {i} ".encode() * (50 + i) for i in range(60)}
    for key, data in objects.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
    yield endpoint, objects, counter
    server.stop()


def options(endpoint: str) -> dict:
    return {"key": "testing", "secret": SECRET,
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


def test_reads_objects_in_order_with_one_get_each(moto_s3):
    endpoint, objects, counter = moto_s3
    keys = sorted(objects)
    threads_before = set(threading.enumerate())
    with AsyncReader(max_in_flight=16, storage_options=options(endpoint)) as reader:
        results = list(reader.read_many((k, f"s3://{BUCKET}/{k}") for k in keys))
        fs = reader._backends.filesystem("s3")
        pool = fs._s3.meta.config.max_pool_connections
        stats = reader.stats()
    # Loop and pool joined by close(). The moto server runs in this process: a handler thread of its
    # own (werkzeug's process_request_thread) may still be finishing the last response; not ours.
    ours = {t for t in set(threading.enumerate()) - threads_before if "process_request_thread" not in t.name}
    assert not ours, f"threads left behind: {ours}"
    assert [r.key for r in results] == keys
    assert all(r.ok and r.data == objects[r.key] for r in results)
    # One ranged GET per object and no HEAD to learn its size first.
    assert all(counter.count("GET", k) == 1 for k in keys)
    assert sum(counter.count("HEAD", k) for k in keys) == 0
    assert stats["requests"] == len(keys)
    assert pool == 16  # the botocore connection pool is sized to the requests in flight


def test_per_protocol_options_and_missing_key(moto_s3):
    endpoint, objects, counter = moto_s3
    with AsyncReader(max_in_flight=4, retries=3, storage_options={"s3": options(endpoint)}) \
            as reader:
        results = list(reader.read_many([("a", f"s3://{BUCKET}/clips/000.mp4"),
                                         ("b", f"s3://{BUCKET}/clips/nope.mp4")]))
    assert results[0].data == objects["clips/000.mp4"]
    assert not results[1].ok and "FileNotFoundError" in results[1].error
    assert "permanent" in results[1].error and results[1].attempts == 1
    assert counter.count("GET", "clips/nope.mp4") == 1  # not retried, by us or by botocore
    assert SECRET not in results[1].error


def test_missing_bucket_fails_permanently_without_leaking_credentials(moto_s3):
    endpoint, _, _ = moto_s3
    bad = {**options(endpoint), "secret": "WRONGSECRET999", "key": "AKIDWRONG"}
    with AsyncReader(storage_options=bad, retries=2) as reader:
        result = next(reader.read_many([(0, "s3://no-such-bucket-xyz/a.mp4")]))
    assert not result.ok and result.attempts == 1
    assert "WRONGSECRET999" not in result.error and SECRET not in result.error
