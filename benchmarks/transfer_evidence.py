"""Does pretraining help? The demo's pretrained encoder vs the same architecture from random init.

On generated motion videos (10 classes that need the motion direction: left/right, up/down,
towards/away, appear/disappear, clockwise/counter-clockwise) made for this check (`--data`, by
default 1,000 train / 200 val videos from another seed than the demo's pretraining videos, so the
accuracies rest on 200 test videos, not the demo's 40), for each initialization:
1. frozen features of the centre clip (encoder output averaged over space per temporal slot,
   slots in order, L2-normalized: `eval.probe_pool=time`, since a mean over all tokens cannot tell
   a motion from its reverse) of the train split -> a linear probe and a weighted k-NN (k=20),
   top-1 on the val split;
2. the same fine-tune for both (configs/ft_motion.yaml: 40 epochs; same steps, batch, seed, data
   order, augmentation), tested with 5 clips x 3 crops; top-1 of the weights and of their EMA.
Prints a markdown table and writes JSON (with the pretraining loss of the checkpoint used) and a
PNG of both arms' fine-tune loss beside it.

    python benchmarks/transfer_evidence.py runs/demo/step_00000256           # ~55 min on 2 CPU cores
    python benchmarks/transfer_evidence.py CKPT --seeds 0,1,2 --out benchmarks/out/transfer.json
    python benchmarks/transfer_evidence.py CKPT --probe-only --seeds 0,1,2    # probes only, ~2 min

The fine-tune config, the architecture read from the checkpoint (model name, img_size, num_frames)
and any `key=value` overrides apply to both arms alike.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from omnimae.finetune.config import load_finetune_config  # noqa: E402
from omnimae.finetune.train import finetune  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _seed_list(text: str) -> list[int]:
    """`--seeds 0,1,2`: one argument, so `key=value` overrides may follow it."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return seeds


def _metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl file ([] when it is missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pretraining_info(checkpoint: Path) -> dict:
    """The checkpoint's model config, step and the pretraining losses logged at (or before) that step."""
    state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)
    model = state["config"]["model"]
    info = {"checkpoint": str(checkpoint), "step": int(state["step"]), "model": model["name"],
            "img_size": model["img_size"], "num_frames": model["num_frames"],
            "norm_pix_loss": model.get("norm_pix_loss"),
            "mask_ratio": {k: state["config"]["data"][k]["mask_ratio"] for k in ("image", "video")}}
    rows = _metrics(checkpoint.parent / "metrics.jsonl")
    for key in ("loss/video", "loss/image"):
        logged = [r for r in rows if key in r and r["step"] <= info["step"]]
        if logged:
            info[key] = {"first": logged[0][key], "last": logged[-1][key], "at_step": logged[-1]["step"]}
    return info


def run_arm(config: str, overrides: list[str], *, weights: str, tag: str, out_dir: Path, seed: int,
            fine_tune: bool = True) -> dict:
    """Probe (+ fine-tune unless fine_tune=False) of one initialization; returns the numbers."""
    common = overrides + [f"model.pretrained={weights}", f"train.seed={seed}", f"train.out_dir={out_dir}",
                          f"train.run_name={tag}_seed{seed}", "train.resume=never"]
    cfg = load_finetune_config(config, common)
    t0 = time.perf_counter()
    run = finetune(cfg, mode="probe")
    probe = json.loads((run / "probe.json").read_text())
    row = {"init": tag, "seed": seed, "linear_top1": probe["linear_top1"], "knn_top1": probe["knn_top1"],
           "linear_train_top1": probe["linear_train_top1"], "probe_wall_s": time.perf_counter() - t0,
           "test_items": probe["test_items"]}
    if not fine_tune:
        return row
    t0 = time.perf_counter()
    run = finetune(cfg, mode="train")
    results = json.loads((run / "results.json").read_text())
    final = results["final"]
    row.update({"ft_top1": final["test"]["top1"], "ft_top5": final["test"]["top5"],
                "ft_steps": results["steps"], "ft_batch": cfg.train.batch_size, "ft_wall_s": time.perf_counter() - t0,
                "test_items": final["items"], "views": final["views"], "run": str(run)})
    if "test_ema" in final:
        row["ft_ema_top1"] = final["test_ema"]["top1"]
    losses = [r["loss"] for r in _metrics(run / "metrics.jsonl") if "loss" in r]
    if losses:  # has the fine-tune learned at all? ln(10) = 2.30 is chance for 10 classes
        row["ft_train_loss_last"] = losses[-1]
    return row


