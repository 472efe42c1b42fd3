"""omnimae-export: every export, loaded by its library from the folder alone, computes our encoder.

Relative error ||theirs - ours|| / ||ours|| below 1e-4 on images and videos, for the debug and small
sizes, pretraining models and fine-tuned classifiers, our checkpoints and the official layout.
Every weight (biases and norms too) is randomized first, so a dropped or swapped tensor shows.
"""

import json
import re
from pathlib import Path

import pytest
import torch

from omnimae.config import to_dict
from omnimae.export import encoder_output, export_main, load_safetensors
from omnimae.finetune.classifier import Classifier
from omnimae.finetune.config import load_finetune_config
from omnimae.model import build_model
from omnimae.weights import save_model_weights
from tests.omnimae.test_weights import official_state_dict

REPO = Path(__file__).resolve().parents[2]
TINY = dict(img_size=48, num_frames=4)  # 3x3 patches per frame, 2 temporal slots
SHAPE_ARGS = ["--img-size", "48", "--num-frames", "4"]  # a weight file does not record them
CLASSES = 5
TOLERANCE = 1e-4


def randomized(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return module.eval()


def make_model(size, kind, seed=0):
    torch.manual_seed(seed)
    encoder = build_model(size, **TINY)
    model = encoder if kind == "pretraining" else Classifier(encoder, CLASSES)
    return randomized(model, seed + 1)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 48, 48, generator=g), torch.randn(2, 3, 4, 48, 48, generator=g)


def rel(theirs, ours):
    return ((theirs.float() - ours.float()).norm() / ours.float().norm()).item()


def exported(tmp_path, model, fmt, *extra):
    """Our weight file of `model`, exported by the command line; returns the export folder."""
    checkpoint = tmp_path / "weights.pt"
    save_model_weights(model, checkpoint)
    out = tmp_path / fmt
    assert export_main([str(checkpoint), "--to", fmt, "--out", str(out), *SHAPE_ARGS, *extra]) == 0
    return out


def timm_model(folder):
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(**json.loads((folder / "timm_kwargs.json").read_text()))
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return model.eval()


def videomae(folder, classifier=False):
    from transformers import VideoMAEForVideoClassification, VideoMAEModel

    return (VideoMAEForVideoClassification if classifier else VideoMAEModel).from_pretrained(folder).eval()


def as_pixel_values(video):
    return video.transpose(1, 2)  # ours [B, 3, T, H, W] -> transformers' [B, T, 3, H, W]


SIZES_AND_KINDS = pytest.mark.parametrize("size,kind", [(s, k) for s in ("debug", "small")
                                                         for k in ("pretraining", "classifier")])


@SIZES_AND_KINDS
def test_timm_forward_features_is_our_encoder(tmp_path, size, kind):
    model = make_model(size, kind)
    image, _ = inputs()
    theirs = timm_model(exported(tmp_path, model, "timm"))
    assert theirs.blocks[0].norm1.eps == theirs.blocks[-1].norm2.eps == 1e-6  # ours; torch's default is 1e-5
    with torch.no_grad():
        error = rel(theirs.forward_features(image), encoder_output(model, image))
        assert error < TOLERANCE, error
        if kind == "classifier":  # pooled, fc_norm, head: the classifier's logits
            assert rel(theirs(image), model(image)) < TOLERANCE
    print(f"timm {size} {kind} image: relative error {error:.2e}")


def test_timm_without_the_head(tmp_path):
    model = make_model("debug", "classifier")
    image, _ = inputs()
    theirs = timm_model(exported(tmp_path, model, "timm", "--no-head"))
    assert theirs.num_classes == 0
    with torch.no_grad():  # pre-logits: the pooled, normalized feature
        assert rel(theirs(image), model.forward_features(image)) < TOLERANCE


@SIZES_AND_KINDS
def test_videomae_last_hidden_state_is_our_encoder(tmp_path, size, kind):
    model = make_model(size, kind)
    image, video = inputs()
    theirs = videomae(exported(tmp_path, model, "hf-videomae"))
    assert theirs.config.layer_norm_eps == 1e-6  # ours; transformers' default is 1e-12
    with torch.no_grad():
        error = rel(theirs(pixel_values=as_pixel_values(video)).last_hidden_state, encoder_output(model, video))
    assert error < TOLERANCE, error
    # An image model: a folder for 2-frame clips (one tubelet), fed the image repeated to 2 frames.
    model_2 = tmp_path / "two_frames"
    model_2.mkdir()
    theirs = videomae(exported(model_2, model, "hf-videomae", "--num-frames", "2"))
    assert theirs.config.num_frames == 2
    with torch.no_grad():
        image_error = rel(theirs(pixel_values=image.unsqueeze(1).expand(-1, 2, -1, -1, -1)).last_hidden_state,
                          encoder_output(model, image))
    assert image_error < TOLERANCE, image_error
    print(f"hf-videomae {size} {kind}: relative error video {error:.2e}, image {image_error:.2e}")


def test_videomae_classification_is_our_classifier(tmp_path):
    """Mean pool -> fc_norm -> classifier; transformers' fc_norm has eps 1e-5 where ours has 1e-6."""
    model = make_model("small", "classifier")
    _, video = inputs()
    theirs = videomae(exported(tmp_path, model, "hf-videomae"), classifier=True)
    assert theirs.config.use_mean_pooling and theirs.config.num_labels == CLASSES
    with torch.no_grad():
        error = rel(theirs(pixel_values=as_pixel_values(video)).logits, model(video))
    assert error < TOLERANCE, error


