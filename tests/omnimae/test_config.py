import json
import re

import pytest

from omnimae.config import Config, ConfigError, derive, describe, load_config, parse_override


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_yaml_holds_only_differences_and_overrides_win(tmp_path):
    path = write(tmp_path, "model:\n  name: debug\ndata:\n  video:\n    root: /data/ssv2\noptim:\n  lr: 3e-4\n")
    cfg = load_config(path, ["train.batch_size=64", "data.video.replication=2", "optim.betas=[0.9, 0.99]"])
    assert cfg.model.name == "debug"
    assert cfg.optim.lr == pytest.approx(3e-4)  # YAML 1.1 would read 3e-4 as a string
    assert cfg.train.batch_size == 64
    assert cfg.data.video.replication == 2
    assert cfg.optim.betas == (0.9, 0.99)
    assert cfg.data.video.mask_ratio == 0.95  # untouched default of the video data set
    assert cfg.train.run_name == "exp"


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=big", "train.batch_size: expected int"),
    ("train.bach_size=8", "train.bach_size: unknown key"),
    ("model.name=giant", "model.name: expected one of"),
    ("data.video.mask_ratio=1.0", "data.video.mask_ratio: must be in [0, 1)"),
    ("data.video.mask_type=checkers", "data.video.mask_type"),
    ("data.video.replication=3", "data.video.replication: must divide train.batch_size"),
    ("data.video.crop_scale=[0.5, 0.1]", "data.video.crop_scale"),
    ("parallel.compile=maybe", "parallel.compile: expected true or false"),
    ("parallel.compile_scope=layers", "parallel.compile_scope: expected auto, model, blocks"),
    ("parallel.compile_mode=fast", "parallel.compile_mode: expected default, reduce-overhead"),
    ("parallel.attention=triton", "parallel.attention: expected auto, default, cudnn"),
    ("model.decoder_heads=-1", "model.decoder_heads: must be >= 0"),
    ("nonsense", "expected key.sub=value"),
])
def test_bad_values_name_the_full_key(tmp_path, override, message):
    path = write(tmp_path, "data:\n  video:\n    root: /data/ssv2\ntrain:\n  batch_size: 64\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["parallel.compile_scope=model", "parallel.strategy=fsdp"], "FSDP2 shards per block"),
    (["parallel.compile_scope=model", "parallel.activation_checkpointing=true"], "wrap each block"),
])
def test_whole_model_compile_refuses_what_needs_blocks(tmp_path, overrides, message):
    path = write(tmp_path, "data:\n  video:\n    root: /data/ssv2\n")
    with pytest.raises(ConfigError, match=f"parallel.compile_scope: .*{message}"):
        load_config(path, overrides)
    load_config(path, [overrides[1]])  # auto compiles per block there


def test_decode_backends_are_the_loaders():
    from loaders.decode import BACKENDS
    from omnimae.config import DECODE_BACKENDS

    assert DECODE_BACKENDS == BACKENDS


def test_attention_settings_are_the_kernels_and_two_choices():
    from omnimae.attention import KERNELS, SETTINGS

    assert set(SETTINGS) == {"auto", "default", *KERNELS}


def test_decoder_heads_must_divide_the_decoder_width(tmp_path):
    from omnimae.train import build_pretraining_model

    path = write(tmp_path, "model:\n  name: debug\ndata:\n  video:\n    root: /data/ssv2\n")
    with pytest.raises(ConfigError, match="model.decoder_heads: width 32 is not divisible by 5 heads"):
        build_pretraining_model(load_config(path, ["model.decoder_heads=5"]))
    assert build_pretraining_model(load_config(path, ["model.decoder_heads=2"])).decoder_blocks[0].attn.heads == 2
    assert build_pretraining_model(load_config(path)).decoder_blocks[0].attn.heads == 4  # debug's own


