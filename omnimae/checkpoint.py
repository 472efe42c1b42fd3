"""Training state: model (unwrapped), optimizer, step, loader positions, RNG states and config, for
exact resume.

A checkpoint is a folder `step_XXXXXXXX/` (state.pt, one loader/RNG file per rank, checkpoint.json
last), written to a temporary folder and renamed, so a crash mid-write never corrupts the latest.
Model weights on their own and the official omnivore checkpoints are in omnimae.weights.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

from omnimae.errors import CheckpointError
from omnimae.weights import clean_name, safe_load

log = logging.getLogger(__name__)

CKPT_PREFIX = "step_"


def _rng_state() -> dict:
    import random

    import numpy as np

    # Tensors and plain containers only, so the file loads with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _model_and_optim_state(model, optimizer, distributed: bool) -> tuple[dict, dict]:
    """Full (unsharded) state dicts; under FSDP2 every rank takes part in the gather."""
    if distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(model, optimizer, options=opts)
    return {clean_name(k): v for k, v in model.state_dict().items()}, optimizer.state_dict()


def _load_model_and_optim_state(model, optimizer, model_state: dict, optim_state: dict) -> None:
    """The inverse of _model_and_optim_state. Under a process group every rank reads the full state
    and keeps its own shard of each tensor (FSDP2 parameters are DTensors, which load_state_dict
    cannot fill from plain tensors)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        return
    model.load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)


