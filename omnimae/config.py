"""Typed experiment configuration: defaults < YAML file < `key.sub=value` overrides.

Every field carries a one-line docstring (the string literal under it), shown by
`omnimae-train --help-config`. An unknown key, a wrong type or an impossible value stops the run with
one line that names the full key, e.g. `config: train.batch_size: expected int, got 'big'`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loaders.redact import redact
from omnimae.errors import RunError
from omnimae.modalities import MODALITIES


class ConfigError(RunError, ValueError):
    """A bad key or value; the message names the full key."""


# Sections and section bases shared by both config trees (the fine-tuning tree, omnimae.finetune.config,
# builds on them). A base's fields sit at the top level of the section (data.window_s, data.storage.*):
# inheritance keeps the keys flat. Each tree sets its own defaults where they differ.


@dataclass
class EncoderConfig:
    """The encoder's size and input shape: the model keys both trees share."""

    name: str = "base"
    """Model size: debug, small, base, large or huge (the table in docs/design.md)."""
    img_size: int = 224
    """Crop side in pixels the position table is built for."""
    num_frames: int = 16
    """Frames per video clip the position table is built for."""


@dataclass
class ModelConfig(EncoderConfig):
    """The pretraining model: the encoder keys plus the loss target."""

    norm_pix_loss: bool = True
    """Targets are pixels normalized per patch and colour channel (the paper); False = raw pixels."""
    decoder_heads: int = 0
    """Decoder attention heads; 0 = the size's own (the paper's and the official weights': 16 for
    base). A speed option, not the recipe: base's 384-wide decoder as 6 heads of dim 64 has the same
    FLOPs and suits GPU attention kernels better than 16 of dim 24 (docs/design.md)."""


@dataclass
class SourceConfig:
    """A data set and how samples are cut from its items: the keys every data set of both trees has."""

    root: str = ""
    """Data set folder or fsspec URL (s3://, gs://, http(s)://); empty = not used."""
    replication: int = 1
    """Sample replication t: each decoded item becomes t samples, each with its own crop (and mask)."""
    crop_scale: tuple[float, float] = (0.2, 1.0)
    """RandomResizedCrop area range."""
    flip_p: float = 0.0
    """Horizontal flip probability (0 for SSv2: its labels name left and right)."""


@dataclass
class DatasetConfig(SourceConfig):
    """One pretraining data set: a source plus its manifest, masking and share of an epoch."""

    manifest: str = ""
    """Manifest (JSON lines); empty = <root>/manifest_<split>.jsonl."""
    split: str = "train"
    """Split whose manifest is read."""
    mask_ratio: float = 0.9
    """Share of tokens hidden from the encoder."""
    mask_type: str = "random"
    """Masking pattern: random, tube, causal or frame."""
    repeat: float = 1.0
    """Data set ratio in an epoch (paper Fig. 5c): each item counts this many times."""


@dataclass
class StorageConfig:
    """The storage reader: one per process, shared by every data set (loaders.storage.AsyncReader)."""

    max_in_flight: int = 64
    """Storage requests in flight per process, all data sets together (hedges included)."""
    timeout_s: float = 30.0
    """Limit on one request; a request past it is retried (transient)."""
    retries: int = 3
    """Further tries of a read after a transient failure (timeout, reset, 5xx), with backoff."""
    backoff_max_s: float = 5.0
    """Longest wait between two tries; during an outage, the longest time before a held read notices
    the store is back (a few seconds: prompt recovery, no request storm on a store coming back)."""
    hedge_after_s: float = 0.0
    """Send a second request for a read still out after this many seconds (first answer wins); 0 = off.
    Off by default: a fixed threshold doubles every request of a store that is uniformly slow (large
    clips, thin link), exactly when storage is the bottleneck. Set it to about the reads' p99 latency
    (summary.json: loader.*.reader.latency_p99_s) on an object store with stragglers."""
    max_failure_share: float = 0.1
    """Stop the run when more than this share of the last 200 reads failed (missing or unreadable
    objects; an outage is not counted, see outage_s)."""
    outage_s: float = 300.0
    """When every request fails (store down, DNS, a 5xx storm), reads are held and retried, nothing is
    skipped, for up to this many seconds without a successful read; then the run stops."""
    shard_reads: int = 4
    """Sharded data sets: whole-shard reads in flight per data set, through a reader of its own (about
    the storage bandwidth x latency / shard size; memory: data.shard_buffer + this many shards)."""


