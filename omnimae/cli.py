"""`omnimae-train CONFIG [key.sub=value ...]`: the one entry point, from a laptop CPU to torchrun."""

from __future__ import annotations

import argparse
import logging
import sys

from omnimae.config import ConfigError, describe, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="omnimae-train",
        description="Pretrain an OmniMAE ViT on images and videos. Under torchrun (RANK set) every "
                    "process runs this same command.",
        epilog="example: omnimae-train configs/ssv2_rep4.yaml train.batch_size=512 data.video.root=s3://bucket/ssv2",
    )
    p.add_argument("config", nargs="?", help="experiment YAML (holds only what differs from the defaults)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides applied after the file")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and meaning")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def settle_config_args(parser: argparse.ArgumentParser, args: argparse.Namespace, example: str) -> None:
    """`CONFIG [overrides]` or overrides alone (defaults + overrides): a first argument holding `=`
    that is not a YAML file is an override. Neither is an argparse error naming `example`."""
    if args.config is not None and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)
        args.config = None
    if args.config is None and not args.overrides:
        parser.error(f"a config file is required (try {example})")


def setup_logging() -> None:
    """Warnings from everything; our loaders' one-line choices too (which decoder, and why)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("loaders").setLevel(logging.INFO)


def train_main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.help_config:
        print("\n".join(describe()))
        return 0
    settle_config_args(parser, args, "configs/demo.yaml")
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            import json

            from omnimae.config import to_dict

            print(json.dumps(to_dict(cfg), indent=2, default=str))
            return 0
        from omnimae.train import main

        setup_logging()
        return main(cfg)
    except ConfigError as e:
        print(f"omnimae-train: config: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(train_main())
