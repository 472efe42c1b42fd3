"""From the config to the loaders: where the data sets are, and the JointLoader the loop reads.

The trainer's side of the data path; the loaders themselves (`loaders/`) know nothing of the config.
"""

from __future__ import annotations

from pathlib import Path

import fsspec

from omnimae.config import Config, ConfigError, DatasetConfig, StorageConfig
from omnimae.modalities import MODALITIES
from omnimae.parallel import DistInfo

# The random resized crop's kernel in pretraining (paper appendix B): bilinear for SSv2, bicubic for IN1K.
INTERPOLATION = {"image": "bicubic", "video": "bilinear"}


def manifest_path(ds: DatasetConfig) -> str:
    if ds.manifest:
        return ds.manifest
    return f"{ds.root.rstrip('/')}/manifest_{ds.split}.jsonl"


def shard_index_path(ds: DatasetConfig) -> str:
    from loaders.shards.index import index_name

    return f"{ds.root.rstrip('/')}/{index_name(ds.split)}"


def read_dataset(ds: DatasetConfig, storage_options: dict, *, known: bool = False):
    """What a data set is read through: data.*.manifest when set (a shard index when named
    shards_*.jsonl); else the root's manifest_<split>.jsonl, or, when there is none, its
    shards_<split>.jsonl (tar shards: a loaders.shards.ShardedManifest). known: the manifest path is
    known to exist (prepare_data checked it), so a missing one is an error, not a reason to look for
    shards. Raises FileNotFoundError when neither is there."""
    from loaders.manifest import read_manifest
    from loaders.shards.index import is_shard_index, read_shard_index

    path = manifest_path(ds)
    if is_shard_index(path):
        return read_shard_index(path, storage_options=_options(path, storage_options))
    try:
        return read_manifest(path, storage_options=_options(path, storage_options))
    except FileNotFoundError:
        if ds.manifest or known:
            raise
    shards = shard_index_path(ds)
    return read_shard_index(shards, storage_options=_options(shards, storage_options))


def _options(url: str, storage_options: dict) -> dict:
    from loaders.storage.backends import protocol_options

    protocol = fsspec.core.split_protocol(url)[0] or "file"
    return {} if protocol == "file" else protocol_options(storage_options, protocol)


def _exists(url: str, storage_options: dict) -> bool:
    from loaders.storage.backends import filesystem_class

    filesystem_class(fsspec.core.split_protocol(url)[0])  # a missing s3fs/gcsfs: one line naming the extra
    fs, path = fsspec.core.url_to_fs(url, **_options(url, storage_options))
    return fs.exists(path)


def prepare_data(cfg: Config, dist_info: DistInfo) -> dict[str, int]:
    """Checks each data set's manifest (generating the demo set first where the config asks for it) and
    returns {modality: items in the manifest}."""
    if cfg.data.synth_if_missing:
        _generate_if_missing(cfg, dist_info)
    sizes = {}
    for name in MODALITIES:
        ds: DatasetConfig = getattr(cfg.data, name)
        if not ds.root:
            continue
        path = manifest_path(ds)
        known = _exists(path, cfg.data.storage_options)
        if not known and (ds.manifest or not _exists(shard_index_path(ds), cfg.data.storage_options)):
            root_ok = _exists(ds.root, cfg.data.storage_options)
            hint = (f"run `omnimae-data index {ds.root} --split {ds.split}` to write it (for *.tar shards "
                    f"it writes {shard_index_path(ds)})" if root_ok else
                    f"the data root {ds.root} does not exist: generate a data set with `omnimae-data synth "
                    f"{name} {ds.root}` or point data.{name}.root at yours")
            raise ConfigError(f"data.{name}.root: no manifest at {path}; {hint}")
        sizes[name] = len(read_dataset(ds, cfg.data.storage_options, known=known))
        if sizes[name] == 0:
            raise ConfigError(f"data.{name}.manifest: {path} lists no samples")
    return sizes


def _generate_if_missing(cfg: Config, dist_info: DistInfo) -> None:
    if cfg.data.synth_if_missing != "demo":
        raise ConfigError(f"data.synth_if_missing: unknown set {cfg.data.synth_if_missing!r} (expected demo)")
    fill_demo_roots({name: getattr(cfg.data, name).root for name in MODALITIES}, cfg.train.seed, dist_info)


