"""Run under torchrun by test_fsdp.py: trains the tiny config with FSDP2 and activation checkpointing
(`parallel.strategy=fsdp`, `parallel.activation_checkpointing=true`) for `max_steps` steps in the run
folder OUT/runs/<run_name> (resuming from its latest checkpoint, train.resume=auto), and records what
parallelize made of the model into OUT/<run_name>_rank<r>.json."""

import json
import os
import sys
from pathlib import Path

import omnimae.engine as engine_module
import omnimae.train as train_module
from omnimae.config import load_config


def main(data_root: str, out: str, run_name: str, max_steps: str) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.tensor import DTensor

    from tests.omnimae.conftest import tiny_overrides

    seen = {}
    real_parallelize = engine_module.parallelize

    def recording_parallelize(model, **kwargs):
        wrapped = real_parallelize(model, **kwargs)
        seen["wrapper"] = type(wrapped).__name__
        seen["all_params_sharded"] = all(isinstance(p, DTensor) for p in wrapped.parameters())
        # fully_shard swaps each block's class for an FSDP subclass of it, so isinstance still holds.
        seen["checkpoint_wrapped_blocks"] = sum(isinstance(b, CheckpointWrapper)
                                                for b in list(model.blocks) + list(model.decoder_blocks))
        return wrapped

    engine_module.parallelize = recording_parallelize
    overrides = tiny_overrides(Path(data_root), Path(out) / "runs", **{
        "train.max_steps": int(max_steps), "train.batch_size": 8, "train.run_name": run_name,
        "parallel.strategy": "fsdp", "parallel.activation_checkpointing": "true"})
    train_module.train(load_config(None, overrides))
    rank = int(os.environ["RANK"])
    (Path(out) / f"{run_name}_rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(*sys.argv[1:])
