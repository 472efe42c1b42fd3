"""Finding the bottleneck across ranks: the report names a rank made slow on purpose and its stage,
and says balanced when none is; the verdict logic on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omnimae.cluster import diagnose, spread
from omnimae.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[2]
WHO = [{"rank": i, "host": f"node{i // 2}", "local_rank": i % 2} for i in range(4)]


def _rank(data_wait=0.01, read_wait=0.0, decode=0.05, assembly=0.01, collective_wait=0.3, compute=0.6, p95=0.1):
    return {"data_wait": data_wait, "read_wait": read_wait, "decode": decode, "assembly": assembly,
            "collective_wait": collective_wait, "compute": compute, "storage_p95_s": p95}


def test_a_rank_slow_on_storage_is_named_with_its_stage():
    ranks = [_rank() for _ in range(4)]
    ranks[3] = _rank(data_wait=0.4, read_wait=0.8, collective_wait=0.0, compute=0.5, p95=2.1)
    verdict = diagnose(ranks, WHO, wall_s=1.0, steps=10)
    assert (verdict["verdict"], verdict["stage"], verdict["rank"]) == ("data", "read_wait", 3)
    assert "rank 3 (node1, GPU 1)" in verdict["line"] and "storage reads" in verdict["line"]
    assert "p95 2.1 s there vs 0.1 s" in verdict["line"]


def test_a_rank_slow_to_compute_is_named():
    ranks = [_rank() for _ in range(4)]
    ranks[1] = _rank(collective_wait=0.0, compute=0.95)
    verdict = diagnose(ranks, WHO, wall_s=1.0, steps=10)
    assert (verdict["verdict"], verdict["rank"]) == ("step", 1) and "rank 1 (node0, GPU 1)" in verdict["line"]


def test_equal_ranks_are_balanced_or_all_data_bound():
    assert diagnose([_rank(collective_wait=0.0) for _ in range(4)], WHO, wall_s=1.0, steps=10)["verdict"] == "balanced"
    bound = diagnose([_rank(data_wait=0.5, decode=0.9, collective_wait=0.0) for _ in range(4)], WHO,
                     wall_s=1.0, steps=10)
    assert (bound["verdict"], bound["stage"], bound["rank"]) == ("data", "decode", None)


def test_spread_gives_min_median_max_and_the_slowest_rank():
    ranks = [_rank(data_wait=d) for d in (0.1, 0.4, 0.2, 0.3)]
    s = spread(ranks, steps=2)
    assert (s["ranks/data_wait_s_min"], s["ranks/data_wait_s_max"], s["ranks/data_wait_max_rank"]) == (0.05, 0.2, 1)
    assert s["ranks/data_wait_s_median"] == pytest.approx(0.125)


def _torchrun(tiny_data, out: Path, slow_rank: int, profile_steps: int = 0) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", SLOW_RANK=str(slow_rank), READ_DELAY_S="0.4",
               PROFILE_STEPS=str(profile_steps))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests/omnimae/_straggler_worker.py"), str(tiny_data), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = out / "runs" / "run"
    return {"run": run, "summary": json.loads((run / "summary.json").read_text()),
            "metrics": read_jsonl(run / "metrics.jsonl"),
            "gathers": [json.loads((out / f"gathers{r}.json").read_text()) for r in (0, 1)], "log": proc.stdout}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_torchrun_names_the_rank_with_slow_storage_and_says_balanced_without_it(tiny_data, tmp_path):
    slow = _torchrun(tiny_data, tmp_path / "slow", slow_rank=1, profile_steps=3)
    cluster = slow["summary"]["cluster"]
    assert (cluster["verdict"], cluster["stage"], cluster["rank"]) == ("data", "read_wait", 1), cluster
    assert slow["summary"]["bottleneck"] == "read_wait" and "rank 1" in slow["log"]
    ranks = slow["summary"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["collective_wait"] > 5 * ranks[1]["collective_wait"]  # rank 0 waits for rank 1
    # Every rank traced the profiled steps in a folder of its own; rank 0 compared them.
    assert sorted(p.name.split("-")[0] for p in (slow["run"] / "profile").iterdir()) == ["rank0", "rank1"]
    assert "per rank" in slow["log"] and "bottleneck: data: rank 1" in slow["log"]
    last = slow["metrics"][-1]
    assert last["ranks/data_wait_max_rank"] == 1 and last["ranks/straggler"] == 1
    # Stage totals gathered on the 4 logging steps of 8 and once at the end, never on other steps, on
    # both ranks alike (plus one gather of the profile means when the profiled steps end).
    assert [sum("collective_wait" in keys for keys in g) for g in slow["gathers"]] == [5, 5]
    assert [len(g) for g in slow["gathers"]] == [6, 6]

    even = _torchrun(tiny_data, tmp_path / "even", slow_rank=-1)
    assert even["summary"]["cluster"]["rank"] is None, even["summary"]["cluster"]
