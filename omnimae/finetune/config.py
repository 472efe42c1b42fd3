"""Fine-tuning configuration: its own dataclass tree on the pretraining config's shared sections.

Same rules as `omnimae.config` (defaults < YAML file < `key.sub=value` overrides, one-line errors
naming the full key, `--help-config` from the field docstrings); `load_config`, `describe`, the
shared sections (encoder, data source and reading, optimizer, loop, parallel), their checks and the
batch arithmetic are the pretraining ones. Defaults are the paper's ViT-B SSv2 recipe (Table 5,
left); configs/ft_*.yaml hold what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnimae.config import (EncoderConfig, OptimConfig, ParallelConfig, ReadConfig, RunConfig, SourceConfig,
                            batch_arithmetic, load_config, need, run_numbers, validate_model, validate_optim,
                            validate_read, validate_run, validate_source)
from omnimae.modalities import MODALITIES


@dataclass
class FtModelConfig(EncoderConfig):
    """The classifier: the encoder keys plus its head, stochastic depth and starting weights."""

    num_classes: int = 0
    """Classes of the head; 0 = the train manifest's (its class_names, else the largest label + 1)."""
    drop_path: float = 0.1
    """Stochastic depth rate of the last block (paper: 0.1 ViT-B, 0.2 ViT-L/H), linear from 0."""
    pretrained: str = ""
    """Starting weights: a weight file, a run's step_XXXXXXXX/ folder or an official checkpoint; empty = random."""


@dataclass
class FtDataConfig(ReadConfig, SourceConfig):
    """The labelled data set: a source (root, replication, crop, flip), the reading keys, and these."""

    modality: str = "video"
    """What the data set holds: image or video."""
    train_manifest: str = ""
    """Training manifest (JSON lines); empty = <root>/manifest_train.jsonl."""
    val_manifest: str = ""
    """Test manifest; empty = <root>/manifest_val.jsonl."""
    interpolation: str = "bicubic"
    """RandomResizedCrop interpolation, bilinear or bicubic (the paper fine-tunes with bicubic)."""


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
class FtOptimConfig(OptimConfig):
    """The shared optimizer keys (fine-tuning defaults: FinetuneConfig) plus layer decay and the EMA."""

    layer_decay: float = 0.75
    """Layer-wise LR decay: block i trains at lr * decay ** (depth - i) (0.65 ViT-B images, else 0.75)."""
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
    data: FtDataConfig = field(default_factory=lambda: FtDataConfig(crop_scale=(0.08, 1.0)))
    """The labelled data set."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Augmentation and mixing on the device."""
    optim: FtOptimConfig = field(default_factory=lambda: FtOptimConfig(
        lr=1e-3, lr_batch=512, min_lr=1e-6, betas=(0.9, 0.999), warmup_epochs=5.0))
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
    """Impossible values, each named by its full key (the shared sections by omnimae.config's checks)."""

    m, d, a, o, e, t = cfg.model, cfg.data, cfg.augment, cfg.optim, cfg.eval, cfg.train
    validate_model(m)
    need(m.num_classes >= 0, "model.num_classes", "must be >= 0 (0 = from the manifest)")
    need(0.0 <= m.drop_path < 1.0, "model.drop_path", "must be in [0, 1)")
    need(d.modality in MODALITIES, "data.modality", f"expected image or video, got {d.modality!r}")
    need(bool(d.root) or bool(d.train_manifest and d.val_manifest), "data.root",
         "set data.root (or both data.train_manifest and data.val_manifest)")
    validate_source(d, "data", t.batch_size)
    need(t.micro_batch == 0 or t.micro_batch % d.replication == 0, "data.replication",
         f"must divide train.micro_batch ({t.micro_batch})")
    need(d.interpolation in ("bilinear", "bicubic"), "data.interpolation", "expected bilinear or bicubic")
    validate_read(d)
    need(d.short_side >= m.img_size, "data.short_side", f"must be >= model.img_size ({m.img_size})")
    need(d.synth_if_missing in ("", "demo"), "data.synth_if_missing", "expected demo or empty")
    need(a.rand_augment_ops >= 0, "augment.rand_augment_ops", "must be >= 0")
    need(0 <= a.rand_augment_magnitude <= 10, "augment.rand_augment_magnitude", "must be in [0, 10]")
    need(a.rand_augment_magnitude_std >= 0, "augment.rand_augment_magnitude_std", "must be >= 0")
    for key in ("random_erasing", "mixup_switch_prob", "mixup_prob"):
        need(0.0 <= getattr(a, key) <= 1.0, f"augment.{key}", "must be in [0, 1]")
    need(a.mixup >= 0 and a.cutmix >= 0, "augment.mixup", "alphas must be >= 0")
    need(0.0 <= a.label_smoothing < 1.0, "augment.label_smoothing", "must be in [0, 1)")
    validate_optim(o)
    need(0 < o.layer_decay <= 1, "optim.layer_decay", "must be in (0, 1]")
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
    """The pretraining arithmetic (omnimae.config.batch_arithmetic: global / per-rank / micro batch,
    LR scaling, steps, warmup) on the one data set: each item counts once, replicas counted."""
    return batch_arithmetic(world_size=world_size, **run_numbers(cfg.train, cfg.optim),
                            replications={"data.replication": cfg.data.replication},
                            samples_per_epoch=float(train_items))