@dataclass
class ReadConfig:
    """How items are read and decoded: the `data` keys both trees share."""

    window_s: float = 2.7
    """Clip window in seconds over which the frames are spread (~6 FPS for 16 frames; K400: 2.0)."""
    short_side: int = 256
    """Decoded frames are resized so their short side has this many pixels (before the random crop)."""
    decode_backend: str = "auto"
    """Video decoder: auto (the fastest in the committed GPU table of benchmarks/gpu_decode_check.py
    for this GPU and codec; PyAV without a table and on the CPU), pyav, nvdec (PyNvVideoCodec, one
    reused NVDEC decoder per thread), or dali (NVDEC on a GPU, its CPU decoder for VP8/VP9 otherwise)."""
    decode_threads: int = 2
    """Decoder threads per process (PyAV videos decoded at once): about the CPU cores per GPU."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """The storage reader (one per process, training and test reads alike): requests in flight,
    timeouts, retries, hedging, failure budget, outages."""
    prefetch: int = 2
    """Training batches decoded ahead of the step."""
    synth_if_missing: str = ""
    """Generate this synthetic set (demo) at the data roots if their manifests are missing; empty = off."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec storage options (never logged)."""


@dataclass
class DataConfig(ReadConfig):
    # The paper's recipes: images are DatasetConfig's defaults (mask 0.9, crop 0.2-1) with flips.
    image: DatasetConfig = field(default_factory=lambda: DatasetConfig(flip_p=0.5))
    """The image data set (ImageNet layout)."""
    video: DatasetConfig = field(default_factory=lambda: DatasetConfig(
        replication=4, mask_ratio=0.95, crop_scale=(0.08, 1.0)))
    """The video data set (SSv2 layout)."""
    shard_buffer: int = 4
    """Sharded data sets (a root with shards_<split>.jsonl): shards open at once per data set, their
    items mixed; the shard order is shuffled every epoch."""


@dataclass
class OptimConfig:
    """AdamW and its schedule: the keys both trees share (fine-tuning adds layer decay and the EMA)."""

    lr: float = 3e-4
    """Peak learning rate at `lr_batch` samples per step; scaled linearly with the global batch."""
    lr_batch: int = 2048
    """Global batch the peak learning rate refers to (the paper's batch for the recipe)."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine (at lr_batch; scaled like lr)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    weight_decay: float = 0.05
    """AdamW weight decay (none on biases, norms and the mask token)."""
    warmup_epochs: float = 40.0
    """Linear warmup length in epochs."""
    clip_grad: float = 0.0
    """Gradient norm clipping; 0 = off."""


@dataclass
class ParallelConfig:
    strategy: str = "ddp"
    """Multi-process wrapping: ddp or fsdp (FSDP2, fully_shard per block)."""
    activation_checkpointing: bool = False
    """Recompute block activations in the backward pass to save memory."""
    compile: bool = True
    """torch.compile the model (static shapes, fullgraph)."""
    compile_scope: str = "auto"
    """What one compiled graph holds: model (the whole forward and loss), blocks (each transformer
    block alone) or auto (model; blocks with parallel.strategy=fsdp or activation checkpointing)."""
    compile_mode: str = "default"
    """torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune or
    max-autotune-no-cudagraphs."""
    attention: str = "auto"
    """SDPA kernel: auto (on a GPU the kernels are timed on each attention shape at start-up and the
    fastest kept; on the CPU PyTorch's choice), default (PyTorch's choice), cudnn, flash, efficient
    or math."""


@dataclass
class RunConfig:
    """The loop settings pretraining and fine-tuning share (each tree sets its own defaults)."""

    batch_size: int = 2048
    """Global batch in samples (replicas counted) per optimizer step."""
    micro_batch: int = 0
    """Samples per rank per forward pass; 0 = global batch / world size (no accumulation)."""
    epochs: float = 800.0
    """Training length in epochs (an epoch is every sample of the data sets, replicas counted)."""
    max_steps: int = 0
    """Stop after this many optimizer steps; 0 = run the epochs."""
    seed: int = 0
    """Seed for the data order, crops, masks or mixing, and initialization."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    precision: str = "auto"
    """auto (bf16 on GPUs, fp32 on the CPU), bf16 or fp32."""
    log_every: int = 20
    """Optimizer steps between metric lines (and host syncs)."""
    ckpt_every: int = 1000
    """Optimizer steps between checkpoints; 0 = only at the end."""
    keep_last: int = 3
    """Checkpoints kept."""
    resume: str = "auto"
    """auto (latest usable checkpoint in the run folder; refuses a config that changes what the run
    computes), force (the same, accepting such changes: they are logged and recorded), never, or a
    checkpoint path."""
    out_dir: str = "runs"
    """Folder holding run folders."""
    run_name: str = ""
    """Run folder name; empty = the config file's stem."""
    profile_steps: int = 0
    """Record a torch.profiler trace of this many steps (0 = off); under torchrun on every rank."""


