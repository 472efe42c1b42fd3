"""Run under torchrun by test_distributed.py: trains the tiny config, records what each rank read and
its final parameters into OUT/rank<r>.pt. A third argument "compile" compiles the model (the
trainer's default scope: the whole forward and loss under DDP)."""

import os
import sys
from pathlib import Path

import torch

import loaders.item_stream as item_stream
import omnimae.engine as engine_module
import omnimae.train as train_module
from omnimae.config import load_config


def main(data_root: str, out: str, compile: bool = False) -> None:
    from tests.omnimae.conftest import tiny_overrides

    rank = int(os.environ["RANK"])
    read: dict[str, list[int]] = {"image": [], "video": []}
    real_next_reads = item_stream.ItemStream.next_reads

    def recording_next_reads(self, n):
        items, waited = real_next_reads(self, n)
        read[self.modality].extend(int(index) for index, _ in items)
        return items, waited

    item_stream.ItemStream.next_reads = recording_next_reads
    models = []
    real_parallelize = engine_module.parallelize

    def keep(model, **kwargs):
        models.append(model)
        return real_parallelize(model, **kwargs)

    engine_module.parallelize = keep
    cfg = load_config(None, tiny_overrides(Path(data_root), Path(out) / "runs",
                                           **{"train.max_steps": 6, "train.batch_size": 8,
                                              "parallel.compile": compile}))
    train_module.train(cfg)
    state = {k: v.detach().clone() for k, v in models[0].state_dict().items()}
    torch.save({"read": read, "state": state}, Path(out) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], compile=sys.argv[3:] == ["compile"])