def table(rows: list[dict]) -> str:
    """Mean (± std over seeds) per initialization: accuracies in %, the fine-tune's last train loss."""
    cols = [("linear_top1", "linear probe top-1", 100, 1), ("knn_top1", "k-NN top-1", 100, 1),
            ("ft_top1", "fine-tune top-1 (5x3 views)", 100, 1), ("ft_ema_top1", "fine-tune EMA top-1", 100, 1),
            ("ft_top5", "fine-tune top-5", 100, 1), ("ft_train_loss_last", "fine-tune train loss", 1, 2)]
    cols = [c for c in cols if any(c[0] in r for r in rows)]
    lines = ["| init | " + " | ".join(c[1] for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for tag in dict.fromkeys(r["init"] for r in rows):
        mine = [r for r in rows if r["init"] == tag]
        cells = []
        for key, _, scale, digits in cols:
            values = [scale * r[key] for r in mine if key in r]
            cell = f"{statistics.mean(values):.{digits}f}"
            if len(values) > 1:
                cell += f" ± {statistics.stdev(values):.{digits}f}"
            cells.append(cell)
        lines.append(f"| {tag} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_losses(curves: list[tuple[str, str, Path]], path: Path, title: str) -> None:
    """Fine-tune training loss against step, one line per (label, init, metrics.jsonl) curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = {"pretrained": "tab:blue", "random init": "tab:orange"}
    styles = ["-", "--", ":", "-."]
    seen: dict[str, int] = {}
    for label, init, metrics in curves:
        points = [(r["step"], r["loss"]) for r in _metrics(metrics) if "loss" in r]
        if not points:
            continue
        n = seen[init] = seen.get(init, -1) + 1
        ax.plot(*zip(*points), styles[n % len(styles)], color=colors.get(init, "tab:gray"), label=label, linewidth=1.2)
    ax.axhline(math.log(10), color="black", linestyle=":", linewidth=1, label="chance (ln 10)")
    ax.set_xlabel("fine-tune step")
    ax.set_ylabel("training loss (label smoothing 0.1)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a pretraining run's step_XXXXXXXX folder (e.g. runs/demo/step_00000256)")
    p.add_argument("--config", default=str(REPO / "configs/ft_motion.yaml"), help="fine-tuning config for both arms")
    p.add_argument("--seeds", type=_seed_list, default=[0],
                   help="comma-separated fine-tune / probe seeds, e.g. 0,1,2 (mean ± std)")
    p.add_argument("--out-dir", default="runs/transfer_evidence", help="run folders of the fine-tunes")
    p.add_argument("--out", default="benchmarks/out/transfer_evidence.json", help="JSON result")
    p.add_argument("--data", default="data/transfer", help="the labelled videos (generated if missing)")
    p.add_argument("--train-videos", type=int, default=1000, help="train videos generated")
    p.add_argument("--val-videos", type=int, default=200, help="val (test) videos generated")
    p.add_argument("--workers", type=int, default=2, help="processes generating the videos (if missing)")
    p.add_argument("--probe-only", action="store_true",
                   help="frozen-feature probes only, no fine-tune (~2 min instead of ~55)")
    p.add_argument("overrides", nargs="*", help="key=value fine-tune overrides for both arms")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_intermixed_args(argv)  # overrides may follow the options

    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "state.pt").is_file():
        p.error(f"{checkpoint}: not a checkpoint folder (no state.pt)")
    info = pretraining_info(checkpoint)
    arch = [f"model.name={info['model']}", f"model.img_size={info['img_size']}",
            f"model.num_frames={info['num_frames']}"]
    from loaders.devtools.synthetic import make_demo_data

    # Seed 1: other videos than the demo's (seed 0) that pretrained the encoder; same classes.
    made = make_demo_data(video_root=args.data, num_train_videos=args.train_videos,
                          num_val_videos=args.val_videos, seed=1, workers=args.workers)
    print(f"data: {args.data} ({made.counts['video_train']} train / {made.counts['video_val']} val videos"
          f"{', reused' if made.reused else ''})")
    overrides = arch + [f"data.root={args.data}", "eval.probe_pool=time"] + args.overrides
    print(f"pretrained: {json.dumps(info)}")
    rows = []
    for seed in args.seeds:
        for tag, weights in (("pretrained", str(checkpoint)), ("random init", "")):
            row = run_arm(args.config, overrides, weights=weights, tag=tag.replace(" ", "_"),
                          out_dir=Path(args.out_dir), seed=seed, fine_tune=not args.probe_only)
            row["init"] = tag
            rows.append(row)
            print(json.dumps(row))
    md = table(rows)
    command = "python benchmarks/transfer_evidence.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print()
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "config": args.config, "overrides": overrides,
                               "pretraining": info, "rows": rows, "table": md,
                               "torch": torch.__version__}, indent=2))
    print(f"\nwritten: {out}")
    curves = [(f"{r['init']}, seed {r['seed']}: test top-1 {100 * r['ft_top1']:.1f}%", r["init"],
               Path(r["run"]) / "metrics.jsonl") for r in rows if "run" in r]
    if curves:
        picture = out.with_suffix(".png")
        plot_losses(curves, picture, f"Fine-tune loss, {info['model']} pretrained {info['step']} steps vs random "
                                     f"init ({rows[0]['ft_steps']} steps of {rows[0]['ft_batch']} clips)")
        print(f"written: {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
