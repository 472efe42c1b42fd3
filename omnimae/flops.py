"""Compute saved by extreme masking, against the paper's section 4.2 figures.

    python -m omnimae.flops

For ViT-B/L/H, training FLOPs per sample (forward + backward = 3 x forward, the model's analytic
matmul count of what its forward computes, at BATCH samples per forward) with the full input (mask 0), with OmniMAE's masking (90% of image tokens, 95% of
video tokens) and with the earlier defaults (MAE: 75% on images, VideoMAE: 90% on videos; all with
OmniMAE's shared decoder, as the paper compares masking ratios, not decoders).

Two counts are printed: "all" is every matmul of a training step (patch embedding and encoder on
the visible tokens, decoder embedding, decoder on all tokens, pixel head on the hidden ones), what `flops_per_sample`
reports and what MFU should use. "blocks" counts the transformer blocks only (encoder and decoder,
attention included); it is the count that comes closest to the paper's ratios.
"""

from __future__ import annotations

import torch

from omnimae.config import DataConfig
from omnimae.model import MODALITIES, build_model

OURS = {m: getattr(DataConfig(), m).mask_ratio for m in MODALITIES}  # the paper's: the config defaults
EARLIER = {"image": 0.75, "video": 0.90}  # MAE on images, VideoMAE on videos

# Paper section 4.2: fewer FLOPs, full input over ours (image, video); MAE over ours (image);
# VideoMAE over ours (video).
PAPER = {
    "base": {"image_full": 5.9, "video_full": 7.8, "mae": 1.8, "videomae": 1.3},
    "large": {"image_full": 7.1, "video_full": 11.6, "mae": 2.0, "videomae": 1.5},
    "huge": {"image_full": 7.2, "video_full": 11.3, "mae": 2.0, "videomae": 1.4},
}
BLOCK_PARTS = ("encoder", "decoder")
# Samples per forward: the decoder's per-forward projection of the position table is shared by them.
BATCH = 256


def _training_flops(model, modality: str, mask_ratio: float, parts=None) -> int:
    breakdown = model.flops_breakdown(modality, mask_ratio, BATCH)
    return 3 * sum(v for k, v in breakdown.items() if parts is None or k in parts)


def _ratios(model, parts=None) -> dict[str, float]:
    f = {(m, r): _training_flops(model, m, r, parts)
         for m in OURS for r in (0.0, OURS[m], EARLIER[m])}
    return {
        "image_full": f["image", 0.0] / f["image", OURS["image"]],
        "video_full": f["video", 0.0] / f["video", OURS["video"]],
        "mae": f["image", EARLIER["image"]] / f["image", OURS["image"]],
        "videomae": f["video", EARLIER["video"]] / f["video", OURS["video"]],
    }


def compute_savings_table(sizes=("base", "large", "huge")) -> list[dict]:
    """One row per size: token counts, training GFLOPs per sample, and the saving ratios.

    Row keys: size, tokens {image, video}, gflops {image|video: {full, ours, earlier}},
    ratios (all matmuls), ratios_blocks (transformer blocks only), paper (None for non-paper sizes).
    Ratio keys: image_full, video_full (full input over ours), mae, videomae (earlier over ours).
    """
    rows = []
    for size in sizes:
        with torch.device("meta"):  # shapes only: no memory, no init cost
            model = build_model(size)
        gflops = {m: {name: model.flops_per_sample(m, ratio, BATCH) / 1e9
                      for name, ratio in (("full", 0.0), ("ours", OURS[m]), ("earlier", EARLIER[m]))}
                  for m in OURS}
        rows.append({
            "size": size,
            "tokens": {m: model.num_tokens(m) for m in OURS},
            "gflops": gflops,
            "ratios": _ratios(model),
            "ratios_blocks": _ratios(model, BLOCK_PARTS),
            "paper": PAPER.get(size),
        })
    return rows


def main() -> None:
    rows = compute_savings_table()
    print("Training GFLOPs per sample (forward + backward, all matmuls)")
    print(f"{'size':6} {'tokens img/vid':>15} {'image full/ours/MAE':>24} {'video full/ours/VideoMAE':>27}")
    for r in rows:
        gi, gv = r["gflops"]["image"], r["gflops"]["video"]
        print(f"{r['size']:6} {r['tokens']['image']:>7}/{r['tokens']['video']:<7} "
              f"{gi['full']:8.1f}/{gi['ours']:6.1f}/{gi['earlier']:6.1f}   "
              f"{gv['full']:9.1f}/{gv['ours']:7.1f}/{gv['earlier']:7.1f}")
    print()
    print(f"Fewer FLOPs with ours ({OURS['image']:.0%} image, {OURS['video']:.0%} video masking): "
          "all matmuls | blocks only | paper")
    header = ("full/ours img", "full/ours vid", "MAE/ours", "VideoMAE/ours")
    print(f"{'size':6} " + " ".join(f"{h:>22}" for h in header))
    for r in rows:
        cells = []
        for key in ("image_full", "video_full", "mae", "videomae"):
            paper = r["paper"][key] if r["paper"] else float("nan")
            cells.append(f"{r['ratios'][key]:5.2f} | {r['ratios_blocks'][key]:5.2f} | {paper:4.1f}")
        print(f"{r['size']:6} " + " ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
