"""VideoLoader and ImageLoader on tiny generated data: replication, bad files, exact resume, sharding."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections import Counter
from dataclasses import replace

import pytest
import torch

import loaders.item_loader as item_loader
import loaders.item_stream as item_stream
from loaders.decode import dali_import_error
from loaders.devtools.objserver import ObjectServer
from loaders.devtools.synthetic import make_video_dataset
from loaders.errors import DataError
from loaders.manifest import Manifest, index_folder
from loaders.storage import AsyncReader

from tests.loaders._loader_data import (DecodeSpy, add_bad_files, image_loader, make_images, make_videos, same_batch,
                                        video_loader, wait_for_threads)

BACKENDS = ["pyav", pytest.param("dali", marks=pytest.mark.skipif(dali_import_error() is not None,
                                                                   reason="DALI does not import"))]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Manifest:
    return make_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Manifest:
    return make_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def with_bad_files(videos, tmp_path_factory) -> tuple[Manifest, dict[str, str]]:
    return add_bad_files(videos[:8], tmp_path_factory.mktemp("bad"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("replication", [1, 2, 4])
def test_each_video_is_decoded_once_per_replication_group(videos, replication):
    batch_size, batches = 8, 3
    # decode_ahead=0: exactly the batches asked for are decoded (test_decode_ahead_* covers the rest)
    loader = video_loader(videos, batch_size=batch_size, replication=replication, decode_ahead=0)
    spy = DecodeSpy(loader, videos)
    try:
        for _ in range(batches):
            batch = loader.next_batch()
            assert len(batch) == batch_size and batch.pixels.shape == (batch_size, 3, 4, 32, 32)
            assert batch.stats["items"] == batch_size // replication and batch.stats["skipped"] == 0
    finally:
        loader.close()
    assert sum(spy.calls) == batches * batch_size // replication  # B / t items per batch, no more
    stats = loader.stats()
    assert stats["items"] == stats["decoded"] == batches * batch_size // replication
    assert stats["batches"] == batches and stats["failures"] == 0


@pytest.mark.timeout(60)
def test_interpolation_reaches_the_crop(videos):
    # Same seed, same clips and boxes: only the resampling kernel differs (fine-tuning uses bicubic).
    batches = {}
    for mode in ("bilinear", "bicubic"):
        loader = video_loader(videos, batch_size=4, crop_scale=(0.08, 0.2), interpolation=mode, decode_ahead=0)
        try:
            batches[mode] = loader.next_batch()
        finally:
            loader.close()
    assert torch.equal(batches["bilinear"].source, batches["bicubic"].source)
    assert torch.equal(batches["bilinear"].labels, batches["bicubic"].labels)
    assert not torch.allclose(batches["bilinear"].pixels, batches["bicubic"].pixels)
    with pytest.raises(ValueError, match="interpolation must be 'bilinear' or 'bicubic', got 'nearest'"):
        video_loader(videos, batch_size=4, interpolation="nearest")


@pytest.mark.timeout(60)
def test_replicas_share_the_clip_but_not_the_crop_or_mask(videos):
    loader = video_loader(videos, batch_size=8, replication=4, crop_scale=(0.08, 1.0))
    try:
        batch = loader.next_batch()
    finally:
        loader.close()
    assert sorted(Counter(batch.source.tolist()).values()) == [4, 4]  # 2 decoded clips, 4 replicas each
    assert batch.mask.shape == (8, 8) and (batch.mask.sum(1) == 4).all()  # 8 tokens, half hidden
    for clip in batch.source.unique():
        rows = (batch.source == clip).nonzero().flatten().tolist()
        assert len(set(batch.labels[rows].tolist())) == 1  # one video's label
        for i, a in enumerate(rows):
            for b in rows[i + 1:]:
                assert not torch.equal(batch.pixels[a], batch.pixels[b])  # own crop
    # 4 replicas x 2 clips: masks drawn independently (70 possible masks per row; all 8 equal is ~0).
    assert len({tuple(m.tolist()) for m in batch.mask}) > 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_files_are_replaced_counted_and_logged(with_bad_files, backend, caplog):
    manifest, bad = with_bad_files  # 8 good + corrupt, truncated, empty, missing
    loader = video_loader(manifest, decode_backend=backend, batch_size=4, replication=2, decode_ahead=0)
    caplog.set_level(logging.WARNING, logger="loaders.item_stream")
    try:
        # 6 batches x 2 items = 12 good items: the whole first epoch (all 12 entries) is read.
        for _ in range(6):
            batch = loader.next_batch()
            assert len(batch) == 4 and torch.isfinite(batch.pixels).all()
    finally:
        loader.close()
    logged = [r.getMessage() for r in caplog.records if "skipped video item" in r.getMessage()]
    assert loader.stream.failures == len(logged) >= len(bad)
    assert {uri for uri, _ in loader.stream.failure_log} == set(bad)  # only the bad files, each of them
    reasons = {bad[uri]: reason for uri, reason in loader.stream.failure_log}
    assert "empty" in reasons["empty"]
    assert "No such file" in reasons["missing"] or "FileNotFound" in reasons["missing"]
    assert "frames" in reasons["truncated"] or "decode" in reasons["truncated"]
    for kind, uri in ((bad[u], u) for u in bad):
        assert any(uri in message for message in logged), f"{kind} file not logged with its uri"
    stats = loader.stats()
    # Files that were read but failed to decode count as items; unreadable ones never reach it.
    unread = sum(bad[u].startswith(("missing", "empty")) for u, _ in loader.stream.failure_log)
    assert stats["items"] - stats["decoded"] + unread == loader.stream.failures
    assert stats["decoded"] == 12


@pytest.mark.timeout(60)
def test_http_404_is_replaced(videos, tmp_path):
    objects = {f"{k}.webm": open(entry.uri, "rb").read() for k, entry in enumerate(videos[:4])}
    with ObjectServer(objects) as server:
        entries = [entry.__class__(f"{server.url}{k}.webm", entry.label, entry.num_frames, entry.fps, entry.duration)
                   for k, entry in enumerate(videos[:4])]
        entries.insert(1, entries[0].__class__(f"{server.url}gone.webm", 0, 30, 12.0, 2.5))
        loader = video_loader(Manifest(entries), batch_size=4, replication=2)
        try:
            batches = [loader.next_batch() for _ in range(3)]  # 6 items: the 404 is among them
        finally:
            loader.close()
    assert all(len(b) == 4 for b in batches)
    assert loader.stream.failures in (1, 2)  # 6 items of a 5-entry epoch: read once or twice
    for uri, reason in loader.stream.failure_log:
        assert uri.endswith("gone.webm") and ("404" in reason or "FileNotFound" in reason)


@pytest.mark.timeout(60)
def test_a_data_set_of_only_bad_files_raises_instead_of_spinning(with_bad_files, monkeypatch):
    manifest, bad = with_bad_files
    corrupt = [e for e in manifest if bad.get(e.uri) in ("corrupt", "truncated")]
    # Each item fails once, is remembered, then skipped: with all of them bad, nothing is left.
    loader = video_loader(Manifest(corrupt), batch_size=2, replication=1)
    try:
        with pytest.raises(DataError, match="every video item of this rank's epoch failed .*2 of 2 items"):
            loader.next_batch()
    finally:
        loader.close()
    assert loader.stream.failures == 2
    # Many distinct bad items in a row stop the run before a whole epoch is tried.
    monkeypatch.setattr(item_stream, "MAX_CONSECUTIVE_FAILURES", 6)
    loader = video_loader(Manifest(corrupt * 5), batch_size=2, replication=1)
    try:
        with pytest.raises(DataError, match="6 video items in a row could not be read or decoded"):
            loader.next_batch()
    finally:
        loader.close()
    assert loader.stream.failures == 6


class ReadSpy:
    """Wraps a loader's reader: the uris it is asked to read, in order."""

    def __init__(self, loader):
        self.uris: list[str] = []
        read_many = loader.reader.read_many

        def spy(items, *args, **kwargs):
            def counted():
                for key, uri in items:
                    self.uris.append(uri)
                    yield key, uri
            return read_many(counted(), *args, **kwargs)

        loader.reader.read_many = spy


