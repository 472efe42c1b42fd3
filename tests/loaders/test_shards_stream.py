"""Reading sharded data sets: the epoch plan (ranks, mixing), exact resume mid-shard, storage requests
counted at the server, memory held, bad shards (missing, truncated, damaged members), outages."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from loaders.devtools.objserver import ObjectServer
from loaders.errors import DataError
from loaders.manifest import Manifest
from loaders.shards.index import ShardedManifest, read_shard_index
from loaders.shards.indexer import index_shards
from loaders.shards.plan import epoch_plan
from loaders.shards.stream import ShardSettings, ShardStream
from loaders.storage import AsyncReader

from tests.loaders._loader_data import image_loader, make_images, make_videos, same_batch, video_loader
from tests.loaders._shard_data import omnimae_shards, write_webdataset_shards

N_IMAGES = 40  # 8 classes x 5


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("images")
    return root, make_images(root, per_class=5)


@pytest.fixture(scope="module")
def image_shards(images, tmp_path_factory) -> Path:
    """7 shards of 6 images (the last 4), written by omnimae-data shard."""
    dest = tmp_path_factory.mktemp("image_shards")
    omnimae_shards(images[0], dest, per_shard=6)
    return dest


@pytest.fixture
def shards_copy(image_shards, tmp_path) -> Path:
    """A copy to damage."""
    return Path(shutil.copytree(image_shards, tmp_path / "shards"))


def stream_of(index: ShardedManifest, **options) -> ShardStream:
    settings = ShardSettings(**{k: options.pop(k) for k in ("reads", "reader_options") if k in options})
    return ShardStream(index, settings.make_reader(), modality="image", **options)


def take(stream: ShardStream, n: int) -> list[int]:
    try:
        items, _ = stream.next_reads(n)
        return [index for index, _ in items]
    finally:
        stream.close()
        stream.reader.close()


# -- the plan -------------------------------------------------------------------------------------

@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_rank_gets_as_many_items_none_twice_none_lost(world_size):
    counts = np.array([5, 7, 3, 9, 6, 0, 6])  # 36 items, an empty shard among them
    plans = [epoch_plan(counts, seed=1, epoch=0, rank=r, world_size=world_size, buffer=2) for r in range(world_size)]
    assert {len(p) for p in plans} == {36 // world_size}
    assert sorted(np.concatenate([p.items for p in plans]).tolist()) == list(range(36))
    for plan in plans:  # each rank's segments are runs of whole shards, cut only at its edges
        assert all(len(s.items) == counts[s.shard] for s in plan.segments[1:-1])


def test_an_epoch_that_does_not_divide_is_padded_like_the_sampler():
    counts = np.array([4, 4, 3])  # 11 items over 2 ranks: 6 each, one item twice
    plans = [epoch_plan(counts, seed=0, epoch=3, rank=r, world_size=2, buffer=2) for r in range(2)]
    seen = Counter(np.concatenate([p.items for p in plans]).tolist())
    assert len(plans[0]) == len(plans[1]) == 6 and set(seen) == set(range(11))
    assert sorted(seen.values()) == [1] * 10 + [2]


def test_the_order_is_a_function_of_seed_and_epoch():
    counts = np.array([6] * 5)
    a = epoch_plan(counts, seed=0, epoch=0, rank=0, world_size=1, buffer=3)
    assert (a.items == epoch_plan(counts, seed=0, epoch=0, rank=0, world_size=1, buffer=3).items).all()
    next_epoch = epoch_plan(counts, seed=0, epoch=1, rank=0, world_size=1, buffer=3)
    assert not (a.items == next_epoch.items).all()
    assert [s.shard for s in a.segments] != [s.shard for s in next_epoch.segments]  # the shard order too
    assert not (a.items == epoch_plan(counts, seed=1, epoch=0, rank=0, world_size=1, buffer=3).items).all()
    plain = epoch_plan(counts, seed=0, epoch=0, rank=0, world_size=1, buffer=1, shuffle=False)
    assert plain.items.tolist() == list(range(30))


@pytest.mark.parametrize("buffer", [1, 2, 4])
def test_at_most_buffer_shards_are_open_and_their_items_are_mixed(buffer):
    counts = np.array([8] * 10)
    plan = epoch_plan(counts, seed=0, epoch=0, rank=0, world_size=1, buffer=buffer)
    opened = [len(plan.open_at(p)) for p in range(1, len(plan))]
    assert max(opened) == buffer
    if buffer == 1:  # shard after shard
        assert (np.diff(plan.segment_of) >= 0).all()
    else:  # the first items already come from several shards
        assert len({int(i) // 8 for i in plan.items[:8]}) > 1


# -- reading through the loaders ----------------------------------------------------------------

def test_two_ranks_read_each_item_once_in_an_epoch(image_shards):
    index = read_shard_index(image_shards / "shards_train.jsonl")
    halves = [take(stream_of(index, rank=r, world_size=2, seed=5), N_IMAGES // 2) for r in range(2)]
    assert sorted(halves[0] + halves[1]) == list(range(N_IMAGES))


@pytest.mark.parametrize("kind", ["image", "video"])
def test_a_restored_loader_continues_exactly_mid_shard(kind, image_shards, tmp_path_factory):
    """The batches after a restore are those of an uninterrupted run, across an epoch's end too."""
    if kind == "image":
        index, make, per_epoch = read_shard_index(image_shards / "shards_train.jsonl"), image_loader, N_IMAGES // 4
    else:
        root = tmp_path_factory.mktemp("videos")
        make_videos(root, count=10)
        index, make, per_epoch = omnimae_shards(root, tmp_path_factory.mktemp("vshards"), per_shard=3), video_loader, 5
    options = dict(batch_size=4, shards=ShardSettings(buffer=2, reads=2), seed=3)
    full = make(index, **options)
    expected = [full.next_batch() for _ in range(per_epoch + 3)]
    full.close()
    for stop in (2, per_epoch + 1):
        part = make(index, **options)
        for _ in range(stop):
            part.next_batch()
        state = part.state_dict()
        part.close()
        assert any(0 < taken < index.shard_counts[shard] for shard, taken in state["shards"]["open"])  # mid-shard
        resumed = make(index, **options)
        resumed.load_state_dict(state)
        got = [resumed.next_batch() for _ in range(len(expected) - stop)]
        resumed.close()
        assert all(same_batch(a, b) for a, b in zip(expected[stop:], got))


