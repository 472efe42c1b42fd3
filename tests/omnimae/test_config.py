import json

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
    ("nonsense", "expected key.sub=value"),
])
def test_bad_values_name_the_full_key(tmp_path, override, message):
    path = write(tmp_path, "data:\n  video:\n    root: /data/ssv2\ntrain:\n  batch_size: 64\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


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
