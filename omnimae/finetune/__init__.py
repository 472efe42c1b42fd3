"""Fine-tuning building blocks (paper appendix B.2, Tables 4-5).

- classifier: `Classifier` (encoder on all tokens -> mean pool -> LayerNorm -> Linear, drop path),
  `Classifier.from_pretrained` (our weights, training-state folders, official checkpoints),
  `layer_decay_param_groups` (layer-wise LR decay, no weight decay on 1-D tensors).
- mixup: `Mixup` (mixup 0.8 / CutMix 1.0, switch 0.5, label smoothing 0.1), `smooth_one_hot`,
  `soft_target_cross_entropy`.
- augment: `build_rand_augment`, `rand_augment`, `random_erasing` (per sample, on the device).
- ema: `ModelEMA`.
- evaluate: `spatial_crops`, `clip_start_times`, `multiview_logits`, `topk_accuracy`,
  `topk_correct`, `extract_features`, `linear_probe`, `knn_classify`.

The trainer on top of them: config (FinetuneConfig, configs/ft_*.yaml), data (the production
loaders with nothing masked for training; EvalViews: deterministic 5 clips x 3 crops for testing),
train (`finetune(cfg, mode="train" | "eval" | "probe")`), cli (`omnimae-finetune`). Those import
the loaders and the trainer; import them by module, they are not re-exported here.

A fine-tuning step, roughly: pixels in [0, 1] -> rand_augment -> normalize -> random_erasing ->
Mixup -> classifier under autocast -> soft_target_cross_entropy -> AdamW over
layer_decay_param_groups (group["lr"] = schedule(step) * group["lr_scale"]) -> ema.update(model).
"""

from omnimae.finetune.augment import build_rand_augment, rand_augment, random_erasing
from omnimae.finetune.classifier import (Classifier, DropPathBlock, drop_path, layer_decay_param_groups,
                                         layer_id, load_encoder_weights)
from omnimae.finetune.ema import ModelEMA
from omnimae.finetune.evaluate import (clip_start_times, extract_features, knn_classify, linear_probe,
                                       multiview_logits, pool_tokens, resize_short_side,
                                       spatial_crop_offsets, spatial_crops, topk_accuracy, topk_correct)
from omnimae.finetune.mixup import Mixup, smooth_one_hot, soft_target_cross_entropy

__all__ = [
    "Classifier", "DropPathBlock", "Mixup", "ModelEMA", "build_rand_augment", "clip_start_times",
    "drop_path", "extract_features", "knn_classify", "layer_decay_param_groups", "layer_id",
    "linear_probe", "load_encoder_weights", "multiview_logits", "pool_tokens", "rand_augment", "random_erasing",
    "resize_short_side",
    "smooth_one_hot", "soft_target_cross_entropy", "spatial_crop_offsets", "spatial_crops",
    "topk_accuracy", "topk_correct",
]