@dataclass
class TrainConfig(RunConfig):
    """The pretraining loop: RunConfig plus pictures and the non-finite guard."""

    vis_every: int = 0
    """Optimizer steps between reconstruction pictures; 0 = only at the end."""
    max_nonfinite: int = 10
    """Consecutive non-finite losses before the run stops with diagnostics."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data path."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimizer and schedule."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Distribution, compile and memory."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The loop."""


# ---------------------------------------------------------------------------------------------------
# Merging and validation


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Checks `value` against the type hint and converts what YAML can't tell apart (int -> float)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `run_name=nan` or `run_name=2024`: YAML read a number, a name was meant
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint}")


# Keys that moved, old -> new (both trees): refused with a line naming the new key, not guessed.
MOVED_KEYS = {"data.max_in_flight": "data.storage.max_in_flight"}


def merge(obj: Any, updates: dict[str, Any], prefix: str = "") -> Any:
    """Returns a copy of dataclass `obj` with nested `updates` applied and type-checked."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {updates!r}")
    hints = _hints(type(obj))
    changes = {}
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if key in MOVED_KEYS:
            raise ConfigError(f"{key}: moved to {MOVED_KEYS[key]}")
        if name not in hints:
            known = ", ".join(hints)
            raise ConfigError(f"{key}: unknown key (known here: {known})")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            changes[name] = merge(current, value, key + ".")
        else:
            changes[name] = _coerce(value, hints[name], key)
    return dataclasses.replace(obj, **changes)


def parse_override(text: str) -> dict[str, Any]:
    """`a.b.c=value` -> {"a": {"b": {"c": value}}}; the value is parsed as YAML (`1e-3`, `[1, 2]`)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    path, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {path.strip()}: the value {raw!r} does not parse as YAML "
                          f"({getattr(e, 'problem', None) or type(e).__name__}); quote it if a string is meant") from None
    value = _yaml_number(raw, value)
    out: dict[str, Any] = {}
    node = out
    parts = path.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _yaml_number(raw: str, value: Any) -> Any:
    """YAML 1.1 reads `3e-4` as a string; users mean a float."""
    if isinstance(value, str):
        try:
            return float(raw)
        except ValueError:
            return value
    return value


