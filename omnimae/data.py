"""From the config to the loaders: where the data sets are, and the JointLoader the loop reads.

The trainer's side of the data path; the loaders themselves (`loaders/`) know nothing of the config.
"""

from __future__ import annotations

from pathlib import Path

import fsspec

from omnimae.config import Config, ConfigError, DatasetConfig
from omnimae.parallel import DistInfo

MODALITIES = ("image", "video")


def manifest_path(ds: DatasetConfig) -> str:
    if ds.manifest:
        return ds.manifest
    return f"{ds.root.rstrip('/')}/manifest_{ds.split}.jsonl"


def _options(url: str, storage_options: dict) -> dict:
    from loaders._backends import protocol_options

    protocol = fsspec.core.split_protocol(url)[0] or "file"
    return {} if protocol == "file" else protocol_options(storage_options, protocol)


def _exists(url: str, storage_options: dict) -> bool:
    fs, path = fsspec.core.url_to_fs(url, **_options(url, storage_options))
    return fs.exists(path)


def prepare_data(cfg: Config, dist_info: DistInfo) -> dict[str, int]:
    """Checks each data set's manifest (generating the demo set first where the config asks for it) and
    returns {modality: items in the manifest}."""
    from loaders.manifest import read_manifest

    if cfg.data.synth_if_missing:
        _generate_if_missing(cfg, dist_info)
    sizes = {}
    for name in MODALITIES:
        ds: DatasetConfig = getattr(cfg.data, name)
        if not ds.root:
            continue
        path = manifest_path(ds)
        if not _exists(path, cfg.data.storage_options):
            root_ok = _exists(ds.root, cfg.data.storage_options)
            hint = (f"run `omnimae-data index {ds.root} --split {ds.split}` to write it" if root_ok else
                    f"the data root {ds.root} does not exist: generate a data set with `omnimae-data synth "
                    f"{name} {ds.root}` or point data.{name}.root at yours")
            raise ConfigError(f"data.{name}.root: no manifest at {path}; {hint}")
        sizes[name] = len(read_manifest(path, storage_options=_options(path, cfg.data.storage_options)))
        if sizes[name] == 0:
            raise ConfigError(f"data.{name}.manifest: {path} lists no samples")
    return sizes


def _generate_if_missing(cfg: Config, dist_info: DistInfo) -> None:
    """Only rank 0 generates; the others wait at a barrier."""
    import torch.distributed as dist

    if cfg.data.synth_if_missing != "demo":
        raise ConfigError(f"data.synth_if_missing: unknown set {cfg.data.synth_if_missing!r} (expected demo)")
    if dist_info.is_main:
        from loaders.synthetic import make_demo_data

        image_root = Path(cfg.data.image.root) if cfg.data.image.root else None
        video_root = Path(cfg.data.video.root) if cfg.data.video.root else None
        make_demo_data(image_root=image_root, video_root=video_root, seed=cfg.train.seed)
    if dist_info.distributed:
        dist.barrier()


def build_train_loader(cfg: Config, derived: dict, dist_info: DistInfo):
    """The JointLoader over the configured data sets: one modality per micro batch."""
    from loaders.joint import JointLoader
    from loaders.manifest import read_manifest
    from loaders.video import ImageLoader, VideoLoader

    from omnimae.model import SIZES

    patch = SIZES[cfg.model.name].get("patch", (2, 16, 16))
    common = dict(batch_size=derived["micro_batch"], device=dist_info.device, rank=dist_info.rank,
                  world_size=dist_info.world_size, seed=cfg.train.seed, patch_size=patch,
                  crop_size=cfg.model.img_size, max_in_flight=cfg.data.max_in_flight,
                  storage_options=cfg.data.storage_options)
    loaders, repeats = {}, {}
    for name in MODALITIES:
        ds: DatasetConfig = getattr(cfg.data, name)
        if not ds.root:
            continue
        path = manifest_path(ds)
        manifest = read_manifest(path, storage_options=_options(path, cfg.data.storage_options))
        kwargs = dict(common, replication=ds.replication, mask_ratio=ds.mask_ratio, mask_type=ds.mask_type,
                      crop_scale=ds.crop_scale, flip_p=ds.flip_p)
        if name == "video":
            loaders[name] = VideoLoader(manifest, num_frames=cfg.model.num_frames, window_s=cfg.data.window_s,
                                        short_side=cfg.data.short_side, decode_backend=cfg.data.decode_backend,
                                        decode_threads=cfg.data.decode_threads, **kwargs)
        else:
            loaders[name] = ImageLoader(manifest, decode_threads=cfg.data.decode_threads, **kwargs)
        repeats[name] = ds.repeat
    return JointLoader(loaders, repeats=repeats, seed=cfg.train.seed, prefetch=cfg.data.prefetch,
                       world_size=dist_info.world_size, group=derived["accumulation_steps"])
