"""Every rank's view of the run, and the report that names a straggler.

In a synchronous job every rank waits for the slowest at the step's first collective, so rank 0's
own timings can say "the step sets the pace" while 7 GPUs idle behind one rank's storage reads. On
logging steps only (no new collective on other steps), each rank's window totals are all-gathered
in one small tensor: the trainer's wait for the loader, the loader's own stages (storage reads,
decoding, assembly, timed on its threads), the time spent waiting in the step's agreement
collective (the first one of the step: it absorbs the wait for the slowest rank), and the storage
latency p95. `diagnose` turns them into one verdict:

- data:  one rank waits on its loader much longer than the others; its slowest stage is named;
- step:  one rank computes longer (the others wait for it in the collective, it does not);
- data (every rank): all ranks wait on their loaders alike;
- balanced: the step sets the pace.
"""

from __future__ import annotations

import socket
import statistics
import time

import torch
import torch.distributed as dist

from omnimae.parallel import DistInfo

# Seconds per window (or per run), per rank. compute = wall - data_wait - collective_wait.
STAGES = ("data_wait", "read_wait", "decode", "assembly", "collective_wait", "compute")
STAGE_NAMES = {"read_wait": "storage reads", "decode": "decoding", "assembly": "batch assembly"}
# A rank stands out when its excess over the others' median is at least this share of the step.
STRAGGLER_SHARE = 0.10
DATA_BOUND_SHARE = 0.20  # every rank waiting this share of its steps on the loader: data-bound


def identities(dist_info: DistInfo) -> list[dict]:
    """[{"rank", "host", "local_rank"}] of every rank (one object all-gather, at the start of a run)."""
    me = {"rank": dist_info.rank, "host": socket.gethostname(), "local_rank": dist_info.local_rank}
    if not dist_info.distributed:
        return [me]
    out: list = [None] * dist_info.world_size
    dist.all_gather_object(out, me)
    return out


class CollectiveTimer:
    """Time spent in the step's agreement collective, read on logging steps only.

    On a GPU the wait is measured between two CUDA events (no host sync when recorded); on the CPU
    the collective blocks the host, so the host clock measures it."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._pairs: list = []
        self._seconds = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        if self.cuda:
            begin = torch.cuda.Event(enable_timing=True)
            begin.record()
            self._pairs.append([begin, None])
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pairs[-1][1] = end
        else:
            self._seconds += time.perf_counter() - self._t0

    def take(self) -> float:
        """Seconds since the last take (call after the device is synchronized)."""
        seconds = self._seconds + sum(a.elapsed_time(b) / 1e3 for a, b in self._pairs)
        self._pairs, self._seconds = [], 0.0
        return seconds


def gather(values: dict[str, float], dist_info: DistInfo) -> list[dict[str, float]]:
    """Every rank's `values` (the same float keys on every rank), by one all-gather of one tensor."""
    keys = sorted(values)
    if not dist_info.distributed:
        return [dict(values)]
    mine = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=dist_info.device)
    out = [torch.empty_like(mine) for _ in range(dist_info.world_size)]
    dist.all_gather(out, mine)
    return [dict(zip(keys, t.tolist())) for t in out]  # sync: logging steps only


def rank_totals(stages: dict[str, float], wall_s: float, storage_p95_s: float = 0.0) -> dict[str, float]:
    """This rank's STAGES over `wall_s` seconds (compute is what is left) and its storage p95."""
    out = {k: float(stages.get(k, 0.0)) for k in STAGES if k != "compute"}
    out["compute"] = max(0.0, wall_s - out["data_wait"] - out["collective_wait"])
    out["storage_p95_s"] = float(storage_p95_s)
    return out


def storage_p95(loader_stats: dict) -> float:
    """The worst storage latency p95 of a JointLoader's data sets (their readers' stats)."""
    return max((s.get("reader", {}).get("latency_p95_s", 0.0) for s in loader_stats.values()
                if isinstance(s, dict)), default=0.0)


