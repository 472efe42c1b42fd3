"""`omnimae-train CONFIG [key.sub=value ...]`: the one entry point, from a laptop CPU to torchrun."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Callable

from loaders.errors import LoaderError
from loaders.redact import redact
from omnimae.config import ConfigError, describe, load_config
from omnimae.errors import RunError


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("omnimae")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def run_guarded(prog: str, body: Callable[[], int]) -> int:
    """Runs a command's body. What the user must fix (omnimae.errors.RunError, the data path's
    LoaderError) is one redacted line on stderr and exit 2; a bug keeps its traceback, redacted too
    (a storage URL in an exception must not print its password)."""
    try:
        return body()
    except ConfigError as e:
        print(f"{prog}: config: {redact(e)}", file=sys.stderr)
    except (RunError, LoaderError) as e:
        print(f"{prog}: {redact(e)}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: its traceback, without credentials
        print(redact("".join(traceback.format_exception(e))), file=sys.stderr, end="")
        return 1
    return 2


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
    p.add_argument("--print-config", action="store_true", help="print the resolved config (secrets hidden) and exit")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
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

    def body() -> int:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            import json

            from omnimae.config import to_dict

            print(json.dumps(to_dict(cfg), indent=2, default=str))
            return 0
        from omnimae.train import main

        setup_logging()
        return main(cfg)

    return run_guarded("omnimae-train", body)


if __name__ == "__main__":
    sys.exit(train_main())
