"""EpochSampler: same shuffle on every rank, disjoint covering shards, exact resume."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from loaders.sampler import EpochSampler


def epoch_of(sampler: EpochSampler) -> list[int]:
    return list(sampler)


@pytest.mark.parametrize("num_samples, world_size", [(100, 4), (103, 4), (7, 8), (1, 3)])
def test_ranks_are_disjoint_and_cover_the_dataset(num_samples, world_size):
    shards = [epoch_of(EpochSampler(num_samples, seed=3, rank=r, world_size=world_size))
              for r in range(world_size)]
    lengths = {len(s) for s in shards}
    assert lengths == {-(-num_samples // world_size)}  # equal, padded up
    together = Counter(itertools.chain(*shards))
    assert set(together) == set(range(num_samples))  # every sample somewhere
    padding = len(shards[0]) * world_size - num_samples
    assert sum(together.values()) - num_samples == padding  # only the padding repeats
    if padding == 0:
        assert all(count == 1 for count in together.values())


def test_drop_last_cuts_to_equal_disjoint_shards():
    shards = [epoch_of(EpochSampler(103, rank=r, world_size=4, drop_last=True)) for r in range(4)]
    assert {len(s) for s in shards} == {25}
    flat = list(itertools.chain(*shards))
    assert len(set(flat)) == len(flat) == 100


def test_shuffle_is_the_same_on_every_rank_and_changes_per_epoch():
    # Interleaving the ranks' shards rebuilds one permutation: they all drew the same one.
    a = EpochSampler(64, seed=5, rank=0, world_size=2)
    b = EpochSampler(64, seed=5, rank=1, world_size=2)
    assert (a.rank_order(0)[:10] != b.rank_order(0)[:10]).any()
    full = [x for pair in zip(a.rank_order(0), b.rank_order(0)) for x in pair]
    assert sorted(full) == list(range(64))
    assert list(EpochSampler(64, seed=5).rank_order(0)) == full
    assert list(EpochSampler(64, seed=5).rank_order(1)) != full
    assert list(EpochSampler(64, seed=6).rank_order(0)) != full
    # (seed, epoch) is a pair, not a sum: seed 1 epoch 0 differs from seed 0 epoch 1.
    assert (list(EpochSampler(64, seed=1).rank_order(0))
            != list(EpochSampler(64, seed=0).rank_order(1)))


def test_no_shuffle_is_strided_arange():
    assert epoch_of(EpochSampler(10, rank=1, world_size=3, shuffle=False)) == [1, 4, 7, 0]


def test_epochs_advance_when_iterated_again_or_infinite():
    s = EpochSampler(10, seed=1)
    first, second = epoch_of(s), epoch_of(s)
    assert s.epoch == 1 and first != second and sorted(second) == list(range(10))
    inf = EpochSampler(10, seed=1, infinite=True)
    assert list(itertools.islice(inf, 20)) == first + second


def test_resume_continues_exactly_across_epochs():
    reference = list(itertools.islice(EpochSampler(37, seed=9, rank=1, world_size=3,
                                                   infinite=True), 60))
    for cut in (0, 5, 13, 25, 26):  # 13 per rank per epoch: cuts inside and at the boundary
        s = EpochSampler(37, seed=9, rank=1, world_size=3, infinite=True)
        head = list(itertools.islice(s, cut))
        state = s.state_dict()
        resumed = EpochSampler(37, seed=9, rank=1, world_size=3, infinite=True)
        resumed.load_state_dict(state)
        resumed.set_epoch(state["epoch"])  # what a trainer does at the top of its epoch loop
        assert head + list(itertools.islice(resumed, 60 - cut)) == reference, cut


def test_finite_resume_yields_the_rest_of_the_epoch():
    s = EpochSampler(20, seed=2)
    it = iter(s)
    head = [next(it) for _ in range(7)]
    assert s.state_dict()["position"] == 7
    resumed = EpochSampler(20, seed=2)
    resumed.load_state_dict(s.state_dict())
    assert head + list(resumed) == epoch_of(EpochSampler(20, seed=2))


def test_workers_split_a_rank_and_resume_from_a_rank_level_position():
    rank_order = list(EpochSampler(50, seed=4, rank=1, world_size=2).rank_order(0))
    workers = [EpochSampler(50, seed=4, rank=1, world_size=2, worker_id=w, num_workers=3)
               for w in range(3)]
    outputs = [epoch_of(w) for w in workers]
    assert sorted(map(len, outputs)) == [8, 8, 9] and [len(w) for w in workers] == [9, 8, 8]
    assert sorted(itertools.chain(*outputs)) == sorted(rank_order)
    # A consumer that delivered 10 samples of the rank (whatever the worker mix) resumes there.
    state = {**workers[0].state_dict(), "epoch": 0, "position": 10}
    rest = []
    for w in range(3):
        s = EpochSampler(50, seed=4, rank=1, world_size=2, worker_id=w, num_workers=3)
        s.load_state_dict(state)
        rest.append(epoch_of(s))
    assert sorted(itertools.chain(*rest)) == sorted(rank_order[10:])
    assert rest[0][0] == rank_order[10] and rest[2][0] == rank_order[12]


def test_set_epoch_resets_position_only_for_a_new_epoch():
    s = EpochSampler(10)
    it = iter(s)
    next(it), next(it)
    s.set_epoch(0)
    assert s.position == 2
    s.set_epoch(3)
    assert (s.epoch, s.position) == (3, 0)


def test_load_state_dict_rejects_a_different_order():
    state = EpochSampler(10, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1"):
        EpochSampler(10, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="num_samples"):
        EpochSampler(11, seed=1).load_state_dict(state)
    with pytest.raises(KeyError, match="position"):
        EpochSampler(10, seed=1).load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="position"):
        EpochSampler(10, seed=1).load_state_dict({**state, "position": 11})


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(10, rank=2, world_size=2)
    with pytest.raises(ValueError, match="worker_id"):
        EpochSampler(10, worker_id=1, num_workers=1)
    with pytest.raises(ValueError, match="num_samples"):
        EpochSampler(0)
