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
    from finetune.resolve import REQUIRE, resolve
    from finetune.training.run_graph import build_run_graph
    from finetune.validate import validate
    from finetune.weights.restore import format_report

    cfg = compose_config(args.overrides)
    validate(cfg)
    inputs = resolve(cfg, REQUIRE)  # nothing is made: the demo assets must be built already
    run_graph = build_run_graph(cfg, pipeline.load_data(cfg.data, inputs.data_root), inputs.checkpoint)
    print(format_report(run_graph.plan, verified=None))
    return 0