def skip_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "skipped video item" in r.getMessage()]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_in_flight", [2, 8])  # 8: reads sent 16 ahead, past the 12-entry epoch
def test_damaged_items_are_read_decoded_counted_and_logged_once(with_bad_files, max_in_flight, caplog):
    manifest, bad = with_bad_files  # 12 entries, 4 bad: 8 good items = 4 batches an epoch
    caplog.set_level(logging.WARNING, logger="loaders.item_stream")
    loader = video_loader(manifest, batch_size=4, replication=2, decode_ahead=0, max_in_flight=max_in_flight)
    reads, decodes = ReadSpy(loader), DecodeSpy(loader, manifest)
    try:
        for _ in range(16):  # 4 epochs
            loader.next_batch()
    finally:
        loader.close()
    assert loader.stream.failures == 4 and {manifest[i].uri for i in loader.stream.bad} == set(bad)
    lines = skip_lines(caplog)
    assert len(lines) == 4 and all(sum(uri in line for line in lines) == 1 for uri in bad)
    assert all(decodes.uris.count(uri) <= 1 for uri in bad)  # corrupt, truncated: decoded once
    # Epoch 0 reads all 12; reads sent before an item was found bad (up to 16 ahead) may reach
    # the next epochs' first items; none after that.
    assert len(reads.uris) >= 4 * 8 and all(i < 12 + 2 * max_in_flight for i, uri in enumerate(reads.uris)
                                            if uri in bad)