def spread(per_rank: list[dict[str, float]], steps: int) -> dict[str, float]:
    """Per stage, seconds per step across ranks: min, median, max and the rank with the max."""
    out: dict[str, float] = {}
    for k in STAGES:
        values = [r.get(k, 0.0) / max(1, steps) for r in per_rank]
        out[f"ranks/{k}_s_min"] = min(values)
        out[f"ranks/{k}_s_median"] = statistics.median(values)
        out[f"ranks/{k}_s_max"] = max(values)
        out[f"ranks/{k}_max_rank"] = values.index(max(values))
    return out


def _where(who: dict) -> str:
    return f"rank {who['rank']} ({who['host']}, GPU {who['local_rank']})"


def _others_median(per_rank: list[dict], key: str, r: int) -> float:
    others = [p.get(key, 0.0) for i, p in enumerate(per_rank) if i != r]
    return statistics.median(others) if others else 0.0


def diagnose(per_rank: list[dict[str, float]], who: list[dict], *, wall_s: float, steps: int) -> dict:
    """Which stage holds the run back, and where. per_rank: seconds over `wall_s` (each rank's totals
    of STAGES, and "storage_p95_s"); who: `identities`. Returns {"verdict", "stage", "rank", "line"}."""
    per_step = max(1, steps)
    wall = max(wall_s, 1e-9)
    share = lambda r, k: per_rank[r].get(k, 0.0) / wall  # noqa: E731
    n = len(per_rank)
    if n > 1:
        r = max(range(n), key=lambda i: per_rank[i].get("data_wait", 0.0))
        excess = per_rank[r].get("data_wait", 0.0) - _others_median(per_rank, "data_wait", r)
        if excess / wall >= STRAGGLER_SHARE:
            stage = max(STAGE_NAMES, key=lambda k: per_rank[r].get(k, 0.0) - _others_median(per_rank, k, r))
            there, elsewhere = per_rank[r].get(stage, 0.0) / per_step, _others_median(per_rank, stage, r) / per_step
            line = (f"data: {_where(who[r])} waits {share(r, 'data_wait'):.0%} of its steps on its loader, "
                    f"mostly {STAGE_NAMES[stage]} ({there:.3g} s per step there vs {elsewhere:.3g} s on the "
                    f"other ranks)")
            if stage == "read_wait" and per_rank[r].get("storage_p95_s"):
                line += (f"; storage p95 {per_rank[r]['storage_p95_s']:.3g} s there vs "
                         f"{_others_median(per_rank, 'storage_p95_s', r):.3g} s")
            line += "; the other ranks wait for it in the all-reduce"
            return {"verdict": "data", "stage": stage, "rank": r, "line": line}
        r = min(range(n), key=lambda i: per_rank[i].get("collective_wait", 0.0))
        waited = _others_median(per_rank, "collective_wait", r) - per_rank[r].get("collective_wait", 0.0)
        if waited / wall >= STRAGGLER_SHARE:
            line = (f"step: {_where(who[r])} computes {per_rank[r].get('compute', 0.0) / per_step:.3g} s per step "
                    f"vs {_others_median(per_rank, 'compute', r) / per_step:.3g} s on the other ranks, which wait "
                    f"for it in the all-reduce ({waited / wall:.0%} of their steps): a slower device or a busy host")
            return {"verdict": "step", "stage": "compute", "rank": r, "line": line}
    data_share = statistics.median(share(i, "data_wait") for i in range(n))
    if data_share >= DATA_BOUND_SHARE:
        stage = max(STAGE_NAMES, key=lambda k: statistics.median(p.get(k, 0.0) for p in per_rank))
        line = (f"data: {'every rank waits' if n > 1 else 'the trainer waits'} {data_share:.0%} of its steps on "
                f"its loader, mostly {STAGE_NAMES[stage]}")
        return {"verdict": "data", "stage": stage, "rank": None, "line": line}
    return {"verdict": "balanced", "stage": "step", "rank": None,
            "line": "balanced: the step sets the pace" + (" on every rank" if n > 1 else "")}
