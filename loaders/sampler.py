"""Epoch-seeded shuffling, identical on every rank, sharded by rank and worker, exactly resumable.

Epoch e's order is a permutation drawn from numpy's PCG64 seeded with the pair (seed, e), so every
rank computes the same permutation without communicating (and (seed=1, e=0) differs from
(seed=0, e=1), unlike seed + e). The permutation is padded by repeating its head (drop_last=False)
or cut (drop_last=True) to a multiple of world_size, and rank r takes every world_size-th index
starting at r: all ranks get the same number of samples, so DDP steps stay in lockstep.

Workers (DataLoader processes) sub-shard a rank's order the same way: worker w of n takes rank
positions position + w, position + w + n, ... A rank-level position (what the consumer delivered,
counted across all workers) resumes every worker exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_STATE_KEYS = ("epoch", "position", "seed", "num_samples", "world_size", "shuffle", "drop_last")


class EpochSampler:
    """Dataset indices for one rank (and worker), epoch after epoch.

    position: samples of this rank's current epoch already consumed (counted at the rank level:
        with several workers, each yielded index advances it by num_workers).
    infinite: iterate forever, moving to the next epoch at each end; otherwise one iteration
        yields the rest of the current epoch (or, if it was finished, the whole next one).
    """

    def __init__(self, num_samples: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = False, worker_id: int = 0,
                 num_workers: int = 1, infinite: bool = False):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, "
                             f"world_size={world_size}")
        if num_workers < 1 or not 0 <= worker_id < num_workers:
            raise ValueError(f"worker_id must be in [0, num_workers), got worker_id={worker_id}, "
                             f"num_workers={num_workers}")
        if drop_last and num_samples < world_size:
            raise ValueError(f"drop_last with num_samples={num_samples} < world_size={world_size} "
                             "leaves every rank empty")
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.worker_id = worker_id
        self.num_workers = num_workers
        self.infinite = infinite
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, np.ndarray] | None = None  # (epoch, rank order)

    @property
    def samples_per_rank(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)  # ceil

    def __len__(self) -> int:
        """Indices this rank and worker yield in one whole epoch."""
        return len(range(self.worker_id, self.samples_per_rank, self.num_workers))

    def rank_order(self, epoch: int) -> np.ndarray:
        """[samples_per_rank] int64: this rank's dataset indices in epoch order (all workers)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n = self.num_samples
        if self.shuffle:
            order = np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(n)
        else:
            order = np.arange(n)
        total = self.samples_per_rank * self.world_size
        if total > n:  # pad with the head of the order (np.resize repeats it as often as needed)
            order = np.resize(order, total)
        order = order[:total][self.rank::self.world_size].astype(np.int64)  # [samples_per_rank]
        self._cache = (epoch, order)
        return order

    def set_epoch(self, epoch: int) -> None:
        """Move to `epoch` from its start; a no-op for the current epoch, so that calling it
        after load_state_dict keeps the restored position."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def __iter__(self) -> Iterator[int]:
        if self.position >= self.samples_per_rank:
            self.epoch, self.position = self.epoch + 1, 0
        while True:
            order = self.rank_order(self.epoch)
            # Rank positions this worker owns from here: position + worker_id, + num_workers...
            for i in range(self.position + self.worker_id, len(order), self.num_workers):
                self.position = min(i - self.worker_id + self.num_workers, len(order))
                yield int(order[i])
            self.position = len(order)
            if not self.infinite:
                return
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_samples": self.num_samples, "world_size": self.world_size,
                "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Resume at `state`'s epoch and position; the shuffle settings must be the same."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise KeyError(f"EpochSampler state is missing {missing}")
        for key in ("seed", "num_samples", "world_size", "shuffle", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(f"EpochSampler state has {key}={state[key]!r} but this sampler "
                                 f"has {key}={getattr(self, key)!r}: the order would differ")
        if not 0 <= state["position"] <= self.samples_per_rank:
            raise ValueError(f"EpochSampler state position={state['position']} is outside "
                             f"[0, {self.samples_per_rank}]")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
