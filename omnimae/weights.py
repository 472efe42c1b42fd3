"""Model weights: our plain weight files and the official omnivore OmniMAE checkpoints.

`safe_load` is the one way this project reads a PyTorch file (torch.load(weights_only=True)); the
training state in omnimae.checkpoint reads its files with it too. Weight files hold the unwrapped
module's names: no `_orig_mod.` (torch.compile) or `module.` (DDP) components (`clean_name`).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.nn as nn

from omnimae.errors import CheckpointError


def safe_load(path) -> object:
    """torch.load(weights_only=True): tensors and plain containers only. A file holding anything else
    (arbitrary pickled objects could run code) is refused in one line, as is a torn file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} is not a checkpoint this project wrote (unsafe pickle refused; "
                              f"load only files you trust, with your own code)") from None
    except (RuntimeError, EOFError, IndexError, KeyError, ValueError) as e:  # garbage trips the unpickler
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is unreadable (torn or not a PyTorch file: {first})") from None


# Our parameter name prefix -> the official one (omnivore `OmniMAE(trunk, head)`). The encoder part
# is in every official checkpoint; the decoder part only in pretraining ones. First match wins.
_ENCODER_NAMES = (
    ("patch_embed.", "trunk.patch_embed.proj.1."),  # proj = Sequential(PadIm2Video, Conv3d)
    ("blocks.", "trunk.blocks."),
    ("norm.", "trunk.norm."),
)
_DECODER_NAMES = (
    ("mask_token", "trunk.mask_token"),  # official (1, D), ours (1, 1, D)
    ("decoder_embed.", "trunk.decoder.decoder_embed."),
    ("decoder_blocks.", "trunk.decoder.decoder_blocks."),
    ("decoder_norm.", "trunk.decoder.norm."),
    ("decoder_pred.", "head."),
)
# Fixed sinusoid tables the official model saves as buffers; ours are rebuilt from the config.
_ENCODER_TABLES = ("trunk.pos_embed",)
_DECODER_TABLES = ("trunk.decoder.pos_embed",)
_WRAPPER_KEYS = ("model", "state_dict")
_DROPPED_COMPONENTS = ("_orig_mod", "module")  # added by torch.compile / DDP wrappers


def load_official(model: nn.Module, path_or_state_dict) -> dict:
    """Load an official omnivore OmniMAE checkpoint (ViT-B/L/H) into our model.

    Pretraining checkpoints (`trunk.mask_token`, `trunk.decoder.*`, pixel `head`) fill the whole
    model. Fine-tuned ones (encoder only, classification `head`) fill the encoder; their head
    tensors come back in the result for a fine-tuning model to use. The fixed position tables are
    checked against ours, not copied. Unknown keys, missing keys and shape mismatches raise one
    ValueError listing them all.

    Returns {"kind": "pretrain" | "finetune", "loaded": tensors copied into the model,
             "head": {name: tensor} of the classification head (finetune) or None, "notes": [str]}.
    """
    state = read_state_dict(path_or_state_dict)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    kind = "pretrain" if any(k == "trunk.mask_token" or k.startswith("trunk.decoder.")
                             for k in state) else "finetune"
    ours = {clean_name(k): v for k, v in model.state_dict().items()}
    dim = ours["norm.weight"].shape[0]
    pos_embed = {clean_name(k): v for k, v in model.named_buffers()}["pos_embed"]  # [1, N, D]

    rules = _ENCODER_NAMES + (_DECODER_NAMES if kind == "pretrain" else ())
    tables = _ENCODER_TABLES + (_DECODER_TABLES if kind == "pretrain" else ())
    expected = {}  # official name -> our name
    for name in ours:
        official = _official_name(name, rules)
        if official is not None:
            expected[official] = name

    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")} \
        if kind == "finetune" else None
    known = set(expected) | set(tables) | {f"head.{k}" for k in head or {}}
    unknown = sorted(set(state) - known)
    missing = sorted(k for k in list(expected) + list(tables) if k not in state)
    mismatched, notes = [], []
    for official, name in expected.items():
        if official not in state:
            continue
        got, want = tuple(state[official].shape), tuple(ours[name].shape)
        if name == "mask_token" and got == (1, dim):
            continue  # official layout of the same tensor
        if got != want:
            mismatched.append(f"{official}: checkpoint {got} vs model {want}")
    for table in tables:
        if table in state:
            problem = _compare_table(state[table], pos_embed)
            if problem:
                mismatched.append(f"{table}: {problem}")
            elif state[table].shape[1] != pos_embed.shape[1]:
                notes.append(f"{table} has {state[table].shape[1]} rows, ours "
                             f"{pos_embed.shape[1]}: the shared rows agree")
    if kind == "finetune" and not any(t.ndim == 2 and t.shape[1] == dim for t in head.values()):
        mismatched.append(f"head: no classification weight of shape (num_classes, {dim}) among "
                          f"{ {k: tuple(v.shape) for k, v in head.items()} }")
    _raise_if_problems("official checkpoint does not fit the model", unknown, missing, mismatched)

    new_state = {name: state[official].reshape(ours[name].shape)
                 for official, name in expected.items()}
    _load_clean(model, new_state, strict=(kind == "pretrain"))
    return {"kind": kind, "loaded": len(new_state), "head": head, "notes": notes}