def test_a_restored_stream_reads_only_the_shards_it_still_needs(image_shards):
    index = read_shard_index(image_shards / "shards_train.jsonl")
    first = stream_of(index, reads=1, seed=4)
    first.next_reads(25)
    state = first.state_dict()
    first.close()
    first.reader.close()
    plan = epoch_plan(index.shard_counts, seed=4, epoch=0, rank=0, world_size=1, buffer=4)
    needed = int((plan.last >= 25).sum())  # the open shards and those after them
    assert len(state["shards"]["open"]) >= 1 and needed < len(plan.segments)
    resumed = stream_of(index, reads=1, seed=4)
    resumed.load_state_dict(state)
    take(resumed, N_IMAGES - 25)  # the rest of the epoch
    assert resumed.reader.stats()["requests"] <= needed + 1  # + the next epoch's first, read ahead


def test_a_state_of_another_order_is_refused_in_one_line(image_shards):
    index = read_shard_index(image_shards / "shards_train.jsonl")
    loader = image_loader(index, shards=ShardSettings(buffer=2))
    loader.next_batch()
    state = loader.state_dict()
    loader.close()
    other = image_loader(index, shards=ShardSettings(buffer=3))
    with pytest.raises(DataError, match="buffer=2 but this stream has buffer=3"):
        other.load_state_dict(state)
    other.close()
    images = image_loader(Manifest(list(index), index.class_names))  # the same items, one object each
    with pytest.raises(DataError, match="saved reading shards; this data set is read one object per item"):
        images.load_state_dict(state)
    images.close()


def test_a_sharded_data_set_refuses_a_shared_reader(image_shards):
    with AsyncReader() as reader, pytest.raises(ValueError, match="reader of its own"):
        image_loader(read_shard_index(image_shards / "shards_train.jsonl"), reader=reader)


