"""`omnimae-export CHECKPOINT --to timm|hf-videomae|safetensors --out DIR`: the pretrained encoder
in formats other libraries load, for fine-tuning elsewhere.

CHECKPOINT is a pretraining or fine-tuning run's `step_XXXXXXXX/` folder (or its state.pt), a weight
file (omnimae.weights.save_model_weights), an official omnivore checkpoint (omnimae.weights.
load_official), or a folder this command wrote with `--to safetensors`. Every file is read with
omnimae.weights.safe_load (weights_only=True); everything is written as safetensors.

What each export reproduces is `encoder_output(model, x)`: the encoder on all tokens, no masking,
[B, N, D] in the t-major token order. For a pretraining model that is the encoder's normalized
output; for a fine-tuned Classifier it is the blocks' output (its `norm` belongs to the pooled
feature: mean over tokens -> norm -> head).

  ours                     timm VisionTransformer (images)      transformers VideoMAE (videos)
  patch_embed [D,3,t,h,w]  patch_embed.proj: summed over t      embeddings.patch_embeddings.projection
                           (an image is t equal frames)
  pos_embed (sinusoid)     pos_embed: slot 0's h*w rows         rebuilt from the config: the same table
  blocks.i.norm1/2         blocks.i.norm1/2                     encoder.layer.i.layernorm_before/after
  blocks.i.attn.qkv        blocks.i.attn.qkv                    ...attention.attention.query/key/value,
                                                                q_bias, v_bias: the key bias is dropped,
                                                                exactly (softmax is shift invariant)
  blocks.i.attn.proj, mlp  the same names                       attention.output.dense, intermediate/output
  norm (pretraining)       norm (fc_norm=False)                 layernorm (use_mean_pooling=False)
  norm, head (Classifier)  fc_norm, head (fc_norm=True)         fc_norm, classifier (use_mean_pooling=True)

timm: no class token, `global_pool="avg"`, LayerNorm eps 1e-6 everywhere, qkv bias. VideoMAE:
`layer_norm_eps=1e-6`; its classification `fc_norm` has torch's default eps 1e-5 (ours 1e-6), which
the tests measure. The bias names `q_bias`/`v_bias` are what transformers 4.x defines and 5.x
renames on load, so one folder serves both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from omnimae.errors import RunError
from omnimae.finetune.classifier import Classifier, load_encoder_weights
from omnimae.model import SIZES, OmniMAE, build_model
from omnimae.weights import clean_name, read_state_dict, safe_load

FORMATS = ("timm", "hf-videomae", "safetensors")
WEIGHTS = "model.safetensors"
TIMM_KWARGS = "timm_kwargs.json"
CONFIG = "config.json"  # our safetensors export and the transformers folder both use this name
OUR_FORMAT = "omnimae"


class ExportError(RunError):
    """A checkpoint that cannot be read or exported as asked (one line, exit 2)."""


@dataclass
class Loaded:
    """A model rebuilt from a checkpoint, and what it was read as."""

    model: OmniMAE | Classifier
    size: str  # a key of omnimae.model.SIZES
    source: str  # "run checkpoint (classifier)", "weight file (pretraining)", ... (for the progress line)
    note: str = ""  # a caveat for the progress line


# ---- reading ------------------------------------------------------------------------------------

def load_checkpoint(path, *, size: str | None = None, img_size: int | None = None,
                    num_frames: int | None = None, ema: bool = False) -> Loaded:
    """Rebuild the model a checkpoint holds: an OmniMAE (pretraining) or a Classifier (fine-tuned).

    The size, crop and frame count come from the arguments, else the run's config (step folders and
    state.pt), else the weights (width and depth pick the size; crop 224 and 16 frames by default,
    since a weight file does not record them). ema: a fine-tuning run's EMA weights instead.
    """
    path = Path(path)
    if path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file():
        if ema:
            raise ExportError(f"{path}: --ema needs a fine-tuning run's checkpoint")
        return _load_our_export(path, size=size, img_size=img_size, num_frames=num_frames)
    file = path / "state.pt" if path.is_dir() else path
    if not file.is_file():
        raise ExportError(f"{path}: no such checkpoint" + (" (the folder has no state.pt)" if path.is_dir() else ""))
    raw = safe_load(file)
    config = raw.get("config") if isinstance(raw, dict) and isinstance(raw.get("config"), dict) else {}
    try:
        if ema:
            ema_state = (raw.get("extra") or {}).get("ema") if isinstance(raw, dict) else None
            if not ema_state:
                raise ExportError(f"{path}: no EMA weights (only fine-tuning runs with optim.ema_decay > 0 have them)")
            raw = ema_state["module"]
        state = {clean_name(k): v for k, v in read_state_dict(raw).items()}
        official = any(k.startswith("trunk.") for k in state)
        run_model = config.get("model") or {}
        name, patch = _size_of(state, official, size or run_model.get("name"))
        options = dict(img_size=img_size or run_model.get("img_size") or 224,
                       num_frames=num_frames or run_model.get("num_frames") or 16, patch=patch)
        if "norm_pix_loss" in run_model:
            options["norm_pix_loss"] = bool(run_model["norm_pix_loss"])
        encoder = build_model(name, **options)
        classes = _head_classes(state, official, encoder.config.dim)
        if classes:
            model = Classifier.from_pretrained(encoder, classes, state)
        else:
            load_encoder_weights(encoder, state)
            model = encoder
    except (ValueError, KeyError) as e:
        raise ExportError(f"{path}: {e}") from None
    kind = "classifier" if classes else "pretraining"
    source = f"official {kind} checkpoint" if official else \
        f"run checkpoint ({kind})" if config else f"weight file ({kind})"
    guessed = not (img_size or run_model.get("img_size")) or not (num_frames or run_model.get("num_frames"))
    return Loaded(model, name, source + (", EMA" if ema else ""),
                  "defaults: the file does not record them; --img-size, --num-frames" if guessed else "")


def _size_of(state: dict, official: bool, asked: str | None) -> tuple[str, tuple[int, int, int]]:
    """The size name (asked, else the one whose width and depth the weights have) and the patch."""
    prefix = "trunk." if official else ""
    norm = f"{prefix}norm.weight"
    conv = "trunk.patch_embed.proj.1.weight" if official else "patch_embed.weight"  # [D, 3, pt, ph, pw]
    if norm not in state or conv not in state:
        raise ValueError(f"no {norm} / {conv}: not an OmniMAE checkpoint")
    dim = state[norm].shape[0]
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(rf"{prefix}blocks\.(\d+)\.", k))), default=-1)
    patch = tuple(int(p) for p in state[conv].shape[2:])
    if asked:
        return asked, patch
    names = [n for n, s in SIZES.items() if (s["dim"], s["depth"]) == (dim, depth)]
    if not names:
        raise ValueError(f"width {dim} and depth {depth} match no size of {sorted(SIZES)} (pass --size)")
    return names[0], patch


def _head_classes(state: dict, official: bool, dim: int) -> int:
    """Classes of a classification head in the checkpoint; 0 for a pretraining one (pixel head)."""
    if official:
        if any(k == "trunk.mask_token" or k.startswith("trunk.decoder.") for k in state):
            return 0
        weights = [v for k, v in state.items() if k.startswith("head.") and v.ndim == 2 and v.shape[1] == dim]
        return weights[0].shape[0] if weights else 0  # none: load_official names the problem
    if "head.weight" in state and not any(k.startswith("decoder") for k in state):
        return state["head.weight"].shape[0]
    return 0


# ---- what every export reproduces ------------------------------------------------------------------

@torch.no_grad()
def encoder_output(model: OmniMAE | Classifier, x: torch.Tensor) -> torch.Tensor:
    """The encoder on every token of x ([B, 3, H, W] or [B, 3, T, H, W]): [B, N, D].

    OmniMAE: forward_encoder with nothing hidden (the final norm applied). Classifier: its blocks'
    output (its norm normalizes the pooled feature, not the tokens).
    """
    if isinstance(model, Classifier):
        return model.forward_tokens(x)
    t, h, w = model.token_grid(x.shape)
    nothing_hidden = torch.zeros(x.shape[0], t * h * w, dtype=torch.bool, device=x.device)  # [B, N]
    return model.forward_encoder(x, nothing_hidden, t * h * w)[0]


def _our_state(model) -> dict[str, torch.Tensor]:
    return {clean_name(k): v.detach().float().cpu() for k, v in model.state_dict().items()}


def _num_classes(model) -> int:
    return model.num_classes if isinstance(model, Classifier) else 0


# ---- timm ---------------------------------------------------------------------------------------

def to_timm(model: OmniMAE | Classifier, head: bool = True) -> tuple[dict, dict]:
    """(state dict, VisionTransformer kwargs): `VisionTransformer(**kwargs).load_state_dict(state)` is
    strict, and its forward_features(image) is encoder_output(model, image). A Classifier keeps its
    pooled norm as fc_norm and (head=True) its head."""
    c, ours = model.config, _our_state(model)
    classifier = isinstance(model, Classifier)
    _, h, w = model.grid
    state = {"patch_embed.proj.weight": ours["patch_embed.weight"].sum(dim=2),  # [D, 3, ph, pw]
             "patch_embed.proj.bias": ours["patch_embed.bias"],
             "pos_embed": model.pos_embed[:, :h * w].detach().float().cpu()}  # [1, h*w, D]: slot 0
    state.update({k: v for k, v in ours.items() if k.startswith("blocks.")})  # the same names
    norm = "fc_norm" if classifier else "norm"
    state.update({f"{norm}.weight": ours["norm.weight"], f"{norm}.bias": ours["norm.bias"]})
    keep_head = classifier and head
    if keep_head:
        state.update({"head.weight": ours["head.weight"], "head.bias": ours["head.bias"]})
    kwargs = dict(img_size=c.img_size, patch_size=list(c.patch[1:]), in_chans=3,
                  num_classes=model.num_classes if keep_head else 0, global_pool="avg",
                  embed_dim=c.dim, depth=c.depth, num_heads=c.heads, mlp_ratio=c.mlp_ratio, qkv_bias=True,
                  class_token=False, no_embed_class=True, pos_embed="learn", fc_norm=classifier,
                  norm_layer="layernorm")  # timm's LayerNorm: eps 1e-6, as ours
    return state, kwargs


# ---- transformers VideoMAE ----------------------------------------------------------------------

def to_videomae(model: OmniMAE | Classifier) -> tuple[dict, dict]:
    """(state dict, config.json) of a transformers VideoMAEModel (a Classifier: a
    VideoMAEForVideoClassification), whose last_hidden_state on pixel_values [B, T, 3, H, W] with
    T = the model's num_frames is encoder_output(model, video). The sinusoid table is a function of
    the token index alone, so a model rebuilt with another num_frames (a multiple of the tubelet; 2
    for images) exports a folder for that clip length."""
    c, ours = model.config, _our_state(model)
    pt, ph, pw = c.patch
    if ph != pw:
        raise ExportError(f"VideoMAE takes square patches; this model's patch is {c.patch}")
    classifier = isinstance(model, Classifier)
    base = "videomae." if classifier else ""  # a head model's names carry the base model's prefix
    d = c.dim
    state = {f"{base}embeddings.patch_embeddings.projection.weight": ours["patch_embed.weight"],
             f"{base}embeddings.patch_embeddings.projection.bias": ours["patch_embed.bias"]}
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for i in range(c.depth):
        ours_i, theirs = f"blocks.{i}.", f"{base}encoder.layer.{i}."
        for our_name, their_name in names.items():
            for p in ("weight", "bias"):
                state[f"{theirs}{their_name}.{p}"] = ours[f"{ours_i}{our_name}.{p}"]
        weight, bias = ours[f"{ours_i}attn.qkv.weight"], ours[f"{ours_i}attn.qkv.bias"]  # [3D, D], [3D]
        attention = f"{theirs}attention.attention."
        for j, part in enumerate(("query", "key", "value")):
            state[f"{attention}{part}.weight"] = weight[j * d:(j + 1) * d]
        # The key bias adds the same q.b_k to every score of a query: softmax ignores it.
        state[f"{attention}q_bias"], state[f"{attention}v_bias"] = bias[:d], bias[2 * d:]
    if classifier:
        state.update({"fc_norm.weight": ours["norm.weight"], "fc_norm.bias": ours["norm.bias"],
                      "classifier.weight": ours["head.weight"], "classifier.bias": ours["head.bias"]})
    else:
        state.update({"layernorm.weight": ours["norm.weight"], "layernorm.bias": ours["norm.bias"]})
    config = {
        "model_type": "videomae",
        "architectures": ["VideoMAEForVideoClassification" if classifier else "VideoMAEModel"],
        "image_size": c.img_size, "patch_size": ph, "num_channels": 3, "num_frames": c.num_frames,
        "tubelet_size": pt, "hidden_size": d, "num_hidden_layers": c.depth, "num_attention_heads": c.heads,
        "intermediate_size": int(d * c.mlp_ratio), "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "layer_norm_eps": 1e-6, "qkv_bias": True,
        # False: the final norm on every token (our pretrained encoder's output). A fine-tuned
        # classifier pools first (True: fc_norm on the mean, as ours).
        "use_mean_pooling": classifier, "norm_pix_loss": c.norm_pix_loss, "torch_dtype": "float32",
    }
    if classifier:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(model.num_classes)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(model.num_classes)}
    return state, config


# ---- our own format -----------------------------------------------------------------------------

def to_omnimae(model: OmniMAE | Classifier, size: str) -> tuple[dict, dict]:
    """(state dict, config.json) in our names: `load_safetensors` rebuilds the model with build_model.
    A pretraining model keeps its decoder (pictures, further pretraining); a Classifier its head."""
    config = {"format": OUR_FORMAT, "kind": "classifier" if isinstance(model, Classifier) else "omnimae",
              "size": size, "model": asdict(model.config), "num_classes": _num_classes(model)}
    return _our_state(model), config


def load_safetensors(folder) -> OmniMAE | Classifier:
    """The model an `omnimae-export --to safetensors` folder holds, every key and shape checked."""
    return _load_our_export(Path(folder)).model


def _load_our_export(folder: Path, *, size=None, img_size=None, num_frames=None) -> Loaded:
    config = json.loads((folder / CONFIG).read_text())
    if config.get("format") != OUR_FORMAT:
        raise ExportError(f"{folder}/{CONFIG} is not an omnimae export (format {config.get('format')!r})")
    options = dict(config["model"])
    options.update({k: v for k, v in (("img_size", img_size), ("num_frames", num_frames)) if v})
    size = size or config["size"]
    try:
        encoder = build_model(size, **options)
        state = load_file(folder / WEIGHTS)
        if config["kind"] == "classifier":
            model = Classifier.from_pretrained(encoder, config["num_classes"], state)
        else:
            load_encoder_weights(encoder, state)
            model = encoder
    except ValueError as e:
        raise ExportError(f"{folder}: {e}") from None
    return Loaded(model, size, f"omnimae export ({config['kind']})")


# ---- writing ------------------------------------------------------------------------------------

def export(loaded: Loaded, fmt: str, out_dir, *, head: bool = True) -> list[Path]:
    """Writes the export of `fmt` (one of FORMATS) into out_dir; returns the files written."""
    if fmt == "timm":
        state, meta, meta_name = *to_timm(loaded.model, head=head), TIMM_KWARGS
    elif fmt == "hf-videomae":
        state, meta, meta_name = *to_videomae(loaded.model), CONFIG
    elif fmt == "safetensors":
        state, meta, meta_name = *to_omnimae(loaded.model, loaded.size), CONFIG
    else:
        raise ExportError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        weights = out_dir / WEIGHTS
        # Contiguous copies: slices (q/k/v of qkv) may not share storage in a safetensors file.
        # "format": "pt" is what transformers' loader asks of a safetensors file's metadata.
        save_file({k: v.contiguous().clone() for k, v in state.items()}, weights, metadata={"format": "pt"})
        os.chmod(weights, 0o666 & ~_umask())  # safetensors writes 0600; an export is for sharing
        (out_dir / meta_name).write_text(json.dumps(meta, indent=2) + "\n")
    except OSError as e:
        raise ExportError(f"cannot write {out_dir}: {e.strerror or e}") from None
    return [weights, out_dir / meta_name]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- command line -------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="omnimae-export",
        description="Export a pretrained or fine-tuned OmniMAE encoder for other libraries: timm (images: "
                    "model.safetensors + timm_kwargs.json for timm.models.vision_transformer."
                    "VisionTransformer), hf-videomae (videos: a folder transformers.VideoMAEModel."
                    "from_pretrained loads) or safetensors (this project's model, omnimae.export."
                    "load_safetensors). CHECKPOINT: a run's step_XXXXXXXX/ folder (pretraining or "
                    "fine-tuning), a weight file, an official omnivore checkpoint, or a safetensors export.",
        epilog="example: omnimae-export runs/demo/step_00000256 --to hf-videomae --out export/demo_videomae",
    )
    p.add_argument("checkpoint", help="step_XXXXXXXX/ folder, state.pt, weight file or official checkpoint")
    p.add_argument("--to", required=True, choices=FORMATS, help="the format to write")
    p.add_argument("--out", required=True, help="folder to write (created; existing files of the export replaced)")
    p.add_argument("--size", choices=sorted(SIZES), help="model size (default: the run's, else from the weights)")
    p.add_argument("--img-size", type=int, help="crop side the model was trained at (default: the run's, else 224)")
    p.add_argument("--num-frames", type=int,
                   help="clip length (default: the run's, else 16); for hf-videomae the frames the folder "
                        "takes (an image model: 2, the tubelet)")
    p.add_argument("--ema", action="store_true", help="a fine-tuning run: export its EMA weights")
    p.add_argument("--no-head", action="store_true", help="a fine-tuned classifier to timm: leave out the head")
    return p


def export_main(argv: list[str] | None = None) -> int:
    from omnimae.cli import run_guarded

    args = _parser().parse_args(argv)

    def body() -> int:
        loaded = load_checkpoint(args.checkpoint, size=args.size, img_size=args.img_size,
                                 num_frames=args.num_frames, ema=args.ema)
        c = loaded.model.config
        note = f" ({loaded.note})" if loaded.note else ""
        print(f"read {args.checkpoint}: {loaded.source}, {loaded.size}, {c.img_size} px, {c.num_frames} frames{note}")
        files = export(loaded, args.to, args.out, head=not args.no_head)
        print(f"wrote {', '.join(str(f) for f in files)}")
        return 0

    return run_guarded("omnimae-export", body)


if __name__ == "__main__":
    sys.exit(export_main())
