"""Testing a classifier and checking an encoder: the multi-view test pass (`evaluate`, counts summed
over ranks) and its record (`run_test`), the `--eval-only` mode (a checkpoint's weights and EMA)
and the `--probe` mode (linear probe and k-NN on frozen features)."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from omnimae import checkpoint as ckpt
from omnimae.config import ConfigError
from omnimae.engine import autocast_for, say
from omnimae.finetune.build import build_classifier, build_test_views, prepare_manifests
from omnimae.finetune.classifier import load_encoder_weights
from omnimae.finetune.config import FinetuneConfig
from omnimae.finetune.data import EvalViews
from omnimae.finetune.evaluate import (extract_features, knn_classify, linear_probe, multiview_logits,
                                       topk_accuracy, topk_correct)
from omnimae.metrics import MetricsWriter
from omnimae.parallel import DistInfo
from omnimae.weights import safe_load


def run_dir_of(cfg: FinetuneConfig) -> Path:
    return Path(cfg.train.out_dir) / (cfg.train.run_name or "finetune")


def write_json(dist_info: DistInfo, path: Path, value: dict) -> None:
    if dist_info.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2, default=str))


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


def run_test(step: int, models: dict, test: EvalViews, dist_info: DistInfo, autocast, metrics: MetricsWriter) -> dict:
    t0 = time.perf_counter()
    result = evaluate(models, test, dist_info, autocast)
    result.update(step=step, seconds=time.perf_counter() - t0)
    values = {f"{name}/{k}": v for name in models for k, v in result[name].items()}
    metrics.write(step, values | {"test/items": result["items"], "test/failed": result["failed"]})
    shown = ", ".join(f"{name} top1 {result[name]['top1']:.2%} top5 {result[name]['top5']:.2%}" for name in models)
    say(dist_info, f"step {step}: {shown} ({result['items']} items x {result['views']} views, "
                      f"{result['failed']} failed, {result['seconds']:.0f}s)")
    return result


def eval_only(cfg: FinetuneConfig, dist_info: DistInfo) -> Path:
    """Tests model.pretrained if set (a fine-tuned classifier or official fine-tuned checkpoint), else the
    latest checkpoint of the run folder, with its EMA weights where it has them."""
    run_dir = run_dir_of(cfg)
    _, test_manifest, num_classes = prepare_manifests(cfg, dist_info)
    source = cfg.model.pretrained or ckpt.find_resume("auto", run_dir)
    if not source:
        raise ConfigError(f"model.pretrained: nothing to test (empty, and no checkpoint in {run_dir})")
    models = {"test": build_classifier(cfg, num_classes, source)}
    state_file = Path(source) / "state.pt" if Path(source).is_dir() else None
    if state_file is not None:
        ema_state = safe_load(state_file).get("extra", {}).get("ema")
        if ema_state is not None:
            models["test_ema"] = build_classifier(cfg, num_classes, ema_state["module"])
    for m in models.values():
        m.to(dist_info.device)
    autocast, _ = autocast_for(cfg, dist_info.device)
    test = build_test_views(cfg, test_manifest, dist_info)
    result = run_test(-1, models, test, dist_info, autocast, MetricsWriter(run_dir, enabled=False))
    test.close()
    result["weights"] = str(source)
    write_json(dist_info, run_dir / "eval.json", result)
    return run_dir


def probe(cfg: FinetuneConfig, dist_info: DistInfo) -> Path:
    """Frozen-feature linear probe and k-NN of model.pretrained (random init if empty), train -> test."""
    from omnimae.model import build_model

    if dist_info.distributed:
        raise ConfigError("--probe runs in one process, not under torchrun")
    run_dir = run_dir_of(cfg)
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
    say(dist_info, json.dumps(result))
    write_json(dist_info, run_dir / "probe.json", result)
    return run_dir
