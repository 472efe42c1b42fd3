"""`omnimae-data`: make synthetic datasets and index folders into manifests.

    omnimae-data synth video ROOT --train 200 --val 40 --codec vp9
    omnimae-data synth image ROOT --train 40 --val 10
    omnimae-data synth demo ROOT
    omnimae-data index ROOT --layout auto --split train [--out PATH] [--base-url s3://bucket/ssv2]
    omnimae-data index ROOT --layout flat      # a folder of unlabelled videos or images
    omnimae-data index ROOT --layout shards    # *.tar shards (webdataset, tar) -> ROOT/shards_train.jsonl
    omnimae-data shard SRC DEST --shard-size 64M --workers 8 [--rank R --world-size N]

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
from loaders.shards.indexer import index_shards, looks_like_shards
from loaders.shards.writer import shard_dataset

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


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _bytes(text: str) -> int:
    """`64M`, `1G`, `500000`: bytes (K, M, G are powers of 1024)."""
    number, unit = text.strip().upper().rstrip("B").rstrip("I"), ""
    if number and number[-1] in _UNITS:
        number, unit = number[:-1], number[-1]
    try:
        value = int(float(number) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 64M or 1G, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _from_env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; the same seed writes the same files (default 0)")
    parser.add_argument("--workers", type=_positive, default=1,
                        help="processes generating files in parallel (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Make synthetic datasets, manifests and tar shards for OmniMAE.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                     metavar="{synth,index,shard}")

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

    index = commands.add_parser("index", help="probe a dataset folder and write a manifest, or index tar "
                                              "shards and write a shard index")
    index.add_argument("root", metavar="ROOT", help="dataset folder; for shards also a URL, a .tar or a "
                                                    "pattern such as 'https://host/train-{000000..000099}.tar'")
    index.add_argument("--layout", choices=manifest.LAYOUTS + ("shards",), default="auto",
                       help="folder layout (default auto: shards if ROOT is a URL, a pattern or a folder "
                            "holding *.tar files; ssv2 if a labels json is found, "
                            "flat (unlabelled) if the folder holds media files but no class "
                            "folders, imagenet if train/ or val/ exists, else class folders)")
    index.add_argument("--split", choices=("train", "val", "validation", "test"),
                       default="train", help="split to index; val = validation (default train)")
    index.add_argument("--out", default=None,
                       help="manifest path or URL (default ROOT/manifest_<split>.jsonl; shards: "
                            "ROOT/shards_<split>.jsonl)")
    uris = index.add_mutually_exclusive_group()
    uris.add_argument("--base-url", default=None,
                      help="write uris as this prefix + the path below ROOT, e.g. "
                           "s3://bucket/ssv2 for a copy of ROOT there (default: absolute paths)")
    uris.add_argument("--relative", action="store_true",
                      help="write uris relative to the manifest's folder")
    index.add_argument("--workers", type=_positive, default=4,
                       help="threads probing files (default 4)")
    index.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    shard = commands.add_parser("shard", help="write an indexed data set as WebDataset tar shards and their "
                                              "shard index")
    shard.add_argument("src", metavar="SRC", help="data set root holding manifest_<split>.jsonl, or a "
                                                  "manifest; a folder or any fsspec URL")
    shard.add_argument("dest", metavar="DEST", help="folder or fsspec URL for the shards and shards_<split>.jsonl")
    shard.add_argument("--split", choices=("train", "val", "test"), default="train",
                       help="split whose manifest is sharded (default train)")
    size = shard.add_mutually_exclusive_group()
    size.add_argument("--shard-size", type=_bytes, default=None,
                      help="about this many bytes per shard: 64M, 1G, ... (default 64M)")
    size.add_argument("--per-shard", type=_positive, default=None, help="items per shard")
    shard.add_argument("--workers", type=_positive, default=4, help="shards built and written at once (default 4)")
    shard.add_argument("--max-in-flight", type=_positive, default=64,
                       help="source reads in flight (default 64)")
    shard.add_argument("--rank", type=_count, default=_from_env("RANK", 0),
                       help="this process writes the shards s with s %% world-size == rank "
                            "(default $RANK or 0; a Slurm array: $SLURM_ARRAY_TASK_ID)")
    shard.add_argument("--world-size", type=_positive, default=_from_env("WORLD_SIZE", 1),
                       help="processes sharing the work (default $WORLD_SIZE or 1)")
    shard.add_argument("--no-progress", action="store_true", help="hide the progress bar")
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


def _report_skipped(skipped: list[tuple[str, str]]) -> None:
    for uri, reason in skipped[:20]:
        print(f"skipped {uri}: {reason}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"... and {len(skipped) - 20} more skipped", file=sys.stderr)


def _describe(m: manifest.Manifest) -> tuple[str, str]:
    """("12 classes" or "unlabelled", "vp9 10, h264 2")."""
    labels = "unlabelled" if m.class_names is None and m.num_classes == 0 else f"{m.num_classes} classes"
    return labels, ", ".join(f"{c} {n}" for c, n in Counter(e.codec for e in m).most_common())


def _index_shards(args, split: str) -> None:
    if args.relative:
        raise ValueError("--relative is for manifests: shard urls are written relative to the index "
                         "when the shards sit beside it")
    result = index_shards(args.root, split=split, out=args.out, workers=args.workers, base_url=args.base_url,
                          progress=not args.no_progress)
    _report_skipped(result.skipped)
    m = result.manifest
    labels, codecs = _describe(m)
    print(f"{len(m)} items in {len(m.shards)} shards, {labels}, {len(result.skipped)} skipped "
          f"({codecs}; {result.requests} ranged reads, {result.bytes_read / 1e6:.1f} of "
          f"{result.bytes_total / 1e6:.1f} MB) -> {result.out}")


def _shard(args) -> None:
    result = shard_dataset(args.src, args.dest, split=args.split, shard_size=args.shard_size,
                           per_shard=args.per_shard, workers=args.workers, rank=args.rank,
                           world_size=args.world_size, max_in_flight=args.max_in_flight,
                           progress=not args.no_progress)
    _report_skipped(result.skipped)
    where = f"-> {result.index}" if result.index else \
        "; the index is written by the process that finds every shard done (other ranks' are missing)"
    print(f"wrote {result.written} shards, kept {result.kept} from an earlier run, of {result.shards} "
          f"({result.per_shard} items each): {result.items} items written, {len(result.skipped)} skipped {where}")


def _index(args) -> None:
    split = "val" if args.split == "validation" else args.split
    if args.layout == "shards" or (args.layout == "auto" and looks_like_shards(args.root)):
        return _index_shards(args, split)
    out = args.out or os.path.join(args.root, f"manifest_{split}.jsonl")
    result = manifest.index_folder(args.root, layout=args.layout, split=args.split,
                                   base_url=args.base_url, relative=args.relative, out=out,
                                   workers=args.workers, progress=not args.no_progress)
    _report_skipped(result.skipped)
    m = result.manifest
    labels, codecs = _describe(m)
    print(f"{len(m)} entries, {labels}, {len(result.skipped)} skipped "
          f"({result.layout} layout; {codecs}) -> {out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `omnimae-data`; returns 0, or exits 2 with a one-line error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "synth":
            _synth(args)
        elif args.command == "shard":
            _shard(args)
        else:
            _index(args)
    except (LoaderError, ValueError, OSError, RuntimeError) as error:
        message = " ".join(str(error).split())  # one line, whatever the exception held
        parser.exit(2, f"{PROG}: error: {message}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
