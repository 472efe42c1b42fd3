"""Distribution, compile and activation checkpointing, applied to an untouched model in one place.

Order (torchtitan's): activation checkpointing -> torch.compile per block -> DDP or FSDP2. The model
file knows nothing of any of it; checkpoints and evaluation use `unwrap(model)`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from omnimae.config import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name} asked for, but no CUDA device is available here "
                          f"(use train.device=cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {name} asked for, but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup_distributed(device_name: str = "auto") -> DistInfo:
    """RANK in the environment means torchrun: join the process group (nccl on GPUs, gloo on the CPU)."""
    if "RANK" not in os.environ:
        return DistInfo(device=pick_device(device_name))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ["WORLD_SIZE"])
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, local_rank, world_size, device)


def teardown_distributed(*, wait_for_peers: bool = False) -> None:
    """Destroys the process group. wait_for_peers (on the success path only): a barrier first, so no
    rank tears down while a peer is still in its last collective. Without it, 1 of many 2-rank gloo
    test runs on loaded cores ended with the rank whose test share was shorter aborting at exit
    ("terminate called without an active exception"). Never on an error path: there a peer may
    be in another collective, and the barrier would hang until the timeout."""
    if not dist.is_initialized():
        return
    if wait_for_peers and dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


def compile_scope_for(scope: str, *, strategy: str, distributed: bool, activation_checkpointing: bool) -> str:
    """"model" or "blocks" for parallel.compile_scope (auto: the whole model, except where each block
    must stand alone: FSDP2 shards per block, activation checkpointing wraps each block)."""
    if scope != "auto":
        return scope
    return "blocks" if (strategy == "fsdp" and distributed) or activation_checkpointing else "model"


def parallelize(model: nn.Module, *, dist_info: DistInfo, compile: bool, strategy: str = "ddp",
                activation_checkpointing: bool = False, compile_scope: str = "auto",
                compile_mode: str = "default") -> nn.Module:
    """Returns the module to train. `model.blocks` and `model.decoder_blocks` (where the model has a
    decoder: a fine-tuning classifier has none) are wrapped in place; with compile_scope "model"
    the model's whole forward (and loss) is one compiled graph per input shape."""
    block_lists = [model.blocks] + ([model.decoder_blocks] if hasattr(model, "decoder_blocks") else [])
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for blocks in block_lists:
            for i, block in enumerate(blocks):
                blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)
    if compile:
        # Every graph counts against one recompile limit per code object: images and videos, train
        # and eval batch sizes and autocast dtypes each add one (and per block, all blocks share
        # Block.forward); 8 (the default) is too few to hold them all, and past the limit the code
        # silently runs eager.
        import torch._dynamo

        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), 64))
        # Static shapes: images and videos each compile once (kept-token counts are fixed by
        # exact-count masking), and a graph break is an error, not a slow path. The whole model in
        # one graph lets the compiler fuse what lies between the blocks (the patch gathers, the
        # decoder's input assembly, the target normalization and the loss), which per block runs
        # eagerly as ~20 separate kernels over [B, N, P] tensors.
        scope = compile_scope_for(compile_scope, strategy=strategy, distributed=dist_info.distributed,
                                  activation_checkpointing=activation_checkpointing)
        if scope == "model":
            model.compile(fullgraph=True, dynamic=False, mode=compile_mode)
        else:
            for blocks in block_lists:
                for block in blocks:
                    block.compile(fullgraph=True, dynamic=False, mode=compile_mode)
    if not dist_info.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for blocks in block_lists:
            for block in blocks:
                fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
    # Every parameter gets a gradient in both modalities, so no unused-parameter search is needed.
    # The buffers are fixed tables (position table, pixel statistics), equal on every rank: no
    # broadcast before each forward (it would be a collective per micro batch, and it would hide
    # the wait for a slow rank inside the forward instead of the step's agreement collective).
    return DDP(model, device_ids=device_ids, broadcast_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP / compile wrappers (FSDP2 shards in place and needs no unwrapping)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def all_reduce_mean(t: torch.Tensor, dist_info: DistInfo) -> torch.Tensor:
    if dist_info.distributed:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist_info.world_size
    return t