MANIFEST = "checkpoint.json"  # written last: a checkpoint without it (or not matching it) is incomplete


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Checkpoint folders in the run folder (step_XXXXXXXX), oldest first; see verify_checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.glob(f"{CKPT_PREFIX}*") if p.is_dir() and p.name[len(CKPT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be used, or None. Checks every file against the manifest
    (size, then SHA-256); a folder from before manifests existed must load (weights_only) instead."""
    path = Path(path)
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        if not (path / "state.pt").is_file():
            return "no checkpoint.json and no state.pt (a write cut short)"
        for file in sorted(path.glob("*.pt")):  # written before manifests: it must at least load
            try:
                safe_load(file)
            except CheckpointError as e:
                return str(e)
        return None
    try:
        manifest = json.loads(manifest_file.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__})"
    for name, want in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != want["bytes"]:
            return f"{name} has {size} bytes, {want['bytes']} were written (torn)"
        if _sha256(file) != want["sha256"]:
            return f"{name} does not match its checksum (damaged)"
    return None


def saved_config(path: Path) -> dict | None:
    """The (redacted) config a checkpoint was written with, from its manifest (None for old ones)."""
    manifest_file = Path(path) / MANIFEST
    if not manifest_file.is_file():
        return None
    return json.loads(manifest_file.read_text()).get("config")


def set_aside(path: Path, why: str) -> Path:
    """Rename an unusable checkpoint out of the way (never delete: a person may want it) and warn."""
    target = path.with_name(path.name + ".unusable")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.unusable{n}")
    path.rename(target)
    log.warning("checkpoint %s is unusable (%s): set aside as %s; resuming from the one before",
                path, why, target.name)
    return target


def find_resume(resume: str, run_dir: Path, dist_info=None) -> Path | None:
    """The checkpoint to resume from. auto / force: the latest usable one in the run folder (None if
    there is none); unusable newer ones are set aside (renamed) with a warning. never: None. A path:
    that checkpoint, which must be usable. Rank 0 decides; every rank gets its answer."""
    if resume == "never":
        return None
    if dist_info is None or dist_info.is_main:
        answer: Path | None | CheckpointError
        try:
            answer = _choose_resume(resume, Path(run_dir))
        except CheckpointError as e:
            answer = e
    else:
        answer = None
    if dist_info is not None and dist_info.distributed:
        import torch.distributed as dist

        shared = [answer]
        dist.broadcast_object_list(shared, src=0)  # sync: once, at start
        answer = shared[0]
    if isinstance(answer, CheckpointError):
        raise answer
    return answer


def _choose_resume(resume: str, run_dir: Path) -> Path | None:
    if resume in ("auto", "force"):
        found = checkpoint_dirs(run_dir)
        set_aside_names = []
        for path in reversed(found):
            why = verify_checkpoint(path)
            if why is None:
                return path
            set_aside_names.append(set_aside(path, why).name)
        if set_aside_names:
            raise CheckpointError(
                f"train.resume: no usable checkpoint in {run_dir} (set aside: {', '.join(set_aside_names)}); "
                f"rerun to start this run afresh, or resume one of them by hand with train.resume=PATH")
        return None
    path = Path(resume)
    if not (path.is_dir() and ((path / MANIFEST).is_file() or (path / "state.pt").is_file())):
        raise CheckpointError(f"train.resume: no checkpoint at {path} (expected a step_XXXXXXXX folder)")
    why = verify_checkpoint(path)
    if why is not None:
        raise CheckpointError(f"train.resume: the checkpoint {path} is unusable: {why}")
    return path


def _save(obj, file: Path, files: dict) -> None:
    torch.save(obj, file)
    files[file.name] = {"bytes": file.stat().st_size, "sha256": _sha256(file)}


def _write_failure(tmp: Path, error: BaseException) -> CheckpointError:
    """One line for a checkpoint write that failed (a full disk above all); the partial one removed."""
    free = shutil.disk_usage(tmp.parent).free if tmp.parent.exists() else 0
    shutil.rmtree(tmp, ignore_errors=True)
    no_space = (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        free < (64 << 20) or "No space left" in str(error)
    what = "no space left on device" if no_space else \
        (str(error).strip().splitlines() or [type(error).__name__])[0]
    return CheckpointError(f"checkpoint: could not write {tmp.parent} ({what}; {free / 2**30:.2f} GiB free); "
                           f"the partial checkpoint was removed, the previous ones are intact")


def save_training_state(run_dir: Path, *, step: int, model, optimizer, loader, config: dict, dist_info,
                        keep_last: int, extra: dict | None = None) -> Path:
    """Saves `run_dir/step_<step>/` (state.pt + one loader file per rank + checkpoint.json, last);
    returns its path.

    All ranks must call it (loader positions and FSDP2 shards are gathered); rank 0 writes the model.
    loader: a loaders.protocol.Loader (its state_dict() is this rank's position), or None: no loader state.
    config: the redacted config (omnimae.config.to_dict), kept in state.pt and the manifest so that a
    resume can compare it. extra: {name: object with state_dict()} saved beside the model, e.g. a
    fine-tuning run's weight EMA; their states must be the same on every rank (rank 0's is written).
    A failed write (full disk) removes the partial folder and raises CheckpointError on every rank.
    """
    import torch.distributed as dist

    run_dir = Path(run_dir)
    final = run_dir / f"{CKPT_PREFIX}{step:08d}"
    tmp = run_dir / f".tmp_{CKPT_PREFIX}{step:08d}"
    model_state, optim_state = _model_and_optim_state(model, optimizer, dist_info.distributed)
    loader_state = loader.state_dict() if loader is not None else None
    loader_states = [loader_state]
    rng_states = [_rng_state()]
    if dist_info.distributed:
        loader_states = [None] * dist_info.world_size
        rng_states = [None] * dist_info.world_size
        dist.all_gather_object(loader_states, loader_state)
        dist.all_gather_object(rng_states, _rng_state())
    failure: CheckpointError | None = None
    if dist_info.is_main:
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            files: dict = {}
            state = {"step": step, "model": model_state, "optimizer": optim_state, "config": config,
                     "world_size": dist_info.world_size}
            if extra:
                state["extra"] = {name: obj.state_dict() for name, obj in extra.items()}
            _save(state, tmp / "state.pt", files)
            for rank, (ls, rs) in enumerate(zip(loader_states, rng_states)):
                _save({"loader": ls, "rng": rs}, tmp / f"rank_{rank:05d}.pt", files)
            manifest = {"step": step, "world_size": dist_info.world_size, "files": files, "config": config}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)  # atomic on POSIX: readers see the old or the new checkpoint, never half
        except (OSError, RuntimeError) as e:  # torch reports a full disk as RuntimeError ("unexpected pos")
            failure = _write_failure(tmp, e)
        if failure is None:
            for old in checkpoint_dirs(run_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    if dist_info.distributed:
        shared = [None if failure is None else str(failure)]
        dist.broadcast_object_list(shared, src=0)  # every rank stops together on a failed write
        if shared[0] is not None:
            failure = CheckpointError(shared[0])
    if failure is not None:
        raise failure
    return final


def load_training_state(path: Path, *, model, optimizer, loader, rank: int = 0,
                        extra: dict | None = None) -> int:
    """Restores what save_training_state wrote; returns the step to continue from.

    loader: a loaders.protocol.Loader (load_state_dict() gets this rank's saved position), or None.
    extra: {name: object with load_state_dict()}, the same names as given to save_training_state.
    """
    path = Path(path)
    state = safe_load(path / "state.pt")
    _load_model_and_optim_state(model, optimizer, state["model"], state["optimizer"])
    for name, obj in (extra or {}).items():
        if name not in state.get("extra", {}):
            raise KeyError(f"{path / 'state.pt'}: no saved state for {name!r} "
                           f"(has: {sorted(state.get('extra', {}))})")
        obj.load_state_dict(state["extra"][name])
    rank_file = path / f"rank_{rank:05d}.pt"
    if not rank_file.is_file():
        raise CheckpointError(f"{path} was written by {state['world_size']} ranks: resuming with a different "
                              f"world size is not supported (use a new train.run_name)")
    rank_state = safe_load(rank_file)
    if loader is not None and rank_state["loader"] is not None:
        loader.load_state_dict(rank_state["loader"])
    _set_rng_state(rank_state["rng"])
    return int(state["step"])