@pytest.mark.timeout(60)
def test_remembered_bad_items_survive_a_resume(with_bad_files, caplog):
    manifest, bad = with_bad_files
    make = lambda: video_loader(manifest, batch_size=4, replication=2)  # noqa: E731 - decode ahead on
    whole = make()
    try:
        expected = [whole.next_batch() for _ in range(10)][5:]
    finally:
        whole.close()
    first = make()
    try:
        for _ in range(5):  # epoch 0 (all 4 bad items found) and one batch of epoch 1
            first.next_batch()
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)
    finally:
        first.close()
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert {manifest[i].uri for i in state["bad"]} == set(bad) and state["failures"] == 4
    caplog.set_level(logging.WARNING, logger="loaders.item_stream")
    caplog.clear()  # the two runs above logged the 4 items once each
    resumed = make()
    reads = ReadSpy(resumed)
    try:
        resumed.load_state_dict(state)
        got = [resumed.next_batch() for _ in range(5)]
    finally:
        resumed.close()
    assert all(same_batch(a, b) for a, b in zip(expected, got))
    assert reads.uris and not set(reads.uris) & set(bad)  # never fetched again
    assert resumed.stream.failures == 4 and skip_lines(caplog) == []


@pytest.mark.timeout(60)
def test_a_transient_read_failure_is_not_remembered(videos):
    objects = {f"{k}.webm": open(entry.uri, "rb").read() for k, entry in enumerate(videos[:4])}
    with ObjectServer(objects) as server:
        entries = [replace(entry, uri=f"{server.url}{k}.webm") for k, entry in enumerate(videos[:4])]
        entries.append(replace(entries[0], uri=f"{server.url}gone.webm"))
        server.fail_next("0.webm", count=1, kind="503")  # one 503 and no retry: a transient failure
        with AsyncReader(max_in_flight=2, retries=0) as reader:
            loader = video_loader(Manifest(entries), batch_size=2, replication=1, reader=reader, decode_ahead=0)
            decodes = DecodeSpy(loader, Manifest([]))
            try:
                for _ in range(8):  # 2 epochs of the 4 good items
                    loader.next_batch()
            finally:
                loader.close()
            reasons = dict(loader.stream.failure_log)
    assert "(transient," in reasons[entries[0].uri] and "(permanent," in reasons[entries[4].uri]
    assert {loader.manifest[i].uri for i in loader.stream.bad} == {entries[4].uri}  # the 404 only
    assert loader.stream.failures == 2
    assert hashlib.sha1(objects["0.webm"]).hexdigest() in decodes.digests  # read again, and decoded


