"""The fine-tuning loop, multi-view testing and the frozen-feature checks.

The pretraining machinery, reused: `setup_distributed` / `parallelize` / `unwrap` (one entry point
for CPU, 1 GPU, torchrun; compile per block, DDP or FSDP2), `lr_at` (warmup + cosine as a pure
function of the step), checkpoints with exact resume (model, optimizer, EMA, loader position,
RNG), `MetricsWriter` (JSON lines + TensorBoard), `Preemption` (SIGTERM -> checkpoint, exit 0).

A step (paper Tables 4-5): Batch (normalized, on the device) -> RandAugment -> RandomErasing ->
Mixup / CutMix + label smoothing -> classifier under autocast -> soft-target cross entropy ->
AdamW over layer-decay groups -> weight EMA. The host syncs only on logging and test steps.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from omnimae.progress import Progress, write as progress_write

from omnimae import checkpoint as ckpt
from omnimae.config import ConfigError, to_dict
from omnimae.finetune.augment import build_rand_augment, rand_augment, random_erasing
from omnimae.finetune.classifier import Classifier, layer_decay_param_groups, load_encoder_weights
from omnimae.finetune.config import FinetuneConfig, derive_finetune, manifest_paths
from omnimae.finetune.data import EvalViews, build_train_loader
from omnimae.finetune.ema import ModelEMA
from omnimae.finetune.evaluate import (extract_features, knn_classify, linear_probe, multiview_logits,
                                       topk_accuracy, topk_correct)
from omnimae.finetune.mixup import Mixup, soft_target_cross_entropy
from omnimae.metrics import MetricsWriter, device_peak_flops
from omnimae.parallel import DistInfo, parallelize, setup_distributed, teardown_distributed
from omnimae.resume import check_run_folder_writable, prepare_run_folder
from omnimae.train import Preemption, autocast_for, lr_at


def _print(dist_info: DistInfo, *args) -> None:
    if dist_info.is_main:
        progress_write(" ".join(str(a) for a in args))


# ---- data sets -------------------------------------------------------------------------------------

def prepare_manifests(cfg: FinetuneConfig, dist_info: DistInfo):
    """(train manifest, test manifest, num_classes); generates the demo set first if asked to."""
    from loaders.manifest import read_manifest

    if cfg.data.synth_if_missing == "demo":
        from omnimae.data import fill_demo_roots

        fill_demo_roots({cfg.data.modality: cfg.data.root}, cfg.train.seed, dist_info)
    manifests = []
    for key, path in zip(("data.train_manifest", "data.val_manifest"), manifest_paths(cfg)):
        try:
            manifest = read_manifest(path, storage_options=cfg.data.storage_options)
        except FileNotFoundError:
            raise ConfigError(f"{key}: no manifest at {path}") from None
        if len(manifest) == 0:
            raise ConfigError(f"{key}: {path} lists no samples")
        manifests.append(manifest)
    train, test = manifests
    num_classes = cfg.model.num_classes or train.num_classes
    for key, manifest in (("data.train_manifest", train), ("data.val_manifest", test)):
        bad = [e for e in manifest if not 0 <= e.label < num_classes]
        if bad:
            raise ConfigError(f"{key}: {len(bad)} items have labels outside [0, {num_classes}), "
                              f"e.g. {bad[0].label} for {bad[0].uri}")
    return train, test, num_classes


def build_test_views(cfg: FinetuneConfig, manifest, dist_info: DistInfo, *, num_clips: int | None = None,
                     num_crops: int | None = None, max_items: int | None = None) -> EvalViews:
    d, e = cfg.data, cfg.eval
    return EvalViews(manifest, modality=d.modality, crop_size=cfg.model.img_size, num_frames=cfg.model.num_frames,
                     window_s=d.window_s, num_clips=num_clips or e.num_clips, num_crops=num_crops or e.num_crops,
                     crop_ratio=e.crop_ratio, batch_size=e.batch_size, device=dist_info.device,
                     rank=dist_info.rank, world_size=dist_info.world_size, decode_backend=d.decode_backend,
                     decode_threads=d.decode_threads, storage=d.storage,
                     storage_options=d.storage_options, max_items=e.max_items if max_items is None else max_items)


def build_classifier(cfg: FinetuneConfig, num_classes: int, checkpoint=None) -> Classifier:
    """The classifier from `checkpoint` (default: model.pretrained; empty = random initialization)."""
    checkpoint = checkpoint if checkpoint is not None else (cfg.model.pretrained or None)
    return Classifier.from_pretrained(cfg.model.name, num_classes, checkpoint, drop_path=cfg.model.drop_path,
                                      img_size=cfg.model.img_size, num_frames=cfg.model.num_frames)


# ---- testing ---------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(models: dict[str, torch.nn.Module], test: EvalViews, dist_info: DistInfo, autocast=None) -> dict:
    """Top-1 / top-5 of each model on the test views, softmax averaged over an item's views.

    One pass over the data for all models. Returns {name: {"top1", "top5"}, "items": n, "views": V,
    "failed": skipped items}; counts are summed over ranks (a sync: evaluation only).
    """
    autocast = autocast or nullcontext()
    device = dist_info.device
    correct = {name: torch.zeros(2, dtype=torch.int64, device=device) for name in models}
    modes = {name: m.training for name, m in models.items()}
    count = torch.zeros((), dtype=torch.int64, device=device)
    batches = iter(test)
    try:
        for m in models.values():
            m.eval()
        while True:
            batch = next(batches, None)
            if dist_info.distributed:
                # FSDP2 gathers parameters inside every forward, so all ranks must run the same number
                # of them: a rank whose share ran out forwards a placeholder until every rank is done.
                more = torch.tensor(float(batch is not None), device=device)
                dist.all_reduce(more, op=dist.ReduceOp.MAX)  # sync: evaluation only
                if more.item() == 0:
                    break
                batch = batch if batch is not None else test.placeholder()
            elif batch is None:
                break
            for name, m in models.items():
                with autocast:
                    probs = multiview_logits(m, batch.views)  # [B, C]
                correct[name] += topk_correct(probs, batch.labels, (1, 5))  # label -1 never counts
            count += (batch.labels >= 0).sum()
    finally:
        for name, m in models.items():
            m.train(modes[name])
    failed = torch.tensor(len(test.failures), device=device)
    if dist_info.distributed:
        for t in (*correct.values(), count, failed):
            dist.all_reduce(t)  # sync
    n = int(count)  # sync
    out: dict = {name: {"top1": c[0].item() / max(1, n), "top5": c[1].item() / max(1, n)}
                 for name, c in correct.items()}
    out.update(items=n, views=test.views_per_item, failed=int(failed))
    return out


def frozen_features_eval(encoder: torch.nn.Module, train_views: EvalViews, test_views: EvalViews, *,
                         autocast=None, probe_epochs: int = 300, knn_k: int = 20, pool: str = "mean") -> dict:
    """Linear probe and k-NN on frozen, pooled features (one centre view per item; `pool_tokens`).

    encoder: an OmniMAE (its encoder and final norm) or a Classifier (its pooled feature).
    """
    autocast = autocast or nullcontext()
    with autocast:
        train_f, train_y = extract_features(encoder, ((b.views[0], b.labels) for b in train_views), pool=pool)
        test_f, test_y = extract_features(encoder, ((b.views[0], b.labels) for b in test_views), pool=pool)
    probe = linear_probe(train_f, train_y, test_f, test_y, epochs=probe_epochs)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    knn = topk_accuracy(knn_classify(train_f, train_y, test_f, k=knn_k, num_classes=num_classes), test_y)
    return {"linear_top1": probe["top1"], "linear_top5": probe["top5"], "linear_train_top1": probe["train_top1"],
            "knn_top1": knn[1], "knn_top5": knn[5], "train_items": len(train_y), "test_items": len(test_y),
            "pool": pool}


# ---- the loop --------------------------------------------------------------------------------------

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
            run_dir = _probe(cfg, dist_info)
        elif mode == "eval":
            run_dir = _eval_only(cfg, dist_info)
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


def _run_dir(cfg: FinetuneConfig) -> Path:
    return Path(cfg.train.out_dir) / (cfg.train.run_name or "finetune")


def _write_json(dist_info: DistInfo, path: Path, value: dict) -> None:
    if dist_info.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2, default=str))


def _train(cfg: FinetuneConfig, dist_info: DistInfo, preempt: Preemption) -> Path:
    device = dist_info.device
    run_dir = _run_dir(cfg)
    torch.manual_seed(cfg.train.seed)
    if dist_info.is_main:
        check_run_folder_writable(run_dir)
    train_manifest, test_manifest, num_classes = prepare_manifests(cfg, dist_info)
    derived = derive_finetune(cfg, world_size=dist_info.world_size, train_items=len(train_manifest))
    derived["num_classes"] = num_classes
    say = lambda line: _print(dist_info, line)  # noqa: E731
    resume_path = prepare_run_folder(cfg, run_dir, dist_info, derived=derived, say=say,
                                     extra_json={"train_items": len(train_manifest),
                                                 "test_items": len(test_manifest)})
    say("derived: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in derived.items()))

    classifier = build_classifier(cfg, num_classes).to(device)
    _print(dist_info, f"weights: {cfg.model.pretrained or 'random init'} -> {classifier.load_info}")
    ema = ModelEMA(classifier, cfg.optim.ema_decay) if cfg.optim.ema_decay else None  # before any wrapper
    train_model = parallelize(classifier, dist_info=dist_info, compile=cfg.parallel.compile,
                              strategy=cfg.parallel.strategy,
                              activation_checkpointing=cfg.parallel.activation_checkpointing)
    # After parallelize: FSDP2 replaces the parameters by shards, and the optimizer must hold those.
    groups = layer_decay_param_groups(classifier, derived["lr"], cfg.optim.weight_decay, cfg.optim.layer_decay)
    # Fused AdamW skips a non-finite step on the device (found_inf), as in pretraining.
    optimizer = torch.optim.AdamW(groups, lr=derived["lr"], betas=cfg.optim.betas, fused=True)
    loader = build_train_loader(cfg, train_manifest, micro_batch=derived["micro_batch"],
                                accumulation=derived["accumulation_steps"], dist_info=dist_info)
    test = build_test_views(cfg, test_manifest, dist_info)
    extra = {"ema": ema} if ema is not None else None

    start_step = 0
    if resume_path is not None:
        start_step = ckpt.load_training_state(resume_path, model=classifier, optimizer=optimizer, loader=loader,
                                              rank=dist_info.rank, extra=extra)
        _print(dist_info, f"resumed from {resume_path} at step {start_step}")
    autocast, precision = autocast_for(cfg, device)
    a = cfg.augment
    mixup = Mixup(num_classes, mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, switch_prob=a.mixup_switch_prob,
                  prob=a.mixup_prob, label_smoothing=a.label_smoothing)
    augment = (build_rand_augment(a.rand_augment_ops, a.rand_augment_magnitude,
                                  magnitude_std=a.rand_augment_magnitude_std) if a.rand_augment_ops else None)
    metrics = MetricsWriter(run_dir, enabled=dist_info.is_main, start_step=start_step)
    peak_flops = device_peak_flops(device)
    flops_per_sample = classifier.flops_per_sample(cfg.data.modality)
    models = {"test": classifier} | ({"test_ema": ema.module} if ema is not None else {})

    total, accum = derived["total_steps"], derived["accumulation_steps"]
    loss_sum = torch.zeros((), device=device)
    nonfinite = torch.zeros((), device=device)
    grad_norm = torch.zeros((), device=device)
    window = {"samples": 0, "steps": 0, "data_wait": 0.0, "t0": time.perf_counter()}
    results: dict = {"evals": []}
    stopped_by = "finished"
    run_t0 = time.perf_counter()
    bar = Progress(total, initial=start_step, desc=cfg.train.run_name or "finetune", enabled=dist_info.is_main)
    data_iter = iter(loader)
    step = start_step
    try:
        while step < total:
            lr = lr_at(step, peak=derived["lr"], floor=derived["min_lr"], warmup=derived["warmup_steps"], total=total)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]  # layer-wise decay
            finite = torch.ones((), dtype=torch.bool, device=device)
            for micro in range(accum):
                t0 = time.perf_counter()
                batch = next(data_iter)
                window["data_wait"] += time.perf_counter() - t0
                x = batch.pixels  # [B, 3, (T,) S, S], normalized
                if augment is not None:
                    x = rand_augment(x, augment, normalized=True)
                if a.random_erasing:
                    x = random_erasing(x, a.random_erasing)
                # Mixing is a pure function of (seed, rank, step): resume needs no saved state.
                mixup.reseed(cfg.train.seed, dist_info.rank, step, micro)
                x, targets = mixup(x, batch.labels)  # targets [B, C], rows sum to 1
                sync_ctx = (train_model.no_sync() if dist_info.distributed and micro < accum - 1
                            and hasattr(train_model, "no_sync") else nullcontext())
                with sync_ctx:
                    with autocast:
                        logits = train_model(x)  # [B, C]
                    loss = soft_target_cross_entropy(logits, targets)
                    ok = torch.isfinite(loss)
                    finite &= ok
                    (torch.where(ok, loss, torch.zeros_like(loss)) / accum).backward()
                loss_sum += torch.where(ok, loss.detach(), 0.0) / accum
                window["samples"] += len(batch)
            if cfg.optim.clip_grad > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(train_model.parameters(), cfg.optim.clip_grad)
            elif (step + 1) % cfg.train.log_every == 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(train_model.parameters(), float("inf"))
            if dist_info.distributed:
                bad = (~finite).float()
                dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every rank skips the same steps
                finite = bad == 0
            optimizer.found_inf = (~finite).float()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            nonfinite += (~finite).float()
            if ema is not None:
                ema.update(classifier)
            step += 1
            window["steps"] += 1
            bar.update(1)
            last = step == total

            if step % cfg.train.log_every == 0 or last:
                values = _log_values(lr, loss_sum, nonfinite, grad_norm, window, flops_per_sample, peak_flops,
                                     dist_info)
                metrics.write(step, values)
                bar.log(step, values)
                if preempt.agreed(dist_info):
                    _print(dist_info, f"preemption signal: checkpointing at step {step} and exiting")
                    stopped_by = "preempted"
                    break
            if cfg.eval.every and step % cfg.eval.every == 0 and not last:
                results["evals"].append(_test(step, models, test, dist_info, autocast, metrics))
                window["t0"] = time.perf_counter()  # the test is not training time
            if cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0 and not last:
                ckpt.save_training_state(run_dir, step=step, model=classifier, optimizer=optimizer, loader=loader,
                                         config=to_dict(cfg), dist_info=dist_info, keep_last=cfg.train.keep_last,
                                         extra=extra)
    finally:
        bar.close()
        loader.close()

    path = ckpt.save_training_state(run_dir, step=step, model=classifier, optimizer=optimizer, loader=loader,
                                    config=to_dict(cfg), dist_info=dist_info, keep_last=cfg.train.keep_last,
                                    extra=extra)
    _print(dist_info, f"checkpoint: {path}")
    if stopped_by == "finished":
        results["final"] = _test(step, models, test, dist_info, autocast, metrics)
        evals = results["evals"] + [results["final"]]
        results["best"] = {name: max(e[name]["top1"] for e in evals) for name in models}
    test.close()
    results.update(stopped_by=stopped_by, steps=step, wall_s=time.perf_counter() - run_t0, precision=precision,
                   weights=str(cfg.model.pretrained or "random init"), load_info=classifier.load_info)
    _write_json(dist_info, run_dir / "results.json", results)
    metrics.close()
    return run_dir


def _log_values(lr, loss_sum, nonfinite, grad_norm, window, flops_per_sample, peak_flops, dist_info) -> dict:
    """A logging step: the only place the loop syncs with the device."""
    device = dist_info.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # sync: time the window exactly
    elapsed = time.perf_counter() - window["t0"]
    steps = max(1, window["steps"])
    mean = loss_sum / steps
    if dist_info.distributed:
        dist.all_reduce(mean, op=dist.ReduceOp.AVG)  # sync
    values = {"loss": mean.item(), "lr": lr, "grad_norm": float(grad_norm),  # sync
              "nonfinite_steps": int(nonfinite.item()), "step_time_s": elapsed / steps,
              "data_wait_share": window["data_wait"] / elapsed if elapsed > 0 else 0.0,
              "samples_per_s": window["samples"] * dist_info.world_size / elapsed}
    tflops = window["samples"] * flops_per_sample / elapsed / 1e12  # per rank
    values["tflops_per_device"] = tflops
    if peak_flops:
        values["mfu"] = tflops * 1e12 / peak_flops
    if device.type == "cuda":
        values["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    loss_sum.zero_()
    window.update(samples=0, steps=0, data_wait=0.0, t0=time.perf_counter())
    return values


def _test(step: int, models: dict, test: EvalViews, dist_info: DistInfo, autocast, metrics: MetricsWriter) -> dict:
    t0 = time.perf_counter()
    result = evaluate(models, test, dist_info, autocast)
    result.update(step=step, seconds=time.perf_counter() - t0)
    values = {f"{name}/{k}": v for name in models for k, v in result[name].items()}
    metrics.write(step, values | {"test/items": result["items"], "test/failed": result["failed"]})
    shown = ", ".join(f"{name} top1 {result[name]['top1']:.2%} top5 {result[name]['top5']:.2%}" for name in models)
    _print(dist_info, f"step {step}: {shown} ({result['items']} items x {result['views']} views, "
                      f"{result['failed']} failed, {result['seconds']:.0f}s)")
    return result


def _eval_only(cfg: FinetuneConfig, dist_info: DistInfo) -> Path:
    """Tests model.pretrained if set (a fine-tuned classifier or official fine-tuned checkpoint), else the
    latest checkpoint of the run folder, with its EMA weights where it has them."""
    run_dir = _run_dir(cfg)
    _, test_manifest, num_classes = prepare_manifests(cfg, dist_info)
    source = cfg.model.pretrained or ckpt.find_resume("auto", run_dir)
    if not source:
        raise ConfigError(f"model.pretrained: nothing to test (empty, and no checkpoint in {run_dir})")
    models = {"test": build_classifier(cfg, num_classes, source)}
    state_file = Path(source) / "state.pt" if Path(source).is_dir() else None
    if state_file is not None:
        ema_state = ckpt.safe_load(state_file).get("extra", {}).get("ema")
        if ema_state is not None:
            models["test_ema"] = build_classifier(cfg, num_classes, ema_state["module"])
    for m in models.values():
        m.to(dist_info.device)
    autocast, _ = autocast_for(cfg, dist_info.device)
    test = build_test_views(cfg, test_manifest, dist_info)
    result = _test(-1, models, test, dist_info, autocast, MetricsWriter(run_dir, enabled=False))
    test.close()
    result["weights"] = str(source)
    _write_json(dist_info, run_dir / "eval.json", result)
    return run_dir


def _probe(cfg: FinetuneConfig, dist_info: DistInfo) -> Path:
    """Frozen-feature linear probe and k-NN of model.pretrained (random init if empty), train -> test."""
    from omnimae.model import build_model

    if dist_info.distributed:
        raise ConfigError("--probe runs in one process, not under torchrun")
    run_dir = _run_dir(cfg)
    torch.manual_seed(cfg.train.seed)
    train_manifest, test_manifest, _ = prepare_manifests(cfg, dist_info)
    encoder = build_model(cfg.model.name, img_size=cfg.model.img_size, num_frames=cfg.model.num_frames)
    if cfg.model.pretrained:
        load_encoder_weights(encoder, cfg.model.pretrained)
    encoder.to(dist_info.device)
    autocast, _ = autocast_for(cfg, dist_info.device)
    views = [build_test_views(cfg, m, dist_info, num_clips=1, num_crops=1, max_items=0)
             for m in (train_manifest, test_manifest)]
    result = frozen_features_eval(encoder, *views, autocast=autocast, pool=cfg.eval.probe_pool)
    for v in views:
        v.close()
    result["weights"] = cfg.model.pretrained or "random init"
    _print(dist_info, json.dumps(result))
    _write_json(dist_info, run_dir / "probe.json", result)
    return run_dir


def main(cfg: FinetuneConfig, mode: str = "train") -> int:
    try:
        finetune(cfg, mode=mode)
    except KeyboardInterrupt:
        print("omnimae-finetune: interrupted", file=sys.stderr)
        return 130
    return 0
