"""A fine-tuning run's pieces, built from its config: the manifests (demo data generated first if
asked to), the test views and the classifier."""

from __future__ import annotations

from omnimae.config import ConfigError
from omnimae.finetune.classifier import Classifier
from omnimae.finetune.config import FinetuneConfig, manifest_paths
from omnimae.finetune.data import EvalViews
from omnimae.parallel import DistInfo


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