def save_model_weights(model: nn.Module, path) -> None:
    """Write the model's weights (unwrapped names, CPU tensors) to `path`, atomically."""
    state = {clean_name(k): v.detach().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # readers never see a half-written file


def load_model_weights(model: nn.Module, path) -> None:
    """Load a file written by save_model_weights; every key and shape must match."""
    state = {clean_name(k): v for k, v in read_state_dict(path).items()}
    ours = {clean_name(k): v for k, v in model.state_dict().items()}
    unknown = sorted(set(state) - set(ours))
    missing = sorted(set(ours) - set(state))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(ours[k].shape)}"
                  for k in sorted(set(state) & set(ours)) if state[k].shape != ours[k].shape]
    _raise_if_problems(f"{path} does not fit the model", unknown, missing, mismatched)
    _load_clean(model, state, strict=True)


def read_state_dict(path_or_state_dict) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from a file or dict, unwrapping "model"/"state_dict"/"trunk" nesting."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        if not os.path.exists(path_or_state_dict):
            raise FileNotFoundError(f"checkpoint {path_or_state_dict} does not exist")
        state = safe_load(path_or_state_dict)
    else:
        state = path_or_state_dict
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint holds a {type(state).__name__}, not a state dict")
    while True:
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if isinstance(state.get("trunk"), dict):
        # {"trunk": {...}, "head": {...}}: the halves of OmniMAE(trunk, head), names relative to them
        state = {f"{part}.{k}": v for part in ("trunk", "head")
                 for k, v in (state.get(part) or {}).items()}
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ValueError(f"checkpoint entries are not tensors: {bad[:10]}")
    return state


def _official_name(name: str, rules) -> str | None:
    for ours, official in rules:
        if name.startswith(ours):
            return official + name[len(ours):]
    return None


def clean_name(name: str) -> str:
    """A parameter name without the components compile/DDP wrappers add (`_orig_mod.`, `module.`)."""
    return ".".join(p for p in name.split(".") if p not in _DROPPED_COMPONENTS)


def _compare_table(table: torch.Tensor, ours: torch.Tensor) -> str | None:
    """Why an official position table disagrees with ours, or None (shared rows must agree)."""
    if table.ndim != 3 or table.shape[0] != 1 or table.shape[2] != ours.shape[2]:
        return f"shape {tuple(table.shape)} vs model (1, N, {ours.shape[2]})"
    rows = min(table.shape[1], ours.shape[1])
    diff = (table[:, :rows].float() - ours[:, :rows].detach().float().cpu()).abs().max().item()
    return f"values differ from the sinusoid table by {diff:.3g}" if diff > 1e-4 else None


def _raise_if_problems(what: str, unknown, missing, mismatched) -> None:
    problems = [f"{label} ({len(items)}): {items}" for label, items in
                (("unknown keys", unknown), ("missing keys", missing),
                 ("shape mismatches", mismatched)) if items]
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems))


def _load_clean(model: nn.Module, state: dict[str, torch.Tensor], strict: bool) -> None:
    """load_state_dict by unwrapped names, whatever compile/DDP wrappers the model carries."""
    actual = {clean_name(k): k for k in model.state_dict()}
    result = model.load_state_dict({actual[k]: v for k, v in state.items()}, strict=strict)
    if result.unexpected_keys:  # cannot happen after the checks above; fail loudly if it does
        raise ValueError(f"unexpected keys while loading: {result.unexpected_keys}")