def _resume_case(make, k: int = 2, m: int = 3):
    """Batches k..k+m of an uninterrupted loader, and of one restored after k batches through
    torch.save / torch.load(weights_only=True)."""
    whole = make()
    try:
        expected = [whole.next_batch() for _ in range(k + m)][k:]
    finally:
        whole.close()
    first = make()
    try:
        for _ in range(k):
            first.next_batch()
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)
    finally:
        first.close()
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = make()
    try:
        resumed.load_state_dict(state)
        got = [resumed.next_batch() for _ in range(m)]
    finally:
        resumed.close()
    return expected, got


@pytest.mark.timeout(60)
def test_video_loader_resumes_exactly_across_failures_and_epochs(with_bad_files):
    manifest, _ = with_bad_files  # 12 entries, 4 bad: 5 batches of 2 items cross into epoch 1
    expected, got = _resume_case(lambda: video_loader(manifest, batch_size=4, replication=2), k=3, m=3)
    assert all(same_batch(a, b) for a, b in zip(expected, got))


@pytest.mark.timeout(60)
def test_image_loader_resumes_exactly(images):
    expected, got = _resume_case(lambda: image_loader(images, batch_size=6, replication=2))
    assert expected[0].pixels.shape == (6, 3, 32, 32)
    assert all(same_batch(a, b) for a, b in zip(expected, got))


@pytest.mark.timeout(60)
def test_restored_loader_differs_from_a_fresh_one(videos):
    """The resume test above would pass trivially if every batch were the same."""
    loader = video_loader(videos)
    try:
        a, b = loader.next_batch(), loader.next_batch()
    finally:
        loader.close()
    assert not torch.equal(a.pixels, b.pixels)


@pytest.mark.timeout(60)
def test_ranks_read_disjoint_halves_of_an_epoch(videos):
    seen = []
    for rank in (0, 1):
        loader = video_loader(videos, rank=rank, world_size=2, batch_size=4, replication=2, decode_ahead=0)
        spy = DecodeSpy(loader, videos)
        try:
            for _ in range(3):  # 3 batches x 2 items = this rank's 6 of the 12 videos
                loader.next_batch()
        finally:
            loader.close()
        seen.append(spy.uris)
    assert len(set(seen[0])) == len(seen[0]) == 6 and len(set(seen[1])) == 6
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == {e.uri for e in videos}


@pytest.mark.timeout(60)
def test_close_stops_every_thread(videos, images):
    before = set(threading.enumerate())
    for make in (lambda: video_loader(videos, decode_threads=2), lambda: image_loader(images, decode_threads=2)):
        loader = make()
        loader.next_batch()
        loader.close()
    assert wait_for_threads(before) == []


@pytest.mark.timeout(60)
def test_decode_ahead_gives_the_same_batches_and_resumes_across_modes(with_bad_files):
    """Stage 1 on its own thread changes nothing in the batches (their randomness comes from the
    batch number), and a state saved in one mode resumes in the other."""
    manifest, _ = with_bad_files  # failures and an epoch boundary within 6 batches

    def make(ahead):
        return lambda: video_loader(manifest, batch_size=4, replication=2, decode_ahead=ahead)

    sequential, pipelined = make(0)(), make(1)()
    try:
        a = [sequential.next_batch() for _ in range(6)]
        b = [pipelined.next_batch() for _ in range(6)]
    finally:
        sequential.close()
        pipelined.close()
    assert all(same_batch(x, y) for x, y in zip(a, b))
    for saved, restored in ((1, 0), (0, 1)):
        first = make(saved)()
        try:
            for _ in range(3):
                first.next_batch()
            state = first.state_dict()
        finally:
            first.close()
        resumed = make(restored)()
        try:
            resumed.load_state_dict(state)
            got = [resumed.next_batch() for _ in range(3)]
        finally:
            resumed.close()
        assert all(same_batch(x, y) for x, y in zip(a[3:], got)), (saved, restored)