def fill_demo_roots(roots: dict[str, str], seed: int, dist_info: DistInfo) -> None:
    """Writes the demo set into each local root ({modality: root}) that is missing or empty (or holds an
    earlier demo set, which make_demo_data reuses or remakes); any other root, remote or holding data,
    is used as it is. Only rank 0 generates; the others wait at a barrier. Fine-tuning uses it too."""
    import torch.distributed as dist

    if dist_info.is_main:
        from loaders.devtools.synthetic import DEMO_MARKER, make_demo_data

        folders = {}
        for name, root in roots.items():
            protocol, local = fsspec.core.split_protocol(root) if root else (None, "")
            if not root or protocol not in (None, "file", "local"):
                continue  # a URL is never Path()-ed: `http://` would become a folder named `http:`
            folder = Path(local)
            if not folder.exists() or (folder.is_dir() and (not any(folder.iterdir())
                                                            or (folder / DEMO_MARKER).exists())):
                folders[f"{name}_root"] = folder
        if folders:
            make_demo_data(seed=seed, **folders)
    if dist_info.distributed:
        dist.barrier()


def build_reader(storage: StorageConfig, storage_options: dict):
    """The process's one AsyncReader, shared by every data set (and, in fine-tuning, the test views):
    `max_in_flight` is then a per-process limit, as the config says."""
    from loaders.storage import AsyncReader

    return AsyncReader(max_in_flight=storage.max_in_flight, timeout_s=storage.timeout_s,
                       retries=storage.retries, backoff_max_s=storage.backoff_max_s,
                       hedge_after_s=storage.hedge_after_s or None,  # 0 = off
                       max_failure_share=storage.max_failure_share, outage_s=storage.outage_s,
                       storage_options=storage_options)


def _shard_options(cfg: Config) -> dict:
    """A sharded data set's loader options: a reader of its own with the storage settings (no hedging:
    a whole-shard read is long by nature, a hedge would double it), the buffer and reads in flight."""
    from loaders.shards.stream import ShardSettings

    storage = cfg.data.storage
    reader_options = dict(timeout_s=storage.timeout_s, retries=storage.retries, backoff_max_s=storage.backoff_max_s,
                          max_failure_share=storage.max_failure_share, outage_s=storage.outage_s)
    return {"storage_options": cfg.data.storage_options,
            "shards": ShardSettings(buffer=cfg.data.shard_buffer, reads=storage.shard_reads,
                                    reader_options=reader_options)}


def build_train_loader(cfg: Config, derived: dict, dist_info: DistInfo, *, patch_size: tuple[int, int, int]):
    """The JointLoader over the configured data sets: one modality per micro batch, all reading
    through one shared reader, which the JointLoader closes.

    patch_size: the model's (t, h, w) patch: the masks' token grid, and what crops must divide by.
    """
    from loaders.assembly import AssemblySettings
    from loaders.image_loader import ImageLoader
    from loaders.joint_loader import JointLoader
    from loaders.shards.index import ShardedManifest
    from loaders.video_loader import VideoLoader

    reader = build_reader(cfg.data.storage, cfg.data.storage_options)
    loaders, repeats = {}, {}
    for name in MODALITIES:
        ds: DatasetConfig = getattr(cfg.data, name)
        if not ds.root:
            continue
        manifest = read_dataset(ds, cfg.data.storage_options)
        common = dict(batch_size=derived["micro_batch"], device=dist_info.device, rank=dist_info.rank,
                      world_size=dist_info.world_size, seed=cfg.train.seed, decode_threads=cfg.data.decode_threads,
                      **(_shard_options(cfg) if isinstance(manifest, ShardedManifest) else {"reader": reader}))
        settings = AssemblySettings(replication=ds.replication, crop_size=cfg.model.img_size,
                                    crop_scale=ds.crop_scale, flip_p=ds.flip_p, interpolation=INTERPOLATION[name],
                                    mask_ratio=ds.mask_ratio, mask_type=ds.mask_type, patch_size=patch_size)
        if name == "video":
            loaders[name] = VideoLoader(manifest, settings, num_frames=cfg.model.num_frames,
                                        window_s=cfg.data.window_s, short_side=cfg.data.short_side,
                                        decode_backend=cfg.data.decode_backend, **common)
        else:
            loaders[name] = ImageLoader(manifest, settings, **common)
        repeats[name] = ds.repeat
    return JointLoader(loaders, repeats=repeats, seed=cfg.train.seed, prefetch=cfg.data.prefetch,
                       world_size=dist_info.world_size, group=derived["accumulation_steps"], reader=reader)
