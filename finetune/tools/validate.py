"""``validate``: check a config, or every job of a sweep (``-m``), without running anything.

The same check ``python -m finetune -m ...`` makes before it queues a sweep
(:mod:`finetune.sweeps.validate_sweep`): each job's config, the paths it names (absolute in a sweep),
then one run graph per distinct model and data (cut, var_lists, class count, restore plan).
Bad configs are reported before TensorFlow is imported.
"""
from __future__ import annotations

import argparse

HELP = "check a config, or every job of a sweep (-m), before running or queueing it; writes nothing"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "validate", help=HELP,
        description=HELP + ". Takes the command line of `python -m finetune`, e.g. `validate -m "
                           "experiment=mobilenet_head optimizer.learning_rate=0.1,0.01`. Exit status 0: all good; "
                           "2: problems (each printed, naming the job by its overrides).")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (experiment=NAME, ...)")
    parser.add_argument("--multirun", "-m", action="store_true",
                        help="the overrides are a sweep: check every job (a=1,2, range(), choice(), glob())")
    parser.add_argument("--config-dir", "-cd", metavar="DIR",
                        help="a folder of your own config groups (e.g. DIR/experiment/NAME.yaml), searched after ours")
    parser.add_argument("--config-name", "-cn", metavar="NAME", default="config",
                        help="the primary config (default: config)")
    parser.add_argument("--config-only", action="store_true",
                        help="check the configs and paths only: no data scan, no graph, no TensorFlow")
    return parser


def run(args: argparse.Namespace) -> int:
    from finetune.errors import FinetuneError
    from finetune.sweeps.validate_sweep import check_sweep

    # Without -m, the config's hydra.mode decides, as in `python -m finetune` (hparams_search sets MULTIRUN).
    check = check_sweep(args.overrides, args.config_dir, config_name=args.config_name,
                        multirun=True if args.multirun else None, build_graphs=not args.config_only)
    if check.problems:
        raise FinetuneError(check.report())
    print(check.summary())
    return 0
