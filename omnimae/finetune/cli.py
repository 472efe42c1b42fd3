"""`omnimae-finetune CONFIG [key.sub=value ...]`: fine-tune, test, or probe a pretrained encoder.

The same entry point for a laptop CPU and torchrun, the same config rules as `omnimae-train`.
"""

from __future__ import annotations

import argparse
import sys

from omnimae.cli import run_guarded, settle_config_args, setup_logging, version
from omnimae.config import describe


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="omnimae-finetune",
        description="Fine-tune a pretrained OmniMAE encoder for classification (paper Tables 4-5), then test "
                    "it (videos: 5 clips x 3 crops; images: one centre crop). Under torchrun (RANK set) every "
                    "process runs this same command; a run folder with checkpoints resumes.",
        epilog="example: omnimae-finetune configs/ft_ssv2_vitb.yaml model.pretrained=runs/in1k_ssv2_vitb/"
               "step_00100000 data.root=s3://bucket/ssv2",
    )
    p.add_argument("config", nargs="?", help="experiment YAML (holds only what differs from the defaults)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides applied after the file")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--eval-only", action="store_true",
                      help="test model.pretrained (a fine-tuned checkpoint) or the run's latest checkpoint; "
                           "writes <run>/eval.json")
    mode.add_argument("--probe", action="store_true",
                      help="linear probe and k-NN on frozen features of model.pretrained (quick check, one "
                           "process); writes <run>/probe.json")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and meaning")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (secrets hidden) and exit")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return p


def finetune_main(argv: list[str] | None = None) -> int:
    from omnimae.config import to_dict
    from omnimae.finetune.config import FinetuneConfig, load_finetune_config

    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    if args.help_config:
        print("\n".join(describe(FinetuneConfig())))
        return 0
    settle_config_args(parser, args, "configs/ft_demo.yaml")

    def body() -> int:
        cfg = load_finetune_config(args.config, args.overrides)
        if args.print_config:
            import json

            print(json.dumps(to_dict(cfg), indent=2, default=str))
            return 0
        from omnimae.finetune.train import main

        setup_logging()
        return main(cfg, mode="eval" if args.eval_only else "probe" if args.probe else "train")

    return run_guarded("omnimae-finetune", body)


if __name__ == "__main__":
    sys.exit(finetune_main())