def test_missing_data_roots_and_file(tmp_path):
    with pytest.raises(ConfigError, match="data: set data.image.root"):
        load_config(write(tmp_path, "model:\n  name: debug\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_derived_values():
    cfg = load_config(None, ["data.image.root=/i", "data.video.root=/v", "train.batch_size=2048",
                             "train.micro_batch=256", "train.epochs=800", "optim.warmup_epochs=40"])
    d = derive(cfg, world_size=4, dataset_sizes={"image": 1_281_167, "video": 168_913})
    assert d["per_rank_batch"] == 512 and d["accumulation_steps"] == 2
    assert d["lr"] == pytest.approx(3e-4)
    assert d["steps_per_epoch"] == (1_281_167 + 168_913) // 2048
    assert d["warmup_steps"] == 40 * d["steps_per_epoch"]
    with pytest.raises(ConfigError, match="world size"):
        derive(cfg, world_size=3, dataset_sizes={"image": 10})


def test_every_shipped_config_loads():
    from pathlib import Path

    # ft_*.yaml are fine-tuning configs, read by omnimae.finetune's own config tree.
    for path in sorted(Path(__file__).parents[2].joinpath("configs").glob("*.yaml")):
        if path.name.startswith("ft_"):
            continue
        cfg = load_config(path)
        json.dumps(cfg.__dict__, default=str)
        assert isinstance(cfg, Config)


def test_override_parsing_and_help():
    assert parse_override("a.b=1e-3") == {"a": {"b": 1e-3}}
    assert parse_override("a=") == {"a": ""}
    lines = describe()
    assert any(line.strip().startswith("train.batch_size = 2048") for line in lines)
    assert all("#" in line for line in lines if line.startswith("  "))


def test_batch_arithmetic_from_plain_numbers():
    from omnimae.config import batch_arithmetic

    numbers = dict(global_batch=64, micro_batch=0, replications={"data.replication": 4}, samples_per_epoch=640.0,
                   epochs=3.0, max_steps=0, warmup_epochs=1.0, lr=1e-3, min_lr=1e-6, lr_batch=32)
    d = batch_arithmetic(world_size=2, **numbers)
    assert (d["per_rank_batch"], d["micro_batch"], d["accumulation_steps"]) == (32, 32, 1)
    assert (d["steps_per_epoch"], d["total_steps"], d["warmup_steps"]) == (10, 30, 10)
    assert d["lr"] == pytest.approx(2e-3) and d["min_lr"] == pytest.approx(2e-6)
    with pytest.raises(ConfigError, match=r"^data\.replication: 4 does not divide the micro batch 2$"):
        batch_arithmetic(world_size=32, **numbers)  # the key named is the one the caller passed


def test_both_trees_share_their_sections_and_checks():
    from omnimae.config import EncoderConfig, OptimConfig, ReadConfig, RunConfig, SourceConfig
    from omnimae.finetune.config import FinetuneConfig, load_finetune_config

    ft, pt = FinetuneConfig(), Config()
    assert isinstance(ft.model, EncoderConfig) and isinstance(pt.model, EncoderConfig)
    assert isinstance(ft.data, ReadConfig) and isinstance(pt.data, ReadConfig)
    assert isinstance(ft.data, SourceConfig) and isinstance(pt.data.video, SourceConfig)
    assert isinstance(ft.optim, OptimConfig) and isinstance(ft.train, RunConfig)
    # Fine-tuning keeps its own recipe's defaults on the shared keys.
    assert (ft.optim.lr, ft.optim.lr_batch, ft.optim.betas, ft.optim.warmup_epochs) == (1e-3, 512, (0.9, 0.999), 5)
    assert (pt.optim.lr, pt.optim.lr_batch, pt.optim.betas, pt.optim.warmup_epochs) == (3e-4, 2048, (0.9, 0.95), 40)
    assert ft.data.crop_scale == (0.08, 1.0) and pt.data.image.crop_scale == (0.2, 1.0)
    for override, message in [("data.window_s=0", "data.window_s: must be > 0"),
                              ("data.prefetch=0", "data.prefetch: must be >= 1"),
                              ("data.decode_backend=x", "data.decode_backend: expected auto, dali, pyav or nvdec"),
                              ("model.num_frames=3", "model.num_frames: must be a positive even number"),
                              ("model.img_size=100", "model.img_size: must be a positive multiple of the patch"),
                              ("optim.lr_batch=0", "optim.lr_batch: must be >= 1"),
                              ("train.keep_last=0", "train.keep_last: must be >= 1")]:
        for load, base in ((load_config, "data.video.root=/v"), (load_finetune_config, "data.root=/v")):
            with pytest.raises(ConfigError, match="^" + re.escape(message)):
                load(None, [base, override])
    cfg = load_finetune_config(None, ["data.root=/v", "data.decode_threads=5", "data.storage.retries=1"])
    assert (cfg.data.decode_threads, cfg.data.storage.retries) == (5, 1)  # shared keys stay flat


def test_size_names_and_patch_sides_agree_with_the_model():
    import torch

    from omnimae.config import SIZES, patch_side
    from omnimae.finetune.classifier import Classifier
    from omnimae.model import SIZES as MODEL_SIZES
    from omnimae.model import build_model

    assert SIZES == tuple(MODEL_SIZES)
    for size in SIZES:
        with torch.device("meta"):  # shapes only
            model = build_model(size)
        assert model.patch_size == (2, patch_side(size), patch_side(size)), size
    classifier = Classifier(build_model("debug", img_size=32, num_frames=4), num_classes=3)
    assert classifier.patch_size == (2, 16, 16)


def test_the_config_module_does_not_import_torch():
    # `--help-config` and `--print-config` stay quick: the reason config.py does not import the model.
    import subprocess
    import sys

    code = "import sys, omnimae.config, omnimae.modalities; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
