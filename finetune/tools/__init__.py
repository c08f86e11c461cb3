"""``python -m finetune.tools <command> ...``: command-line tools around frozen graphs and checkpoints.

Each command is a module ``finetune/tools/<name>.py`` with ``add_parser(subparsers) -> ArgumentParser``
and ``run(args) -> int``. Adding a command is one line in :data:`COMMANDS`. Command modules import
TensorFlow inside ``run`` so that ``--help`` stays fast.

Exit statuses: 2 for bad input (a FinetuneError, or arguments argparse refuses), 1 for an unexpected
exception (one paragraph; ``--debug`` prints its traceback), as for ``python -m finetune``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from typing import Sequence

from finetune.errors import INTERNAL_ERROR, FinetuneError, internal_error

COMMANDS = [
    "freeze",
    "predict",
    "evaluate",
    "inspect",
    "pb2ckpt",
    "endpoints",
    "plan",
    "init",
    "validate",
    "summarize",
    "runs",
    "reference",
    "bundle",
]

# Commands whose positional KEY=VALUE overrides go through finetune.config.compose_config. They get
# --config-dir DIR here, as `python -m finetune` has it from Hydra: DIR's config groups join ours.
CONFIG_COMMANDS = ("endpoints", "plan", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subcommand per module in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="python -m finetune.tools", description="Command-line tools around frozen graphs and checkpoints."
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of an unexpected error")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"finetune.tools.{name}")
        command_parser = module.add_parser(subparsers)
        command_parser.set_defaults(run=module.run)
        if name in CONFIG_COMMANDS:
            command_parser.add_argument(
                "--config-dir", "-cd", metavar="DIR",
                help="a folder of your own config groups (e.g. DIR/experiment/NAME.yaml), searched after ours")
    return parser


def split_names(values: Sequence[str] | None) -> list[str]:
    """``["a,b", "c"]`` (repeated and/or comma-separated flags) -> ``["a", "b", "c"]``."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts such as ``--top-k``: an integer >= 1, else argparse's usage error (exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run the command; a FinetuneError becomes its message on stderr and exit status 2, any
    other exception one paragraph and status 1 (with ``--debug``, its traceback too)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command in CONFIG_COMMANDS and args.config_dir is not None:
            from finetune.config import with_config_dir

            # The commands pass args.overrides to compose_config: the folder travels as hydra.searchpath.
            args.overrides = with_config_dir(args.overrides, args.config_dir)
        return args.run(args)
    except FinetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    except Exception as exc:  # noqa: BLE001  (a bug or the environment: one paragraph, not a traceback)
        if args.debug:
            traceback.print_exc()
        print(f"error: {internal_error(exc, '--debug')}", file=sys.stderr)
        return INTERNAL_ERROR