def test_storage_requests_counted_at_the_server(images, tmp_path):
    """Two epochs of 40 images: 2 GETs per epoch from 2 shards of 20, against one per image."""
    root, manifest = images
    omnimae_shards(root, tmp_path / "shards", per_shard=20)
    with ObjectServer(tmp_path / "shards", latency_s=0.005) as server:
        index = read_shard_index(f"{server.url}shards_train.jsonl")
        loader = image_loader(index, batch_size=4, decode_ahead=0, shards=ShardSettings(reads=2))
        for _ in range(2 * N_IMAGES // 4):
            loader.next_batch()
        stats = loader.stats()
        loader.close()
        shard_gets = server.request_count(method="GET") - 1  # the index itself
    assert stats["shards"]["shards_read"] == 4 and stats["items"] == 2 * N_IMAGES
    assert 4 <= shard_gets == stats["reader"]["requests"] <= 4 + 2  # + the next epoch's, read ahead
    with ObjectServer(root) as server:
        moved = Manifest([replace(e, uri=f"{server.url}{Path(e.uri).relative_to(root)}") for e in manifest],
                         manifest.class_names)
        loader = image_loader(moved, batch_size=4, decode_ahead=0, max_in_flight=2)
        for _ in range(2 * N_IMAGES // 4):
            loader.next_batch()
        loader.close()
        object_gets = server.request_count(method="GET")
    assert 2 * N_IMAGES <= object_gets <= 2 * N_IMAGES + 4  # one per image (+ those read ahead)
    assert object_gets / shard_gets >= 2 * N_IMAGES / 6


def test_memory_held_is_bounded_and_reported(image_shards):
    index = read_shard_index(image_shards / "shards_train.jsonl")
    loader = image_loader(index, batch_size=4, shards=ShardSettings(buffer=3, reads=2))
    for _ in range(2 * N_IMAGES // 4):
        loader.next_batch()
    shards = loader.stats()["shards"]
    loader.close()
    largest = max(r.size for r in index.shards)
    assert 0 < shards["peak_held_bytes"] <= 3 * largest  # the open shards: a read ahead waits in the reader
    assert shards["bound_bytes"] == (3 + 2) * largest and shards["buffer"] == 3
    assert loader.stream.held_bytes == 0  # let go at close


# -- bad shards -------------------------------------------------------------------------------

def stream_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "loaders.item_stream"]


def shard_of(index: ShardedManifest, item: int) -> int:
    return int(index.item_shard[item])


def test_a_missing_shard_is_skipped_counted_named_and_not_read_again(shards_copy, caplog):
    caplog.set_level(logging.WARNING, logger="loaders.item_stream")
    index = read_shard_index(shards_copy / "shards_train.jsonl")
    (shards_copy / "train-000002.tar").unlink()
    stream = stream_of(index)
    got = take(stream, 2 * (N_IMAGES - 6))  # two epochs of what is left
    assert Counter(got) == {i: 2 for i in range(N_IMAGES) if shard_of(index, i) != 2}
    assert stream.failures == 1 and stream.bad_shards == {2}
    assert stream.reader.stats()["failures"] == 1  # read once, not again in the second epoch
    lines = stream_lines(caplog)
    assert len(lines) == 1 and "train-000002.tar: shard not read:" in lines[0] and "permanent" in lines[0]


def test_a_truncated_shard_keeps_the_members_before_the_cut(shards_copy, caplog):
    caplog.set_level(logging.WARNING, logger="loaders.item_stream")
    index = read_shard_index(shards_copy / "shards_train.jsonl")
    first = int(index.shard_start[1])  # shard 1 holds items 6..11; cut inside its 4th image
    path = shards_copy / "train-000001.tar"
    path.write_bytes(path.read_bytes()[:int(index.item_offset[first + 3]) + 10])
    stream = stream_of(index)
    got = take(stream, 2 * (N_IMAGES - 3))
    assert Counter(got) == {i: 2 for i in range(N_IMAGES) if not first + 3 <= i < first + 6}
    assert stream.members_lost == 3 and stream.failures == 1
    lines = stream_lines(caplog)
    assert len(lines) == 1 and f"train-000001.tar#{index.member_name(first + 3)}: truncated: " in lines[0]
    assert "3 of 6 members unreadable" in lines[0]


def test_a_damaged_tar_header_loses_that_member_only(shards_copy):
    index = read_shard_index(shards_copy / "shards_train.jsonl")
    path, at = shards_copy / "train-000000.tar", int(index.item_offset[4]) - 512 + 30
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    stream = stream_of(index)
    got = take(stream, N_IMAGES - 1)
    assert sorted(got) == [i for i in range(N_IMAGES) if i != 4]
    assert stream.failure_log[0][0].endswith(f"train-000000.tar#{index.member_name(4)}")
    assert "damaged tar header" in stream.failure_log[0][1]


def test_damaged_media_is_an_item_failure_named_by_shard_and_member(shards_copy, caplog):
    caplog.set_level(logging.WARNING, logger="loaders.item_stream")
    index = read_shard_index(shards_copy / "shards_train.jsonl")
    path, offset, size = shards_copy / "train-000003.tar", int(index.item_offset[20]), int(index.item_size[20])
    data = bytearray(path.read_bytes())
    data[offset:offset + size] = bytes(size)  # zeros: not a JPEG any more
    path.write_bytes(bytes(data))
    loader = image_loader(index, batch_size=4, decode_ahead=0)  # counters of the batches asked for only
    for _ in range(2 * N_IMAGES // 4):  # two epochs: the damaged member is decoded once, then stepped over
        loader.next_batch()
    stats = loader.stats()
    loader.close()
    assert stats["failures"] == 1 and stats["decoded"] == 2 * N_IMAGES
    lines = stream_lines(caplog)
    assert len(lines) == 1 and f"skipped image item {path}#{index.member_name(20)}: " in lines[0]


def test_a_data_set_whose_shards_are_all_missing_raises(shards_copy):
    index = read_shard_index(shards_copy / "shards_train.jsonl")
    for tar in shards_copy.glob("*.tar"):
        tar.unlink()
    with pytest.raises(DataError, match="every image item of this rank's epoch failed.*7 of 7 shards unreadable"):
        take(stream_of(index), 4)


def test_a_rank_whose_epochs_miss_the_one_readable_shard_waits_for_it(shards_copy):
    """All shards but one missing, 2 ranks: a rank's epochs may hold none of the readable shard for a
    while; it steps on to the epochs that do instead of giving up."""
    index = read_shard_index(shards_copy / "shards_train.jsonl")
    for tar in shards_copy.glob("*.tar"):
        if tar.name != "train-000006.tar":  # items 36..39
            tar.unlink()
    for rank in range(2):
        got = take(stream_of(index, rank=rank, world_size=2, seed=1), 12)
        assert set(got) <= {36, 37, 38, 39}


@pytest.mark.timeout(60)
def test_an_outage_during_shard_reads_loses_nothing(image_shards):
    """The store goes away mid-epoch and comes back: the reads are held, the items are those of a
    run without the outage, nothing is counted failed."""
    index = read_shard_index(image_shards / "shards_train.jsonl")
    expected = take(stream_of(index, seed=2), 2 * N_IMAGES)
    server = ObjectServer(image_shards).start()
    port, url = server.port, server.url
    remote = read_shard_index(f"{url}shards_train.jsonl")
    restarted = []

    def outage():
        server.stop()
        time.sleep(1.5)
        restarted.append(ObjectServer(image_shards, port=port).start())

    stream = stream_of(remote, seed=2, reads=1, reader_options=dict(backoff_max_s=0.2, outage_s=30))
    try:
        got, _ = stream.next_reads(10)
        threading.Thread(target=outage).start()
        time.sleep(0.2)
        more, _ = stream.next_reads(2 * N_IMAGES - 10)
        stats = stream.reader.stats()
    finally:
        stream.close()
        stream.reader.close()
        for srv in restarted:
            srv.stop()
    assert [i for i, _ in got + more] == expected
    assert stream.failures == 0 and stats["failures"] == 0 and stats["outages"] == 1


def test_webdataset_shards_with_other_members_are_sliced_right(images, tmp_path):
    """Shards of the webdataset package (.cls beside each image), indexed, read: each item's bytes are
    its source file's."""
    root, manifest = images
    write_webdataset_shards(manifest, tmp_path / "wds", per_shard=7)
    index = index_shards(str(tmp_path / "wds")).manifest
    stream = stream_of(index)
    items, _ = stream.next_reads(N_IMAGES)
    stream.close()
    stream.reader.close()
    sources = {i: Path(e.uri).read_bytes() for i, e in enumerate(manifest)}
    assert sorted(i for i, _ in items) == list(range(N_IMAGES))
    assert all(data == sources[i] for i, data in items)
