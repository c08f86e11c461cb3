"""``python -m finetune.tools <command> ...``: command-line tools around frozen graphs and checkpoints.

Each command is a module ``finetune/tools/<name>.py`` with ``add_parser(subparsers) -> ArgumentParser``
and ``run(args) -> int``. Adding a command is one line in :data:`COMMANDS`. Command modules import
TensorFlow inside ``run`` so that ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from finetune.errors import FinetuneError

COMMANDS = [
    "freeze",
    "predict",
    "inspect",
    "pb2ckpt",
    "endpoints",
    "plan",
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subcommand per module in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="python -m finetune.tools", description="Command-line tools around frozen graphs and checkpoints."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"finetune.tools.{name}")
        module.add_parser(subparsers).set_defaults(run=module.run)
    return parser


def split_names(values: Sequence[str] | None) -> list[str]:
    """``["a,b", "c"]`` (repeated and/or comma-separated flags) -> ``["a", "b", "c"]``."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run the command, and turn a FinetuneError into its message on stderr and exit status 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args)
    except FinetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
