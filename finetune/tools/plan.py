"""``plan``: the dry run. Build the graph and print what would be restored, initialised and trained."""
from __future__ import annotations

import argparse

HELP = "dry run: print the restore / initialise / train / unused tables of an experiment, write nothing"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plan", help=HELP,
        description=HELP + ". Takes the same overrides as `python -m finetune`, e.g. `plan experiment=mobilenet_head`.")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (experiment=NAME, ...)")
    return parser


def run(args: argparse.Namespace) -> int:
    from finetune import pipeline
    from finetune.config import compose_config
    from finetune.weights.restore import format_report
    from finetune.validate import validate

    cfg = compose_config(args.overrides)
    validate(cfg)
    data = pipeline.load_data(cfg.data, cfg.paths, create=False)
    checkpoint = pipeline.pretrained_checkpoint(cfg.restore, cfg.paths, create=False)
    run_graph = pipeline.build_run_graph(cfg, data, checkpoint)
    print(format_report(run_graph.plan, verified=None))
    return 0
