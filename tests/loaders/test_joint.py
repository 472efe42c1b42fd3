"""JointLoader: one modality per batch, rank-identical epoch orders, ratios, groups, resume, threads."""

from __future__ import annotations

import io
import threading
from collections import Counter

import pytest
import torch

from loaders.decode import dali_import_error
from loaders.errors import DataError
from loaders.joint_loader import JointLoader, epoch_order
from loaders.manifest import Manifest
from loaders.protocol import Loader

from tests.loaders._loader_data import (add_bad_files, image_loader, make_images, make_videos, same_batch,
                                        video_loader, wait_for_threads)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Manifest:
    return make_videos(tmp_path_factory.mktemp("videos"), count=8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Manifest:
    return make_images(tmp_path_factory.mktemp("images"), per_class=2)  # 16 images


def joint(videos, images, *, rank=0, world_size=1, video_backend="pyav", **kwargs) -> JointLoader:
    """Batches of 4: an epoch is 16 / 4 = 4 image steps and 8 / 4 = 2 video steps (x repeats)."""
    loaders = {"image": image_loader(images, rank=rank, world_size=world_size),
               "video": video_loader(videos, rank=rank, world_size=world_size, decode_backend=video_backend)}
    kwargs.setdefault("seed", 3)
    return JointLoader(loaders, world_size=world_size, **kwargs)


def take(loader, n: int) -> list:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_epoch_order_is_a_seeded_shuffle_of_the_step_counts():
    steps = {"image": 20, "video": 20}
    orders = [epoch_order(steps, seed=0, epoch=e) for e in range(4)]
    assert all(Counter(o) == Counter(steps) for o in orders)
    assert len({tuple(o) for o in orders}) == 4  # a new order every epoch
    assert orders[1] == epoch_order(steps, seed=0, epoch=1)  # a pure function of (seed, epoch)
    assert epoch_order(steps, seed=1, epoch=0) != orders[0]
    grouped = epoch_order(steps, seed=0, epoch=0, group=3)
    assert grouped == [m for m in orders[0] for _ in range(3)]


@pytest.mark.timeout(60)
def test_batches_follow_the_epoch_order_identically_on_every_rank(videos, images):
    """Two ranks of a world of 2 with the same seed see the same modality sequence, epoch after
    epoch; each batch holds one modality; stage timings ride along."""
    sequences = []
    for rank in (0, 1):
        loader = joint(videos, images, rank=rank, world_size=2, prefetch=2)
        try:
            # World 2: an epoch is 16 / 8 = 2 image and 8 / 8 = 1 video steps; take 2 epochs.
            assert loader.steps_per_epoch == {"image": 2, "video": 1} and len(loader) == 3
            batches = take(loader, 6)
        finally:
            loader.close()
        for batch in batches:
            assert batch.pixels.dim() == (5 if batch.modality == "video" else 4) and len(batch) == 4
            assert {"read_wait", "decode", "assembly", "items"} <= set(batch.stats)
            assert all(batch.stats[k] >= 0 for k in ("read_wait", "decode", "assembly"))
            assert "state" not in batch.stats
        sequences.append([b.modality for b in batches])
    assert sequences[0] == sequences[1]
    steps = {"image": 2, "video": 1}
    assert sequences[0] == epoch_order(steps, 3, 0) + epoch_order(steps, 3, 1)


@pytest.mark.timeout(60)
def test_repeats_set_the_steps_of_each_data_set(videos, images):
    loader = joint(videos, images, repeats={"image": 1, "video": 3}, prefetch=2)
    try:
        assert loader.steps_per_epoch == {"image": 4, "video": 6}  # video oversampled 3x (Fig. 5c)
        batches = take(loader, len(loader))
    finally:
        loader.close()
    assert Counter(b.modality for b in batches) == {"image": 4, "video": 6}


@pytest.mark.timeout(60)
def test_group_keeps_accumulation_micro_batches_in_one_modality(videos, images):
    loader = joint(videos, images, group=2, prefetch=3)
    try:
        # Global batch 4 x 2: 2 image steps and 1 video step, each 2 micro batches.
        assert loader.steps_per_epoch == {"image": 2, "video": 1} and len(loader) == 6
        modalities = [b.modality for b in take(loader, 12)]
    finally:
        loader.close()
    pairs = list(zip(modalities[0::2], modalities[1::2]))
    assert all(a == b for a, b in pairs)
    assert Counter(a for a, _ in pairs[:3]) == {"image": 2, "video": 1}


def _round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prefetch", [2, 4])
def test_resume_counts_consumed_batches_not_prefetched_ones(videos, images, prefetch):
    k, m = 3, 5  # 8 batches: crosses the first epoch (6 batches) into the second
    whole = joint(videos, images, prefetch=prefetch)
    try:
        expected = take(whole, k + m)[k:]
    finally:
        whole.close()

    first = joint(videos, images, prefetch=prefetch)
    try:
        consumed = take(first, k)
        deadline = 50
        while first._queue.qsize() < prefetch and deadline:  # let the producer run ahead
            threading.Event().wait(0.05)
            deadline -= 1
        state = _round_trip(first.state_dict())
    finally:
        first.close()
    assert state["epoch"] == 0 and state["position"] == k
    built = {name: s["batches"] for name, s in state["loaders"].items()}
    assert built == {name: sum(b.modality == name for b in consumed) for name in ("image", "video")}

    resumed = joint(videos, images, prefetch=prefetch)
    try:
        resumed.load_state_dict(state)
        got = take(resumed, m)
    finally:
        resumed.close()
    assert [b.modality for b in got] == [b.modality for b in expected]
    assert all(same_batch(a, b) for a, b in zip(expected, got))


@pytest.mark.timeout(60)
def test_state_after_one_batch_ignores_the_prefetched_ones(videos, images):
    loader = joint(videos, images, prefetch=3)
    try:
        assert loader.state_dict()["position"] == 0
        batch = take(loader, 1)[0]
        while loader._queue.qsize() < 3:  # the producer has built 4 batches, 1 handed out
            threading.Event().wait(0.05)
        state = loader.state_dict()
    finally:
        loader.close()
    assert state["position"] == 1
    assert {n: s["batches"] for n, s in state["loaders"].items()} == {
        "image": int(batch.modality == "image"), "video": int(batch.modality == "video")}


@pytest.mark.timeout(60)
def test_a_failing_loader_raises_in_the_consumer_and_close_stops_everything(videos, images, tmp_path, monkeypatch):
    import loaders.item_stream as item_stream

    _, bad = add_bad_files(videos[:2], tmp_path)
    corrupt = Manifest([videos[0].__class__(u, 0, 30, 12.0, 2.5) for u, k in bad.items() if k == "corrupt"])
    monkeypatch.setattr(item_stream, "MAX_CONSECUTIVE_FAILURES", 4)
    before = set(threading.enumerate())
    loader = JointLoader({"video": video_loader(corrupt)}, prefetch=2)
    # The loader's own error reaches the consumer as itself (the CLI prints it as one line).
    with pytest.raises(DataError, match="failed to read or decode"):
        take(loader, 1)
    with pytest.raises(DataError, match="failed to read or decode"):  # and again: it does not hang
        take(loader, 1)
    loader.close()
    assert wait_for_threads(before) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("video_backend", ["pyav", pytest.param("dali", marks=pytest.mark.skipif(
    dali_import_error() is not None, reason="DALI does not import"))])
def test_close_leaves_no_live_threads(videos, images, video_backend):
    before = set(threading.enumerate())
    loader = joint(videos, images, prefetch=3, video_backend=video_backend)
    take(loader, 2)  # the producer is now blocked on a full queue
    loader.close()
    assert wait_for_threads(before) == []
    with pytest.raises(RuntimeError, match="closed"):
        take(loader, 1)


@pytest.mark.timeout(60)
def test_every_loader_is_a_loader_and_a_batch_carries_measurements_only(videos, images):
    loader = joint(videos, images)
    try:
        assert isinstance(loader, Loader) and all(isinstance(child, Loader) for child in loader.loaders.values())
        batches = take(loader, 3)
    finally:
        loader.close()
    # The resume point travels beside the batch in the producer's queue, not in its stats.
    assert all(set(b.stats) == {"read_wait", "decode", "assembly", "items", "skipped"} for b in batches)
