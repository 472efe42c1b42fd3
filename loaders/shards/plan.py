"""Which items of a sharded data set a rank reads in an epoch, in which order, from which open shards.

    shard order    a permutation of the S shards drawn from (seed, epoch): the same on every rank
    item sequence  each shard's items in their own permutation, shard after shard: N items
    rank split     padded by repeating its head to a multiple of world_size (as loaders.sampler does),
                   then cut into world_size contiguous runs: rank r takes run r, so every rank gets
                   the same number of items, no item twice and none lost (N divisible by world_size)
    segments       a rank's run, cut at shard boundaries: (shard, its items in this run), in order;
                   a shard at the edge of two runs is a segment of both ranks
    mixing         `buffer` lanes, each holding one open segment at a time; an exhausted segment's
                   lane takes the next segment, and the items of the open segments are interleaved
                   at random (`mix`): at most `buffer` shards are needed at any point of the order

Everything is a function of (seed, epoch, rank, world_size, buffer) and the shard sizes, so the
order needs no communication and a position in it (`EpochPlan.open_at`) is a complete resume point:
the open shards are read again and the interleaving continues exactly.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    shard: int
    items: np.ndarray  # [n] int64 item indices in their in-shard order


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epoch: segments, and the emission order as (segment, item) per position."""

    segments: list[Segment]
    segment_of: np.ndarray     # [P] int64: the segment each position draws from
    items: np.ndarray          # [P] int64: the item at each position
    slot_position: np.ndarray  # [P] int64: the position of each segment's k-th item, segment after segment
    slot_start: np.ndarray     # [len(segments)] int64: where each segment's items start in slot_position
    first: np.ndarray          # [len(segments)] int64: the position of each segment's first item
    last: np.ndarray           # [len(segments)] int64: ... and of its last (then its shard is let go)

    def __len__(self) -> int:
        return len(self.items)

    def open_at(self, position: int) -> list[tuple[int, int]]:
        """(shard, items already taken from its segment) for each segment open at `position`
        (items before it taken, some left), in segment order."""
        out = []
        for j in np.flatnonzero((self.first < position) & (self.last >= position)):
            start = self.slot_start[j]
            slots = self.slot_position[start:start + len(self.segments[j].items)]  # increasing
            out.append((self.segments[j].shard, int(np.searchsorted(slots, position))))
        return out


def rank_segments(shard_counts: np.ndarray, *, seed: int, epoch: int, rank: int, world_size: int,
                  shuffle: bool = True) -> list[Segment]:
    """This rank's run of the epoch's item sequence, as segments (module docstring)."""
    counts = np.asarray(shard_counts, np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    rng = np.random.Generator(np.random.PCG64([seed, epoch, 0x5A4D]))
    order = rng.permutation(len(counts)) if shuffle else np.arange(len(counts))
    shard_seq = np.repeat(order, counts[order])  # [N] the shard of each position of the item sequence
    item_seq = np.concatenate([starts[s] + (rng.permutation(counts[s]) if shuffle else np.arange(counts[s]))
                               for s in order]) if len(order) else np.zeros(0, np.int64)
    n = len(item_seq)
    per_rank = -(-n // world_size)  # ceil: the sampler's drop_last=False
    if per_rank * world_size > n:  # pad with the head of the sequence, as often as needed
        shard_seq, item_seq = np.resize(shard_seq, per_rank * world_size), np.resize(item_seq, per_rank * world_size)
    shard_run = shard_seq[rank * per_rank:(rank + 1) * per_rank]
    item_run = item_seq[rank * per_rank:(rank + 1) * per_rank]
    cuts = np.flatnonzero(np.diff(shard_run)) + 1  # where the shard changes
    return [Segment(int(shards[0]), items.astype(np.int64))
            for shards, items in zip(np.split(shard_run, cuts), np.split(item_run, cuts)) if len(items)]


def mix(segments: list[Segment], *, buffer: int, seed: int, epoch: int, rank: int) -> EpochPlan:
    """The emission order of `segments` through `buffer` lanes (module docstring).

    Each item takes an exponential time step (mean 1) in its lane, so every open segment advances at
    the same rate on average and the next item is always the earliest of the open segments' next
    ones: a random interleaving. A segment goes to the lane that is free first (segments start in
    order), so at most `buffer` segments are open at any position.
    """
    sizes = np.array([len(s.items) for s in segments], np.int64)
    total = int(sizes.sum())
    rng = np.random.Generator(np.random.PCG64([seed, epoch, rank, 0x4D49]))
    steps = rng.exponential(size=total)  # [P] in segment order
    starts = np.concatenate([[0], np.cumsum(sizes)])[:-1]
    lengths = np.add.reduceat(steps, starts) if total else np.zeros(0)  # time each segment takes
    begin = np.zeros(len(segments))
    lanes = [(0.0, lane) for lane in range(max(1, buffer))]  # (time the lane is free, lane)
    for j in range(len(segments)):
        free_at, lane = heapq.heappop(lanes)
        begin[j] = free_at
        heapq.heappush(lanes, (free_at + float(lengths[j]), lane))
    # An item's time: its segment's start plus the steps of its segment up to and including its own.
    within = np.cumsum(steps) - np.repeat(np.cumsum(steps)[starts] - steps[starts], sizes) if total else steps
    times = np.repeat(begin, sizes) + within
    order = np.argsort(times, kind="stable")  # [P] item slots (segment order) by emission time
    segment_seq = np.repeat(np.arange(len(segments)), sizes)
    position = np.empty(total, np.int64)
    position[order] = np.arange(total)  # the emission position of each slot
    flat_items = np.concatenate([s.items for s in segments]) if total else np.zeros(0, np.int64)
    return EpochPlan(segments, segment_seq[order], flat_items[order], position, starts.astype(np.int64),
                     first=position[starts], last=position[starts + sizes - 1])


def epoch_plan(shard_counts: np.ndarray, *, seed: int, epoch: int, rank: int, world_size: int, buffer: int,
               shuffle: bool = True) -> EpochPlan:
    """rank_segments, then mix: one rank's whole epoch."""
    segments = rank_segments(shard_counts, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                             shuffle=shuffle)
    return mix(segments, buffer=buffer, seed=seed, epoch=epoch, rank=rank)