def _deep_update(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


def load_config(path: str | Path | None, overrides: list[str] = (), *, base: Any = None,
                check=None) -> Any:
    """Defaults < YAML file < overrides, validated. Raises ConfigError with one line.

    base / check: another config tree (its defaults) and its validator; the pretraining Config and
    `validate` by default (omnimae.finetune reads its own tree with the same rules).
    """
    updates: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        with open(path) as f:
            try:
                loaded = yaml.load(f, Loader=_FloatLoader) or {}
            except yaml.YAMLError as e:
                raise ConfigError(_yaml_error_line(path, e)) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        updates = loaded
    for text in overrides:
        _deep_update(updates, parse_override(text))
    cfg = merge(Config() if base is None else base, updates)
    if path is not None and not cfg.train.run_name:
        cfg.train.run_name = Path(path).stem
    (validate if check is None else check)(cfg)
    return cfg


def _yaml_error_line(path: Path, error: yaml.YAMLError) -> str:
    """`file:line:col: what` (1-based, as editors count) for a YAML syntax error."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    what = " ".join(str(p) for p in (getattr(error, "context", None), getattr(error, "problem", None)) if p)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    return f"{where}: YAML syntax error: {what or type(error).__name__}"


class _FloatLoader(yaml.SafeLoader):
    """SafeLoader that reads `3e-4` as a float (YAML 1.1 requires a dot)."""


_FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    __import__("re").compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


SIZES = ("debug", "small", "base", "large", "huge")  # omnimae.model.SIZES (test_config checks they agree)
RESUME_MODES = ("auto", "never", "force")
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
MASK_TYPES = ("random", "tube", "causal", "frame")
COMPILE_SCOPES = ("auto", "model", "blocks")
DECODE_BACKENDS = ("auto", "dali", "pyav", "nvdec")  # loaders.decode.BACKENDS (test_config checks)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ATTENTION_SETTINGS = ("auto", "default", "cudnn", "flash", "efficient", "math")  # omnimae.attention


def patch_side(size: str) -> int:
    """Spatial patch side of model size `size`, as omnimae.model.SIZES builds it (this module stays
    torch-free: the model is not imported; test_config checks the two agree)."""
    return 14 if size == "huge" else 16


def need(ok: bool, key: str, why: str) -> None:
    """Raises the one-line ConfigError for `key` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {why}")


# The checks of the shared sections, one function each; each tree's validator calls them and checks
# its own keys.


def validate_model(model: EncoderConfig) -> None:
    """The encoder keys (`model.*`)."""
    need(model.name in SIZES, "model.name", f"expected one of {', '.join(SIZES)}, got {model.name!r}")
    patch = patch_side(model.name)
    need(model.img_size > 0 and model.img_size % patch == 0,
         "model.img_size", f"must be a positive multiple of the patch size ({patch})")
    need(model.num_frames > 0 and model.num_frames % 2 == 0, "model.num_frames",
         "must be a positive even number (temporal patch 2)")


def validate_source(source: SourceConfig, key: str, batch_size: int | None) -> None:
    """A data set's shared keys (`key`: where it sits). batch_size: the global batch its replicas
    must divide; None = the data set is not used."""
    need(source.replication >= 1, f"{key}.replication", "must be >= 1")
    if batch_size is not None:
        need(batch_size % source.replication == 0, f"{key}.replication",
             f"must divide train.batch_size ({batch_size})")
    lo, hi = source.crop_scale
    need(0 < lo <= hi <= 1, f"{key}.crop_scale", "must satisfy 0 < low <= high <= 1")
    need(0 <= source.flip_p <= 1, f"{key}.flip_p", "must be in [0, 1]")


def validate_read(data: ReadConfig) -> None:
    """The read and decode keys (`data.*`, `data.storage.*`)."""
    need(data.window_s > 0, "data.window_s", "must be > 0")
    need(data.decode_backend in DECODE_BACKENDS, "data.decode_backend",
         f"expected {', '.join(DECODE_BACKENDS[:-1])} or {DECODE_BACKENDS[-1]}")
    validate_storage(data.storage, "data.storage")
    need(data.prefetch >= 1, "data.prefetch", "must be >= 1")


def validate_storage(storage: StorageConfig, key: str) -> None:
    """The reader's settings, in every config tree (`key`: where the section sits)."""
    need(storage.max_in_flight >= 1, f"{key}.max_in_flight", "must be >= 1")
    need(storage.timeout_s > 0, f"{key}.timeout_s", "must be > 0")
    need(storage.retries >= 0, f"{key}.retries", "must be >= 0")
    need(storage.backoff_max_s > 0, f"{key}.backoff_max_s", "must be > 0")
    need(storage.hedge_after_s >= 0, f"{key}.hedge_after_s", "must be >= 0 (0 = off)")
    need(0 <= storage.max_failure_share <= 1, f"{key}.max_failure_share", "must be in [0, 1]")
    need(storage.outage_s > 0, f"{key}.outage_s", "must be > 0")
    need(storage.shard_reads >= 1, f"{key}.shard_reads", "must be >= 1")


def validate_optim(optim: OptimConfig) -> None:
    """The shared optimizer keys (`optim.*`)."""
    need(optim.lr > 0, "optim.lr", "must be > 0")
    need(optim.lr_batch >= 1, "optim.lr_batch", "must be >= 1")
    need(optim.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")


def validate_run(train: RunConfig, parallel: ParallelConfig) -> None:
    """The checks every config tree's `train` and `parallel` sections share."""
    need(parallel.strategy in ("ddp", "fsdp"), "parallel.strategy", "expected ddp or fsdp")
    need(parallel.compile_scope in COMPILE_SCOPES, "parallel.compile_scope",
         f"expected {', '.join(COMPILE_SCOPES)}, got {parallel.compile_scope!r}")
    need(not (parallel.compile_scope == "model" and parallel.strategy == "fsdp"), "parallel.compile_scope",
         "model cannot be used with parallel.strategy=fsdp (FSDP2 shards per block: use blocks or auto)")
    need(not (parallel.compile_scope == "model" and parallel.activation_checkpointing),
         "parallel.compile_scope", "model cannot be used with parallel.activation_checkpointing "
         "(the checkpoints wrap each block: use blocks or auto)")
    need(parallel.compile_mode in COMPILE_MODES, "parallel.compile_mode",
         f"expected {', '.join(COMPILE_MODES)}, got {parallel.compile_mode!r}")
    need(parallel.attention in ATTENTION_SETTINGS, "parallel.attention",
         f"expected {', '.join(ATTENTION_SETTINGS)}, got {parallel.attention!r}")
    need(train.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(train.micro_batch >= 0, "train.micro_batch", "must be >= 0")
    need(train.epochs > 0 or train.max_steps > 0, "train.epochs", "must be > 0 (or set train.max_steps)")
    need(train.log_every >= 1, "train.log_every", "must be >= 1")
    need(train.precision in ("auto", "bf16", "fp32"), "train.precision", "expected auto, bf16 or fp32")
    need(train.keep_last >= 1, "train.keep_last", "must be >= 1")
    need(train.max_steps >= 0, "train.max_steps", "must be >= 0 (0 = run train.epochs)")
    need(train.epochs >= 0, "train.epochs", "must be >= 0")
    need(train.ckpt_every >= 0, "train.ckpt_every", "must be >= 0 (0 = only at the end)")
    need(train.profile_steps >= 0, "train.profile_steps", "must be >= 0")
    need(train.resume != "", "train.resume", f"expected {', '.join(RESUME_MODES)} or a checkpoint path")
    need(_DEVICE.fullmatch(train.device) is not None, "train.device",
         f"expected auto, cpu, cuda or cuda:N, got {train.device!r}")


def validate(cfg: Config) -> None:
    """Impossible values, each named by its full key."""

    validate_model(cfg.model)
    any_data = False
    for name in MODALITIES:
        ds: DatasetConfig = getattr(cfg.data, name)
        key = f"data.{name}"
        any_data |= bool(ds.root)
        validate_source(ds, key, cfg.train.batch_size if ds.root else None)
        need(0.0 <= ds.mask_ratio < 1.0, f"{key}.mask_ratio", "must be in [0, 1)")
        need(ds.mask_type in MASK_TYPES, f"{key}.mask_type", f"expected one of {', '.join(MASK_TYPES)}")
        need(ds.repeat > 0, f"{key}.repeat", "must be > 0")
    need(any_data, "data", "set data.image.root and/or data.video.root")
    need(cfg.data.shard_buffer >= 1, "data.shard_buffer", "must be >= 1")
    validate_read(cfg.data)
    validate_optim(cfg.optim)
    validate_run(cfg.train, cfg.parallel)
    need(cfg.train.vis_every >= 0, "train.vis_every", "must be >= 0")
    need(cfg.model.decoder_heads >= 0, "model.decoder_heads", "must be >= 0 (0 = the model size's own)")


# ---------------------------------------------------------------------------------------------------
# Derived values


def batch_arithmetic(*, world_size: int, global_batch: int, micro_batch: int, replications: dict[str, int],
                     samples_per_epoch: float, epochs: float, max_steps: int, warmup_epochs: float,
                     lr: float, min_lr: float, lr_batch: int) -> dict[str, Any]:
    """Every derived number of a run, from plain numbers: both trees' `derive` is this.

    micro_batch: samples per rank per forward pass, 0 = the per-rank batch. replications: {full key
    of a replication setting: t}; each t must divide the micro batch (a decoded item's replicas stay
    in one forward pass). samples_per_epoch: replicas counted. max_steps: 0 = run the epochs.
    lr and min_lr are at lr_batch samples per step and scale linearly with the global batch.
    """
    if global_batch % world_size:
        raise ConfigError(f"train.batch_size: {global_batch} is not divisible by the world size {world_size}")
    per_rank = global_batch // world_size
    micro = micro_batch or per_rank
    if per_rank % micro:
        raise ConfigError(f"train.micro_batch: {micro} does not divide the per-rank batch {per_rank}")
    for key, rep in replications.items():
        if micro % rep:
            raise ConfigError(f"{key}: {rep} does not divide the micro batch {micro}")
    steps_per_epoch = max(1, math.floor(samples_per_epoch / global_batch))
    total_steps = max_steps or max(1, round(epochs * steps_per_epoch))
    return {
        "world_size": world_size,
        "global_batch": global_batch,
        "per_rank_batch": per_rank,
        "micro_batch": micro,
        "accumulation_steps": per_rank // micro,
        "lr": lr * global_batch / lr_batch,
        "min_lr": min_lr * global_batch / lr_batch,
        "samples_per_epoch": samples_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "warmup_steps": min(total_steps, round(warmup_epochs * steps_per_epoch)),
    }


def run_numbers(train: RunConfig, optim: OptimConfig) -> dict[str, Any]:
    """The arguments of `batch_arithmetic` that sit in the shared train and optim sections."""
    return dict(global_batch=train.batch_size, micro_batch=train.micro_batch, epochs=train.epochs,
                max_steps=train.max_steps, warmup_epochs=optim.warmup_epochs, lr=optim.lr,
                min_lr=optim.min_lr, lr_batch=optim.lr_batch)


def derive(cfg: Config, *, world_size: int, dataset_sizes: dict[str, int]) -> dict[str, Any]:
    """Values computed from the config in one logged place (`batch_arithmetic`).

    dataset_sizes: {"image": items, "video": items} as listed by the manifests (before replication).
    """
    sets = {name: getattr(cfg.data, name) for name in dataset_sizes}
    # An epoch is all samples of both data sets, replicas counted (paper 4.2): replication keeps the
    # number of updates, it only reads fewer items.
    return batch_arithmetic(
        world_size=world_size, **run_numbers(cfg.train, cfg.optim),
        replications={f"data.{name}.replication": ds.replication for name, ds in sets.items()},
        samples_per_epoch=sum(n * sets[name].repeat for name, n in dataset_sizes.items()))


HIDDEN = "<hidden>"
SECRET_FIELDS = frozenset({"storage_options"})  # mappings whose values are shown as HIDDEN, by key


def to_dict(cfg: Any) -> dict[str, Any]:
    """Any config tree as plain data with every secret removed: what is printed (`config:`,
    --print-config), written (config.json) and saved (checkpoints). Storage options keep their keys
    with `<hidden>` values; every string loses URL userinfo and signed-URL queries (loaders.redact)."""
    return _redacted(dataclasses.asdict(cfg))


def _redacted(node: Any, name: str = "") -> Any:
    if isinstance(node, dict):
        if name in SECRET_FIELDS:
            return {str(k): HIDDEN for k in node}
        return {k: _redacted(v, k) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_redacted(v) for v in node)
    if isinstance(node, str):
        return redact(node)
    return node


def describe(obj: Any = None, prefix: str = "") -> list[str]:
    """One line per field: full key, default, docstring (for --help-config)."""
    import ast
    import inspect

    obj = Config() if obj is None else obj
    cls = type(obj)
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):  # base fields too
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = str(nxt.value.value)
    lines = []
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{prefix}{f.name}: {docs.get(f.name, '')}")
            lines += describe(value, f"{prefix}{f.name}.")
        else:
            lines.append(f"  {prefix}{f.name} = {value!r}  # {docs.get(f.name, '')}")
    return lines
