"""The ``--help`` page of ``python -m finetune``, made from the shipped configs without TensorFlow.

The experiments and group options are read from the package resources ``finetune.conf`` (the
repository's ``conf/``), so a new YAML file shows up here without touching this module. An
experiment's description is the first comment line of its file.
"""
from __future__ import annotations

import os
import sys
import textwrap
from importlib import resources
from importlib.resources.abc import Traversable

from finetune.config import CONFIG_MODULE
from finetune.tools import COMMANDS as TOOLS

EXPERIMENT_GROUP = "experiment"
GROUP_ORDER = ("backbone", "head", "data", "optimizer")  # the rest follow, sorted
NAME_WIDTH = 26
HELP_WIDTH = 100


def config_groups() -> dict[str, list[Traversable]]:
    """Group name -> its YAML files (sorted by name), for every folder of ``finetune.conf``."""
    root = resources.files(CONFIG_MODULE)
    groups = {}
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith(("_", ".")):
            files = sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
            if files:
                groups[folder.name] = files
    return groups


def description(config_file: Traversable) -> str:
    """The first comment line of a YAML file, Hydra's ``# @package`` line skipped; '' if none."""
    for line in config_file.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#"):
            if text:
                break
            continue
        comment = text.lstrip("#").strip()
        if comment and not comment.startswith("@package"):
            return comment
    return ""


def option_name(config_file: Traversable) -> str:
    return config_file.name[: -len(".yaml")]


def program_name() -> str:
    """How the user called us: ``python -m finetune`` or the console script's name."""
    called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m finetune" if called in ("", "__main__.py", "-c") else called


def _listing(rows: list[tuple[str, str]]) -> str:
    """Two columns; the second wrapped to the page width and indented under itself."""
    lines = []
    for name, text in rows:
        wrapped = textwrap.wrap(text, HELP_WIDTH - NAME_WIDTH - 2) or [""]
        lines.append(f"  {name:<{NAME_WIDTH}}{wrapped[0]}".rstrip())
        lines += [" " * (NAME_WIDTH + 2) + more for more in wrapped[1:]]
    return "\n".join(lines)


def _commands(rows: list[tuple[str, str]]) -> str:
    """A command per line, what it does on the next."""
    return "\n".join(f"  {command}\n      {text}" for command, text in rows)


def help_text(program: str | None = None) -> str:
    """The whole help page."""
    program = program or program_name()
    groups = config_groups()
    experiments = [(option_name(f), description(f)) for f in groups.pop(EXPERIMENT_GROUP, [])]
    ordered = [g for g in GROUP_ORDER if g in groups] + sorted(g for g in groups if g not in GROUP_ORDER)
    options = [(f"{group}=", ", ".join(option_name(f) for f in groups[group])) for group in ordered]
    sections = [
        "Finetune a pretrained TF-Slim backbone: cut it, add a head, restore, train, evaluate, freeze.\n\n"
        f"Usage: {program} [experiment=NAME] [GROUP=OPTION ...] [KEY=VALUE ...]\n"
        f"       {program} -m [experiment=NAME] KEY=A,B ...    (a sweep: one job per value)",
        "Experiments (experiment=NAME):\n" + _listing(experiments),
        "Config groups (GROUP=OPTION):\n" + _listing(options),
        "Examples:\n" + _commands([
            (f"{program} experiment=mobilenet_head", "the demo: no download, a few minutes on 2 CPU cores"),
            (f"{program} -m experiment=mobilenet_head optimizer.learning_rate=0.1,0.01", "a sweep of two jobs"),
            (f"{program} experiment=mobilenet_head train.steps=1000 data.root=DIR",
             "overriding keys: more steps, your own images (DIR/<class_name>/*.jpg)"),
        ]),
        "Outputs:\n" + _commands([
            ("outputs/DATE/TIME/", "one run (hydra.run.dir=DIR to choose): export/frozen_graph.pb, metrics.json, "
                                   "checkpoints/, tensorboard/, finetune.log"),
            ("multirun/DATE/TIME/N_KEY=VALUE/", "one folder per job of a sweep (hydra.sweep.dir=DIR to choose)"),
        ]),
        "More:\n" + _commands([
            (f"{program} --cfg job [OVERRIDES]", "print the full composed config (every key) and exit"),
            (f"{program} --hydra-help", "Hydra's own flags: --multirun, --config-dir, --cfg, --info, -sc, ..."),
            ("python -m finetune.tools --help", f"the tools: {', '.join(TOOLS)}"),
            ('eval "$(finetune -sc install=bash)"', "tab completion of keys and options for finetune in bash"),
        ]),
    ]
    return "\n\n".join(sections) + "\n"
