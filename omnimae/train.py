"""OmniMAE pretraining: one entry point for the CPU, one GPU, N GPUs and N nodes.

What is pretraining's own: the data sets (one modality per step), the masked-autoencoder loss, the
FLOPs of a masked sample, the optimizer's parameter groups and the reconstruction pictures. The
step, the schedule, logging, checkpoints and preemption are the shared engine's (omnimae.engine).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from omnimae import engine
from omnimae.attention import AttentionPart
from omnimae.config import Config, ConfigError, derive
from omnimae.data import build_train_loader, prepare_data
from omnimae.engine import Preemption, Run, Schedule, Task, autocast_for, say
from omnimae.masking import num_visible
from omnimae.metrics import MetricsWriter
from omnimae.model import build_model
from omnimae.parallel import DistInfo, setup_distributed, teardown_distributed, unwrap


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms (1-D tensors) and the mask token (MAE's recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith("mask_token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Pretraining(Task):
    """The MAE loss of one modality's batch; pictures of the latest batch of each modality."""

    def __init__(self, model, train_model, cfg: Config, dist_info: DistInfo, run_dir: Path, modalities,
                 micro_batch: int):
        self.model = model  # unwrapped: the pictures' forwards
        self.train_model = train_model
        self.cfg = cfg
        self.dist_info = dist_info
        self.run_dir = run_dir
        self.autocast, _ = autocast_for(cfg, dist_info.device)
        # FSDP2: every forward is collective, so every rank draws (only rank 0 saves the pictures).
        self.draws = dist_info.is_main or (dist_info.distributed and cfg.parallel.strategy == "fsdp")
        # Per modality, fixed for the run (exact-count masks): computed once, not on every step.
        self.flops_per_sample = {m: model.flops_per_sample(m, getattr(cfg.data, m).mask_ratio, micro_batch)
                                 for m in modalities}
        self.last_batches: dict = {}  # modality -> the latest batch, for pictures

    def loss(self, batch, step, micro):
        with self.autocast:
            loss, _ = self.train_model(batch.pixels, batch.mask, batch.num_visible)
        self.last_batches[batch.modality] = batch
        return loss, f"loss/{batch.modality}"

    def flops(self, batch):
        return self.flops_per_sample[batch.modality]

    def between_steps(self, step, last, metrics):
        if self.cfg.train.vis_every and step % self.cfg.train.vis_every == 0 and self.draws:
            self._draw(step, metrics)

    def at_end(self, step, stopped_by, metrics):
        if self.draws and self.last_batches and stopped_by != "nonfinite":
            pictures = self._draw(step, metrics)
            say(self.dist_info, f"reconstructions: {', '.join(str(p) for p in pictures)}")

    def _draw(self, step: int, metrics: MetricsWriter) -> list[Path]:
        from omnimae.visualize import reconstruct, save_reconstructions

        model = unwrap(self.model)
        if not self.dist_info.is_main:
            # FSDP2: each forward all-gathers the parameter shards, so every rank runs the same forwards
            # as rank 0 (one per modality; the modalities are the same on every rank); only rank 0 draws.
            for _, batch in sorted(self.last_batches.items()):
                reconstruct(model, batch.pixels[:2], batch.mask[:2], batch.num_visible, self.autocast)
            return []
        return save_reconstructions(model, self.last_batches, self.run_dir / "reconstructions", step,
                                    metrics=metrics, autocast=self.autocast)


def build_pretraining_model(cfg: Config):
    """The OmniMAE that cfg.model describes."""
    options = dict(img_size=cfg.model.img_size, num_frames=cfg.model.num_frames,
                   norm_pix_loss=cfg.model.norm_pix_loss)
    if cfg.model.decoder_heads:
        options["decoder_heads"] = cfg.model.decoder_heads
    try:
        return build_model(cfg.model.name, **options)
    except ValueError as error:  # only decoder_heads can still be wrong here (validate checked the rest)
        raise ConfigError(f"model.decoder_heads: {error}") from None


def train(cfg: Config) -> Path:
    """Runs (or resumes) the experiment; returns the run folder."""
    dist_info = setup_distributed(cfg.train.device)
    preempt = Preemption().install()  # before any slow setup: a signal during it is not lost
    finished = False
    try:
        run_dir = _train(cfg, dist_info, preempt)
        finished = True
        return run_dir
    finally:
        preempt.uninstall()
        teardown_distributed(wait_for_peers=finished)


def _train(cfg: Config, dist_info: DistInfo, preempt: Preemption) -> Path:
    run_dir = Path(cfg.train.out_dir) / cfg.train.run_name
    engine.begin(run_dir, cfg.train.seed, dist_info)
    dataset_sizes = prepare_data(cfg, dist_info)  # {"image": n, "video": n}; may generate demo data
    derived = derive(cfg, world_size=dist_info.world_size, dataset_sizes=dataset_sizes)
    model = build_pretraining_model(cfg)
    derived["tokens_per_sample"] = {m: model.num_tokens(m) for m in dataset_sizes}
    derived["visible_tokens_per_sample"] = {
        m: num_visible(model.num_tokens(m), getattr(cfg.data, m).mask_ratio) for m in dataset_sizes}
    derived["parameters_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    resume_path = engine.record(cfg, run_dir, dist_info, derived=derived,
                                extra_json={"dataset_sizes": dataset_sizes})

    model = model.to(dist_info.device)
    # The attention shapes of the run: the encoder's visible tokens and the decoder's full sequence,
    # the longest of the modalities trained.
    parts = [AttentionPart("encoder", model.blocks, max(derived["visible_tokens_per_sample"].values())),
             AttentionPart("decoder", model.decoder_blocks, max(derived["tokens_per_sample"].values()))]
    train_model = engine.wrap_for_training(model, cfg, dist_info, attention_parts=parts,
                                           batch=derived["micro_batch"])
    # After wrapping: FSDP2 replaces the parameters with sharded ones, which the optimizer must hold.
    optimizer = engine.build_adamw(param_groups(model, cfg.optim.weight_decay), lr=derived["lr"],
                                   betas=cfg.optim.betas)
    loader = build_train_loader(cfg, derived, dist_info, patch_size=model.patch_size)
    schedule = Schedule.from_derived(derived, clip_grad=cfg.optim.clip_grad)
    task = Pretraining(model, train_model, cfg, dist_info, run_dir, dataset_sizes, derived["micro_batch"])
    run = Run(task=task, model=model,
              train_model=train_model, optimizer=optimizer, loader=loader, schedule=schedule, dist_info=dist_info,
              run_dir=run_dir, cfg=cfg, preempt=preempt, max_nonfinite=cfg.train.max_nonfinite)
    engine.resume(run, resume_path)
    result = engine.run(run)
    if result.stopped_by == "nonfinite":
        raise SystemExit(f"omnimae-train: stopped after {cfg.train.max_nonfinite} non-finite losses in a row")
    return run_dir


def main(cfg: Config) -> int:
    try:
        train(cfg)
    except KeyboardInterrupt:
        print("omnimae-train: interrupted", file=sys.stderr)
        return 130
    return 0