@pytest.mark.timeout(60)
def test_decode_ahead_state_counts_batches_handed_out(videos):
    loader = video_loader(videos, batch_size=4, replication=2, decode_ahead=1)
    spy = DecodeSpy(loader, videos)
    try:
        assert loader.state_dict()["batches"] == 0
        loader.next_batch()
        for _ in range(100):  # stage 1 decodes the next batch meanwhile, and then waits
            if len(spy.calls) == 2:
                break
            threading.Event().wait(0.05)
        threading.Event().wait(0.2)
        assert len(spy.calls) == 2  # one batch ahead, no more
        state = loader.state_dict()
        assert loader.stats()["batches"] == 2 and state["batches"] == 1
        assert state["items"] == state["decoded"] == 2
    finally:
        loader.close()


@pytest.mark.timeout(60)
def test_decode_ahead_decodes_the_next_batch_during_assembly(videos, monkeypatch):
    """With a slow assembly, batch k+1's decode starts before batch k's assembly ends."""
    real_assemble = item_loader.assemble_batch
    assembling, overlapped = threading.Event(), []

    def slow_assemble(*args, **kwargs):
        assembling.set()
        try:
            threading.Event().wait(0.3)
            return real_assemble(*args, **kwargs)
        finally:
            assembling.clear()

    monkeypatch.setattr(item_loader, "assemble_batch", slow_assemble)
    loader = video_loader(videos, batch_size=4, replication=2)
    decode = loader.decoder.decode

    def watched_decode(*args, **kwargs):
        overlapped.append(assembling.is_set())
        return decode(*args, **kwargs)

    loader.decoder.decode = watched_decode
    try:
        for _ in range(3):
            loader.next_batch()
    finally:
        loader.close()
    assert overlapped[0] is False and any(overlapped[1:])


@pytest.fixture(scope="module")
def mixed_codecs(videos, tmp_path_factory) -> Manifest:
    """4 VP9 WebM and 4 H.264 MP4 entries, alternating."""
    root = tmp_path_factory.mktemp("h264")
    make_video_dataset(root, 4, 0, height=64, min_s=2, max_s=3, codec="h264", progress=False)
    h264 = index_folder(root, split="train", workers=1).manifest
    return Manifest([e for pair in zip(videos[:4], h264) for e in pair])


@pytest.mark.timeout(60)
@pytest.mark.skipif(dali_import_error() is not None, reason="DALI does not import")
@pytest.mark.parametrize("case", ["webm first", "mp4 first", "no codec in the manifest"])
def test_dali_without_nvdec_sends_h264_items_to_pyav(mixed_codecs, case, caplog):
    entries = list(mixed_codecs)
    if case == "mp4 first":
        entries = entries[1:] + entries[:1]
    if case == "no codec in the manifest":  # an old manifest: the codec is read from the bytes
        entries = [replace(e, codec=None) for e in entries]
    assert {e.codec for e in entries} == ({None} if "no codec" in case else {"vp9", "h264"})
    caplog.set_level(logging.INFO, logger="loaders.decode")
    loader = video_loader(Manifest(entries), decode_backend="dali", batch_size=8, replication=2, decode_ahead=0)
    spy = DecodeSpy(loader, Manifest(entries))
    try:
        for _ in range(4):  # 2 epochs
            batch = loader.next_batch()
            assert len(batch) == 8 and batch.stats["skipped"] == 0
    finally:
        loader.close()
    assert loader.stream.failures == 0 and loader.stream.decoded == 16
    assert sorted(spy.uris) == sorted(2 * [e.uri for e in entries])  # every item, both epochs
    routed = [r.getMessage() for r in caplog.records if "decoded with PyAV" in r.getMessage()]
    assert len(routed) == 1 and "cannot decode h264" in routed[0]
