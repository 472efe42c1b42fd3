"""Fine-tuning configuration: its own dataclass tree on the pretraining config machinery.

Same rules as `omnimae.config` (defaults < YAML file < `key.sub=value` overrides, one-line errors
naming the full key, `--help-config` from the field docstrings); `load_config`, `describe` and
`derive` are the pretraining ones. Defaults are the paper's ViT-B SSv2 recipe
(Table 5, left); configs/ft_*.yaml hold what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnimae.config import (SIZES, Config, DataConfig, DatasetConfig, OptimConfig, ParallelConfig, RunConfig,
                            StorageConfig, derive, load_config, need, validate_run, validate_storage)

MODALITIES = ("image", "video")


@dataclass
class FtModelConfig:
    name: str = "base"
    """Model size: debug, small, base, large or huge (DESIGN.md's table)."""
    img_size: int = 224
    """Crop side in pixels."""
    num_frames: int = 16
    """Frames per video clip."""
    num_classes: int = 0
    """Classes of the head; 0 = the train manifest's (its class_names, else the largest label + 1)."""
    drop_path: float = 0.1
    """Stochastic depth rate of the last block (paper: 0.1 ViT-B, 0.2 ViT-L/H), linear from 0."""
    pretrained: str = ""
    """Starting weights: a weight file, a run's step_XXXXXXXX/ folder or an official checkpoint; empty = random."""


@dataclass
class FtDataConfig:
    modality: str = "video"
    """What the data set holds: image or video."""
    root: str = ""
    """Data set folder or fsspec URL (s3://, gs://, http(s)://)."""
    train_manifest: str = ""
    """Training manifest (JSON lines); empty = <root>/manifest_train.jsonl."""
    val_manifest: str = ""
    """Test manifest; empty = <root>/manifest_val.jsonl."""
    replication: int = 1
    """Sample replication t: each decoded item becomes t samples with their own crop (K400: 2)."""
    crop_scale: tuple[float, float] = (0.08, 1.0)
    """RandomResizedCrop area range."""
    flip_p: float = 0.0
    """Horizontal flip probability (0 for SSv2: its labels name left and right)."""
    interpolation: str = "bicubic"
    """RandomResizedCrop interpolation, bilinear or bicubic (the paper fine-tunes with bicubic)."""
    window_s: float = 2.7
    """Clip window in seconds (SSv2 2.7, K400 2.0)."""
    short_side: int = 256
    """Training frames are decoded with this short side before the random crop."""
    decode_backend: str = "auto"
    """Video decoder: auto, dali or pyav."""
    decode_threads: int = 2
    """Decoder threads per process."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """The storage reader, shared by training and test reads (as in pretraining's data.storage)."""
    prefetch: int = 2
    """Training batches decoded ahead of the step."""
    synth_if_missing: str = ""
    """Generate this synthetic set (demo) at the root if its manifests are missing; empty = off."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec storage options (never logged)."""


@dataclass
class AugmentConfig:
    rand_augment_ops: int = 4
    """RandAugment operations per sample (paper: images 2, SSv2 4, K400 2); 0 = off."""
    rand_augment_magnitude: int = 7
    """RandAugment magnitude on a 0..10 scale (images and K400 9, SSv2 7)."""
    rand_augment_magnitude_std: float = 0.5
    """Each op's magnitude is drawn from N(magnitude, std) (timm's mstd, pytorchvideo: 0.5); 0 = fixed."""
    random_erasing: float = 0.25
    """Probability of erasing one random box per sample (one box for all frames of a clip)."""
    mixup: float = 0.8
    """Mixup alpha; 0 = off."""
    cutmix: float = 1.0
    """CutMix alpha; 0 = off."""
    mixup_switch_prob: float = 0.5
    """Chance that a mixed batch uses CutMix rather than mixup (when both are on)."""
    mixup_prob: float = 1.0
    """Chance that a batch is mixed at all."""
    label_smoothing: float = 0.1
    """Label smoothing of the soft targets."""


@dataclass
class FtOptimConfig:
    lr: float = 1e-3
    """Peak learning rate at `lr_batch` samples per step; scaled linearly with the global batch."""
    lr_batch: int = 512
    """Global batch the peak learning rate refers to (the paper's batch for the recipe)."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine (at lr_batch; scaled like lr)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 0.05
    """AdamW weight decay (none on biases and norms)."""
    layer_decay: float = 0.75
    """Layer-wise LR decay: block i trains at lr * decay ** (depth - i) (0.65 ViT-B images, else 0.75)."""
    warmup_epochs: float = 5.0
    """Linear warmup length in epochs."""
    clip_grad: float = 0.0
    """Gradient norm clipping; 0 = off."""
    ema_decay: float = 0.9999
    """Weight EMA decay per step (paper: EMA 1e-4, i.e. 0.9999); 0 = no EMA."""


PROBE_POOLS = ("mean", "time")  # omnimae.finetune.evaluate.pool_tokens


@dataclass
class EvalConfig:
    every: int = 0
    """Optimizer steps between test evaluations; 0 = only at the end."""
    num_clips: int = 5
    """Video test clips spread over each video (paper: 5); 1 = the centre clip."""
    num_crops: int = 3
    """Spatial crops per clip along the long side (paper: 3 for video); images always use 1."""
    crop_ratio: float = 0.875
    """Images: short side resized to img_size / crop_ratio before the centre crop (MAE's eval)."""
    batch_size: int = 8
    """Test items per forward pass per process (each gives num_clips x num_crops views)."""
    max_items: int = 0
    """Test at most this many items (a quick check); 0 = the whole test manifest."""
    probe_pool: str = "mean"
    """--probe features: mean (over all tokens) or time (per temporal slot, in order: for classes that
    need the direction of time, which a mean over all tokens cannot see)."""


@dataclass
class FinetuneConfig:
    model: FtModelConfig = field(default_factory=FtModelConfig)
    """The classifier and its starting weights."""
    data: FtDataConfig = field(default_factory=FtDataConfig)
    """The labelled data set."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Augmentation and mixing on the device."""
    optim: FtOptimConfig = field(default_factory=FtOptimConfig)
    """The optimizer, schedule and EMA."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """The test protocol."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Distribution, compile and memory (as in pretraining)."""
    train: RunConfig = field(default_factory=lambda: RunConfig(batch_size=512, epochs=40.0, keep_last=2))
    """The loop (the pretraining loop's settings, fine-tuning defaults)."""


def load_finetune_config(path: str | Path | None, overrides: list[str] = ()) -> FinetuneConfig:
    """Defaults < YAML file < overrides, validated. Raises ConfigError with one line."""
    return load_config(path, overrides, base=FinetuneConfig(), check=validate)


def validate(cfg: FinetuneConfig) -> None:
    """Impossible values, each named by its full key."""

    m, d, a, o, e, t = cfg.model, cfg.data, cfg.augment, cfg.optim, cfg.eval, cfg.train
    need(m.name in SIZES, "model.name", f"expected one of {', '.join(SIZES)}, got {m.name!r}")
    patch = 14 if m.name == "huge" else 16
    need(m.img_size > 0 and m.img_size % patch == 0, "model.img_size",
         f"must be a positive multiple of the patch size ({patch})")
    need(m.num_frames > 0 and m.num_frames % 2 == 0, "model.num_frames", "must be a positive even number")
    need(m.num_classes >= 0, "model.num_classes", "must be >= 0 (0 = from the manifest)")
    need(0.0 <= m.drop_path < 1.0, "model.drop_path", "must be in [0, 1)")
    need(d.modality in MODALITIES, "data.modality", f"expected image or video, got {d.modality!r}")
    need(bool(d.root) or bool(d.train_manifest and d.val_manifest), "data.root",
         "set data.root (or both data.train_manifest and data.val_manifest)")
    need(d.replication >= 1, "data.replication", "must be >= 1")
    need(t.batch_size % d.replication == 0, "data.replication", f"must divide train.batch_size ({t.batch_size})")
    need(t.micro_batch == 0 or t.micro_batch % d.replication == 0, "data.replication",
         f"must divide train.micro_batch ({t.micro_batch})")
    lo, hi = d.crop_scale
    need(0 < lo <= hi <= 1, "data.crop_scale", "must satisfy 0 < low <= high <= 1")
    need(0 <= d.flip_p <= 1, "data.flip_p", "must be in [0, 1]")
    need(d.interpolation in ("bilinear", "bicubic"), "data.interpolation", "expected bilinear or bicubic")
    need(d.window_s > 0, "data.window_s", "must be > 0")
    need(d.short_side >= m.img_size, "data.short_side", f"must be >= model.img_size ({m.img_size})")
    need(d.decode_backend in ("auto", "dali", "pyav"), "data.decode_backend", "expected auto, dali or pyav")
    validate_storage(d.storage, "data.storage")
    need(d.prefetch >= 1, "data.prefetch", "must be >= 1")
    need(d.synth_if_missing in ("", "demo"), "data.synth_if_missing", "expected demo or empty")
    need(a.rand_augment_ops >= 0, "augment.rand_augment_ops", "must be >= 0")
    need(0 <= a.rand_augment_magnitude <= 10, "augment.rand_augment_magnitude", "must be in [0, 10]")
    need(a.rand_augment_magnitude_std >= 0, "augment.rand_augment_magnitude_std", "must be >= 0")
    for key in ("random_erasing", "mixup_switch_prob", "mixup_prob"):
        need(0.0 <= getattr(a, key) <= 1.0, f"augment.{key}", "must be in [0, 1]")
    need(a.mixup >= 0 and a.cutmix >= 0, "augment.mixup", "alphas must be >= 0")
    need(0.0 <= a.label_smoothing < 1.0, "augment.label_smoothing", "must be in [0, 1)")
    need(o.lr > 0, "optim.lr", "must be > 0")
    need(o.lr_batch >= 1, "optim.lr_batch", "must be >= 1")
    need(0 < o.layer_decay <= 1, "optim.layer_decay", "must be in (0, 1]")
    need(o.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
    need(0.0 <= o.ema_decay < 1.0, "optim.ema_decay", "must be in [0, 1) (0 = off)")
    need(not (o.ema_decay and cfg.parallel.strategy == "fsdp"), "optim.ema_decay",
         "the weight EMA keeps a full copy per process: set it to 0 with parallel.strategy=fsdp")
    need(e.every >= 0, "eval.every", "must be >= 0")
    need(e.num_clips >= 1, "eval.num_clips", "must be >= 1")
    need(e.num_crops in (1, 3), "eval.num_crops", "must be 1 or 3")
    need(0 < e.crop_ratio <= 1, "eval.crop_ratio", "must be in (0, 1]")
    need(e.batch_size >= 1, "eval.batch_size", "must be >= 1")
    need(e.max_items >= 0, "eval.max_items", "must be >= 0")
    need(e.probe_pool in PROBE_POOLS, "eval.probe_pool",
         f"expected one of {', '.join(PROBE_POOLS)}, got {e.probe_pool!r}")
    validate_run(t, cfg.parallel)


def manifest_paths(cfg: FinetuneConfig) -> tuple[str, str]:
    """(train, test) manifest paths or URLs."""
    root = cfg.data.root.rstrip("/")
    return (cfg.data.train_manifest or f"{root}/manifest_train.jsonl",
            cfg.data.val_manifest or f"{root}/manifest_val.jsonl")


def derive_finetune(cfg: FinetuneConfig, *, world_size: int, train_items: int) -> dict[str, Any]:
    """The pretraining `derive` (global / per-rank / micro batch, LR scaling, steps, warmup) on a
    one-data-set view of this config: the same arithmetic, one place."""
    view = Config(
        data=DataConfig(**{cfg.data.modality: DatasetConfig(root=cfg.data.root or "-",
                                                            replication=cfg.data.replication)}),
        optim=OptimConfig(lr=cfg.optim.lr, lr_batch=cfg.optim.lr_batch, min_lr=cfg.optim.min_lr,
                          warmup_epochs=cfg.optim.warmup_epochs),
        train=cfg.train)
    return derive(view, world_size=world_size, dataset_sizes={cfg.data.modality: train_items})
