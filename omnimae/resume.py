"""Whether a run folder may be resumed with the config given now, and the run folder's config.json.

A resumed run must compute what the interrupted one would have: the config saved in the checkpoint
(redacted, omnimae.config.to_dict) is compared key by key with the new one.

- Keys that do not change what the run computes resume: logging, checkpoint cadence, pictures,
  profiling, the device, threads, prefetch, storage settings and options, data roots and manifests
  that moved, compile and wrapping. A changed `train.max_steps` / `train.epochs` resumes with one line
  saying where the schedule now ends.
- Every other key (model, masking, augmentation, data set ratios, optimizer, batch, seed, precision)
  is refused in one line listing `key: old -> new`, unless `train.resume=force`, which logs the
  changes and records them in config.json's `resumes`.

Both trainers call `prepare_run_folder`; config.json is written after the decision, never before.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from omnimae import checkpoint as ckpt
from omnimae.config import ConfigError

# Keys (fnmatch patterns over dotted names) whose change leaves the run's numbers as they were.
RESUMABLE = (
    "train.log_every", "train.ckpt_every", "train.keep_last", "train.vis_every", "train.profile_steps",
    "train.max_nonfinite", "train.resume", "train.out_dir", "train.run_name", "train.device",
    "train.max_steps", "train.epochs",
    "data.decode_threads", "data.decode_backend", "data.prefetch", "data.synth_if_missing",
    "data.storage.*", "data.storage_options*", "data.root", "data.*.root", "data.manifest", "data.*.manifest",
    "data.train_manifest", "data.val_manifest",
    "parallel.*", "eval.*",
)
SCHEDULE = ("train.max_steps", "train.epochs")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; storage options stay one value (they are shown by key only)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not key.endswith("storage_options"):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def config_changes(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every key that differs, sorted by key."""
    old, new = flatten(saved), flatten(current)
    missing = object()
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            changes.append((key, None if a is missing else a, None if b is missing else b))
    return changes


def resumable(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE)


def _show(changes) -> str:
    return "; ".join(f"{k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}" for k, a, b in changes)


def check_resume(saved: dict | None, current: dict, *, checkpoint: Path, force: bool) -> list[tuple]:
    """The changes a resume from `checkpoint` accepts; raises ConfigError (one line) for refused ones.

    saved: the checkpoint's config (None: written before configs were saved in the manifest; then
    nothing can be compared and the resume goes ahead, as it did then).
    """
    if saved is None:
        return []
    changes = config_changes(saved, current)
    refused = [c for c in changes if not resumable(c[0])]
    if refused and not force:
        raise ConfigError(
            f"train.resume: {checkpoint} was written with a different config, which would change what the run "
            f"computes: {_show(refused)}. Start a new run (train.run_name=NEW) or resume anyway "
            f"(train.resume=force: the changes are logged and recorded in config.json)")
    return changes


def prepare_run_folder(cfg, run_dir: Path, dist_info, *, derived: dict, extra_json: dict,
                       say) -> Path | None:
    """Picks the checkpoint to resume from (unusable ones set aside), checks the new config against it,
    then writes `<run>/config.json` (rank 0). Returns the checkpoint or None (a fresh start).

    say: prints one line on rank 0. extra_json: more entries for config.json (data set sizes...).
    """
    from omnimae.config import to_dict

    current = to_dict(cfg)
    resume_path = ckpt.find_resume(cfg.train.resume, run_dir, dist_info)
    changes: list[tuple] = []
    if resume_path is not None:
        changes = check_resume(ckpt.saved_config(resume_path), current, checkpoint=resume_path,
                               force=cfg.train.resume == "force")
        computed = [c for c in changes if not resumable(c[0])]
        if computed:
            say(f"resuming with a changed config (train.resume=force): {_show(computed)}")
        if any(k in SCHEDULE for k, _, _ in changes):
            say(f"resuming with a new schedule: it now ends at step {derived['total_steps']}")
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_json = run_dir / "config.json"
        history = []
        if resume_path is not None and config_json.is_file():
            try:
                history = json.loads(config_json.read_text()).get("resumes", [])
            except ValueError:
                history = []
        if resume_path is not None:
            history.append({"checkpoint": resume_path.name, "forced": cfg.train.resume == "force",
                            "changes": [{"key": k, "old": a, "new": b} for k, a, b in changes]})
        resolved = {"config": current, "derived": derived, **extra_json, "resumes": history}
        config_json.write_text(json.dumps(resolved, indent=2, default=str))
    return resume_path


def check_run_folder_writable(run_dir: Path) -> None:
    """A run folder that cannot be created or written is one line now, not a traceback at the first
    checkpoint (rank 0 only: the others may not share the folder's filesystem view yet)."""
    import errno
    import shutil
    import tempfile

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write_check_") as f:
            f.write(b"0" * 4096)
            f.flush()
    except OSError as e:
        where = run_dir
        while not where.exists() and where != where.parent:
            where = where.parent
        free = shutil.disk_usage(where).free if where.exists() else 0
        why = "no space left on device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
        raise ConfigError(f"train.out_dir: cannot write the run folder {run_dir} ({why}; "
                          f"{free / 2**30:.2f} GiB free there)") from None
