"""Run under torchrun by test_cluster.py: trains the tiny config with storage reads slowed on one rank
(SLOW_RANK, READ_DELAY_S; SLOW_RANK=-1: none) and records how often the ranks' totals were gathered."""

import json
import os
import sys
import time
from pathlib import Path

import loaders.item_stream as item_stream
import omnimae.cluster as cluster
import omnimae.train as train_module
from omnimae.config import load_config


def main(data_root: str, out: str) -> None:
    from tests.omnimae.conftest import tiny_overrides

    rank = int(os.environ["RANK"])
    if rank == int(os.environ["SLOW_RANK"]):
        delay = float(os.environ["READ_DELAY_S"])
        real_next_reads = item_stream.ItemStream.next_reads

        def slow_next_reads(self, n):  # a slow prefix or a throttled NIC: this rank's reads take longer
            items, waited = real_next_reads(self, n)
            time.sleep(delay)
            return items, waited + delay

        item_stream.ItemStream.next_reads = slow_next_reads
    gathers = []
    real_gather = cluster.gather

    def counting_gather(values, dist_info):
        gathers.append(sorted(values))
        return real_gather(values, dist_info)

    cluster.gather = counting_gather
    cfg = load_config(None, tiny_overrides(Path(data_root), Path(out) / "runs", **{
        "train.max_steps": 8, "train.batch_size": 8, "train.log_every": 2, "data.image.root": "",
        "train.profile_steps": int(os.environ.get("PROFILE_STEPS", "0"))}))
    train_module.train(cfg)
    (Path(out) / f"gathers{rank}.json").write_text(json.dumps(gathers))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
