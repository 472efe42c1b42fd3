"""Fine-tuning: a classifier on the pretrained encoder, its periodic and final tests, and the
`--eval-only` and `--probe` modes.

What is fine-tuning's own: the labelled data set, the step's augmentation, mixing and loss (paper
Tables 4-5: RandAugment -> RandomErasing -> Mixup / CutMix with label smoothing -> soft-target cross
entropy, over layer-decay parameter groups), the weight EMA and the tests. The step, the schedule,
logging, checkpoints and preemption are the shared engine's (omnimae.engine).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omnimae import engine
from omnimae.attention import AttentionPart
from omnimae.engine import Preemption, Run, Schedule, Task, autocast_for, say
from omnimae.finetune.augment import build_rand_augment, rand_augment, random_erasing
from omnimae.finetune.build import build_classifier, build_test_views, prepare_manifests
from omnimae.finetune.classifier import Classifier, layer_decay_param_groups
from omnimae.finetune.config import FinetuneConfig, derive_finetune
from omnimae.finetune.data import EvalViews, build_train_loader
from omnimae.finetune.ema import ModelEMA
from omnimae.finetune.mixup import Mixup, soft_target_cross_entropy
from omnimae.finetune.testing import eval_only, probe, run_dir_of, run_test, write_json
from omnimae.parallel import DistInfo, setup_distributed, teardown_distributed


def finetune(cfg: FinetuneConfig, *, mode: str = "train") -> Path:
    """mode: "train" (fine-tune, resuming if a checkpoint exists, then test), "eval" (test the
    latest checkpoint of the run, or model.pretrained) or "probe" (frozen-feature checks of
    model.pretrained). Returns the run folder."""
    if mode not in ("train", "eval", "probe"):
        raise ValueError(f"mode must be train, eval or probe, got {mode!r}")
    dist_info = setup_distributed(cfg.train.device)
    finished = False
    try:
        if mode == "probe":
            run_dir = probe(cfg, dist_info)
        elif mode == "eval":
            run_dir = eval_only(cfg, dist_info)
        else:
            # Only training turns SIGTERM into "checkpoint and exit 0"; testing and probing just stop.
            preempt = Preemption().install()
            try:
                run_dir = _train(cfg, dist_info, preempt)
            finally:
                preempt.uninstall()
        finished = True
        return run_dir
    finally:
        teardown_distributed(wait_for_peers=finished)


class Finetuning(Task):
    """A step's own part (paper Tables 4-5): RandAugment -> RandomErasing -> Mixup / CutMix with label
    smoothing -> the classifier under autocast -> soft-target cross entropy; then the weight EMA.
    Between steps: the periodic test of the model and its EMA."""

    def __init__(self, cfg: FinetuneConfig, classifier: Classifier, train_model, ema: ModelEMA | None,
                 test: EvalViews, num_classes: int, dist_info: DistInfo):
        a = cfg.augment
        self.cfg = cfg
        self.classifier = classifier
        self.train_model = train_model
        self.ema = ema
        self.test = test
        self.dist_info = dist_info
        self.autocast, _ = autocast_for(cfg, dist_info.device)
        self.mixup = Mixup(num_classes, mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, switch_prob=a.mixup_switch_prob,
                           prob=a.mixup_prob, label_smoothing=a.label_smoothing)
        self.rand_augment = (build_rand_augment(a.rand_augment_ops, a.rand_augment_magnitude,
                                                magnitude_std=a.rand_augment_magnitude_std)
                             if a.rand_augment_ops else None)
        self.flops_per_sample = classifier.flops_per_sample(cfg.data.modality)
        self.models = {"test": classifier} | ({"test_ema": ema.module} if ema is not None else {})
        self.checkpoint_extra = {"ema": ema} if ema is not None else None
        self.results: dict = {"evals": []}

    def loss(self, batch, step, micro):
        x = batch.pixels  # [B, 3, (T,) S, S], normalized
        if self.rand_augment is not None:
            x = rand_augment(x, self.rand_augment, normalized=True)
        if self.cfg.augment.random_erasing:
            x = random_erasing(x, self.cfg.augment.random_erasing)
        # Mixing is a pure function of (seed, rank, step): resume needs no saved state.
        self.mixup.reseed(self.cfg.train.seed, self.dist_info.rank, step, micro)
        x, targets = self.mixup(x, batch.labels)  # targets [B, C], rows sum to 1
        with self.autocast:
            logits = self.train_model(x)  # [B, C]
        return soft_target_cross_entropy(logits, targets), "loss"

    def flops(self, batch):
        return self.flops_per_sample

    def after_step(self, step):
        if self.ema is not None:
            self.ema.update(self.classifier)

    def between_steps(self, step, last, metrics):
        if self.cfg.eval.every and step % self.cfg.eval.every == 0 and not last:
            self.results["evals"].append(run_test(step, self.models, self.test, self.dist_info, self.autocast, metrics))

    def at_end(self, step, stopped_by, metrics):
        if stopped_by == "finished":
            self.results["final"] = run_test(step, self.models, self.test, self.dist_info, self.autocast, metrics)
            evals = self.results["evals"] + [self.results["final"]]
            self.results["best"] = {name: max(e[name]["top1"] for e in evals) for name in self.models}


def _train(cfg: FinetuneConfig, dist_info: DistInfo, preempt: Preemption) -> Path:
    run_dir = run_dir_of(cfg)
    engine.begin(run_dir, cfg.train.seed, dist_info)
    train_manifest, test_manifest, num_classes = prepare_manifests(cfg, dist_info)
    derived = derive_finetune(cfg, world_size=dist_info.world_size, train_items=len(train_manifest))
    derived["num_classes"] = num_classes
    resume_path = engine.record(cfg, run_dir, dist_info, derived=derived,
                                extra_json={"train_items": len(train_manifest), "test_items": len(test_manifest)})

    classifier = build_classifier(cfg, num_classes).to(dist_info.device)
    say(dist_info, f"weights: {cfg.model.pretrained or 'random init'} -> {classifier.load_info}")
    ema = ModelEMA(classifier, cfg.optim.ema_decay) if cfg.optim.ema_decay else None  # before any wrapper
    attention = [AttentionPart("encoder", classifier.blocks, classifier.num_tokens(cfg.data.modality))]
    train_model = engine.wrap_for_training(classifier, cfg, dist_info, attention_parts=attention,
                                           batch=derived["micro_batch"])
    # After wrapping: FSDP2 replaces the parameters by shards, and the optimizer must hold those.
    groups = layer_decay_param_groups(classifier, derived["lr"], cfg.optim.weight_decay, cfg.optim.layer_decay)
    optimizer = engine.build_adamw(groups, lr=derived["lr"], betas=cfg.optim.betas)
    loader = build_train_loader(cfg, train_manifest, micro_batch=derived["micro_batch"],
                                accumulation=derived["accumulation_steps"], dist_info=dist_info,
                                patch_size=classifier.patch_size)
    test = build_test_views(cfg, test_manifest, dist_info)
    task = Finetuning(cfg, classifier, train_model, ema, test, num_classes, dist_info)
    schedule = Schedule.from_derived(derived, clip_grad=cfg.optim.clip_grad)
    run = Run(task=task, model=classifier, train_model=train_model, optimizer=optimizer, loader=loader,
              schedule=schedule, dist_info=dist_info, run_dir=run_dir, cfg=cfg, preempt=preempt)
    engine.resume(run, resume_path)
    try:
        result = engine.run(run)
    finally:
        test.close()
    task.results.update(stopped_by=result.stopped_by, steps=result.steps, wall_s=result.wall_s,
                        precision=result.summary["precision"], weights=str(cfg.model.pretrained or "random init"),
                        load_info=classifier.load_info)
    write_json(dist_info, run_dir / "results.json", task.results)
    return run_dir


def main(cfg: FinetuneConfig, mode: str = "train") -> int:
    try:
        finetune(cfg, mode=mode)
    except KeyboardInterrupt:
        print("omnimae-finetune: interrupted", file=sys.stderr)
        return 130
    return 0
