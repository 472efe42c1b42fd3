"""`omnimae-data`: make synthetic datasets and index folders into manifests.

    omnimae-data synth video ROOT --train 200 --val 40 --codec vp9
    omnimae-data synth image ROOT --train 40 --val 10
    omnimae-data synth demo ROOT
    omnimae-data index ROOT --layout auto --split train [--out PATH] [--base-url s3://bucket/ssv2]
    omnimae-data index ROOT --layout flat      # a folder of unlabelled videos or images

Errors (a usage error, a folder with nothing indexable) are one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from collections import Counter

from loaders import manifest
from loaders.devtools import synthetic
from loaders.errors import LoaderError

PROG = "omnimae-data"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exits 2."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _integer(text: str, minimum: int, even: bool = False) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    if even and value % 2:
        raise argparse.ArgumentTypeError(f"must be even (yuv420p), got {value}")
    return value


def _positive(text: str) -> int:
    return _integer(text, 1)


def _count(text: str) -> int:
    return _integer(text, 0)


def _even(text: str) -> int:
    return _integer(text, 2, even=True)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; the same seed writes the same files (default 0)")
    parser.add_argument("--workers", type=_positive, default=1,
                        help="processes generating files in parallel (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Make synthetic datasets and manifests for OmniMAE.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                     metavar="{synth,index}")

    synth = commands.add_parser("synth", help="write a synthetic dataset")
    kinds = synth.add_subparsers(dest="kind", required=True, parser_class=_Parser,
                                 metavar="{video,image,demo}")

    video = kinds.add_parser("video", help="SSv2-like videos: videos/<id>.webm + labels/train/"
                                           "validation JSON")
    video.add_argument("root", metavar="ROOT", help="output folder (created if missing)")
    video.add_argument("--train", type=_count, default=200, help="training videos (default 200)")
    video.add_argument("--val", type=_count, default=40, help="validation videos (default 40)")
    video.add_argument("--codec", choices=sorted(synthetic.CODECS), default="vp9",
                       help="vp9 (WebM, like SSv2) or h264 (MP4) (default vp9)")
    video.add_argument("--height", type=_even, default=240, help="frame height, even (default 240)")
    video.add_argument("--width", type=_even, default=None,
                       help="frame width, even (default: per video, 4:3, 3:2 or 16:9)")
    video.add_argument("--fps", type=float, default=12.0, help="frames per second (default 12)")
    video.add_argument("--min-s", type=float, default=2.0, help="shortest video, s (default 2)")
    video.add_argument("--max-s", type=float, default=6.0, help="longest video, s (default 6)")
    video.add_argument("--stamp-frame-index", action="store_true",
                       help="draw each frame's index as black/white blocks in the top-left corner")
    _add_common(video)

    image = kinds.add_parser("image", help="ImageNet-like JPEGs: {train,val}/<class>/<file>.JPEG")
    image.add_argument("root", metavar="ROOT", help="output folder (created if missing)")
    image.add_argument("--train", type=_count, default=40,
                       help="training images per class (default 40)")
    image.add_argument("--val", type=_count, default=10,
                       help="validation images per class (default 10)")
    image.add_argument("--min-size", type=_positive, default=160,
                       help="smallest image side in pixels (default 160)")
    image.add_argument("--max-size", type=_positive, default=256,
                       help="largest image side in pixels (default 256)")
    _add_common(image)

    demo = kinds.add_parser("demo", help="small video + image sets with manifests for the CPU "
                                         "demo; does nothing if already complete")
    demo.add_argument("root", metavar="ROOT", help="output folder (created if missing)")
    demo.add_argument("--codec", choices=sorted(synthetic.CODECS), default="vp9",
                      help="video codec (default vp9)")
    _add_common(demo)

    index = commands.add_parser("index", help="probe a dataset folder and write a manifest")
    index.add_argument("root", metavar="ROOT", help="dataset folder")
    index.add_argument("--layout", choices=manifest.LAYOUTS, default="auto",
                       help="folder layout (default auto: ssv2 if a labels json is found, "
                            "flat (unlabelled) if the folder holds media files but no class "
                            "folders, imagenet if train/ or val/ exists, else class folders)")
    index.add_argument("--split", choices=("train", "val", "validation", "test"),
                       default="train", help="split to index; val = validation (default train)")
    index.add_argument("--out", default=None,
                       help="manifest path or URL (default ROOT/manifest_<split>.jsonl)")
    uris = index.add_mutually_exclusive_group()
    uris.add_argument("--base-url", default=None,
                      help="write uris as this prefix + the path below ROOT, e.g. "
                           "s3://bucket/ssv2 for a copy of ROOT there (default: absolute paths)")
    uris.add_argument("--relative", action="store_true",
                      help="write uris relative to the manifest's folder")
    index.add_argument("--workers", type=_positive, default=4,
                       help="threads probing files (default 4)")
    index.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _synth(args) -> None:
    progress = not args.no_progress
    if args.kind == "video":
        result = synthetic.make_video_dataset(
            args.root, args.train, args.val, seed=args.seed, codec=args.codec,
            height=args.height, width=args.width, fps=args.fps, min_s=args.min_s,
            max_s=args.max_s, workers=args.workers, progress=progress,
            stamp_frame_index=args.stamp_frame_index)
        what = "videos"
    elif args.kind == "image":
        if args.min_size > args.max_size:
            raise ValueError(f"--min-size {args.min_size} > --max-size {args.max_size}")
        result = synthetic.make_image_dataset(
            args.root, args.train, args.val, seed=args.seed,
            size=(args.min_size, args.max_size), workers=args.workers, progress=progress)
        what = "images"
    else:
        result = synthetic.make_demo_data(args.root, seed=args.seed, codec=args.codec,
                                          workers=args.workers, progress=progress)
        if result.reused:
            print(f"demo data already complete in {result.root}")
            return
        what = "files"
    rate = result.total / result.elapsed_s if result.elapsed_s > 0 else float("inf")
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    print(f"wrote {result.total} {what} ({counts}) to {result.root} in {result.elapsed_s:.1f} s "
          f"({rate:.1f}/s)")
    for name, path in result.manifests.items():
        print(f"  manifest {name}: {path}")


def _index(args) -> None:
    split = "val" if args.split == "validation" else args.split
    out = args.out or os.path.join(args.root, f"manifest_{split}.jsonl")
    result = manifest.index_folder(args.root, layout=args.layout, split=args.split,
                                   base_url=args.base_url, relative=args.relative, out=out,
                                   workers=args.workers, progress=not args.no_progress)
    for uri, reason in result.skipped[:20]:
        print(f"skipped {uri}: {reason}", file=sys.stderr)
    if len(result.skipped) > 20:
        print(f"... and {len(result.skipped) - 20} more skipped", file=sys.stderr)
    m = result.manifest
    labels = "unlabelled" if m.class_names is None and m.num_classes == 0 else \
        f"{m.num_classes} classes"
    codecs = ", ".join(f"{c} {n}" for c, n in Counter(e.codec for e in m).most_common())
    print(f"{len(m)} entries, {labels}, {len(result.skipped)} skipped "
          f"({result.layout} layout; {codecs}) -> {out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `omnimae-data`; returns 0, or exits 2 with a one-line error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "synth":
            _synth(args)
        else:
            _index(args)
    except (LoaderError, ValueError, OSError, RuntimeError) as error:
        message = " ".join(str(error).split())  # one line, whatever the exception held
        parser.exit(2, f"{PROG}: error: {message}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