@SIZES_AND_KINDS
def test_safetensors_rebuilds_our_model(tmp_path, size, kind):
    model = make_model(size, kind)
    image, video = inputs()
    folder = exported(tmp_path, model, "safetensors")
    again = load_safetensors(folder).eval()
    assert type(again) is type(model) and again.config == model.config
    assert again.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        for x in (image, video):
            assert torch.equal(encoder_output(again, x), encoder_output(model, x))
        if kind == "classifier":
            assert torch.equal(again(video), model(video))
        else:  # the decoder comes along: the whole pretraining model
            mask = torch.rand(2, 18).argsort(dim=1) < 9  # [B, N]: 9 of 18 video tokens hidden
            assert torch.equal(again(video, mask, 9)[1], model(video, mask, 9)[1])


def test_a_run_checkpoint_carries_its_shapes_and_ema(tmp_path):
    """A step folder: size, crop and frames from its config; --ema takes the EMA copy."""
    cfg = to_dict(load_finetune_config(None, ["model.name=small", "model.img_size=48", "model.num_frames=4",
                                              "data.root=data/ft"]))
    model, ema = make_model("small", "classifier", seed=0), make_model("small", "classifier", seed=7)
    step = tmp_path / "step_00000008"
    step.mkdir()
    torch.save({"step": 8, "model": model.state_dict(), "optimizer": {}, "config": cfg,
                "extra": {"ema": {"decay": 0.9, "updates": 8, "module": ema.state_dict()}}}, step / "state.pt")
    image, _ = inputs()
    for weights, args in ((model, []), (ema, ["--ema"])):
        out = tmp_path / f"timm{len(args)}"
        assert export_main([str(step), "--to", "timm", "--out", str(out), *args]) == 0
        kwargs = json.loads((out / "timm_kwargs.json").read_text())
        assert (kwargs["img_size"], kwargs["embed_dim"], kwargs["num_classes"]) == (48, 192, CLASSES)
        with torch.no_grad():
            assert rel(timm_model(out)(image), weights(image)) < TOLERANCE


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_official_checkpoints(tmp_path, kind):
    """The official omnivore layout (faked as in test_weights) exports like our own checkpoints."""
    torch.manual_seed(0)
    source = randomized(build_model("debug", **TINY), 1)
    path = tmp_path / "omnimae_official.torch"
    torch.save({"model": official_state_dict(source, finetune_classes=None if kind == "pretrain" else 10)}, path)
    reference = source if kind == "pretrain" else Classifier.from_pretrained("debug", 10, path, **TINY).eval()
    image, video = inputs()
    for fmt in ("timm", "hf-videomae", "safetensors"):
        assert export_main([str(path), "--to", fmt, "--out", str(tmp_path / fmt), *SHAPE_ARGS]) == 0
    with torch.no_grad():
        assert rel(timm_model(tmp_path / "timm").forward_features(image), encoder_output(reference, image)) < TOLERANCE
        hidden = videomae(tmp_path / "hf-videomae")(pixel_values=as_pixel_values(video)).last_hidden_state
        assert rel(hidden, encoder_output(reference, video)) < TOLERANCE
        assert torch.equal(encoder_output(load_safetensors(tmp_path / "safetensors").eval(), video),
                           encoder_output(reference, video))


def readme_code() -> str:
    """The Python block of the README's section on exports."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Using the pretrained encoder elsewhere", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_one_liners_fine_tune_from_the_exports(tmp_path):
    model = make_model("debug", "pretraining")
    image, video = inputs()
    timm_dir, hf_dir = exported(tmp_path, model, "timm"), exported(tmp_path, model, "hf-videomae")
    code = readme_code()
    assert "export/timm" in code and "export/videomae" in code
    code = code.replace("export/timm", str(timm_dir)).replace("export/videomae", str(hf_dir))
    timm_part, hf_part = code.split("from transformers", 1)
    scope = {}
    exec(timm_part, scope)  # noqa: S102 - our own README
    image_model = scope["model"].eval()
    exec("from transformers" + hf_part, scope)  # noqa: S102
    video_model = scope["model"].eval()
    with torch.no_grad():
        assert rel(image_model.forward_features(image), encoder_output(model, image)) < TOLERANCE
        assert image_model.head.out_features == 1000  # a new head
        # use_mean_pooling: tokens pooled, then a new fc_norm, the official fine-tuning recipe
        assert video_model.config.use_mean_pooling and video_model.num_labels == 174
        tokens = video_model.videomae(pixel_values=as_pixel_values(video)).last_hidden_state
        ours = encoder_output(Classifier(model, 2), video)  # the blocks' output, before any norm
        assert rel(tokens, ours) < TOLERANCE


def test_errors_are_one_line(tmp_path, capsys):
    assert export_main([str(tmp_path / "missing.pt"), "--to", "timm", "--out", str(tmp_path / "x")]) == 2
    torch.save({"w": torch.ones(2)}, tmp_path / "other.pt")
    assert export_main([str(tmp_path / "other.pt"), "--to", "timm", "--out", str(tmp_path / "x")]) == 2
    torch.save({"payload": object}, tmp_path / "pickle.pt")
    assert export_main([str(tmp_path / "pickle.pt"), "--to", "timm", "--out", str(tmp_path / "x")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("omnimae-export: ") for line in lines)
    assert "no such checkpoint" in lines[0] and "not an OmniMAE checkpoint" in lines[1]
    assert "unsafe pickle refused" in lines[2]
    with pytest.raises(SystemExit) as done:
        export_main(["--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out
    assert all(fmt in usage for fmt in ("timm", "hf-videomae", "safetensors", "--num-frames", "--ema"))
