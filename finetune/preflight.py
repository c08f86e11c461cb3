"""The command line checked before Hydra starts: what its words alone tell, in a tenth of a second.

Hydra answers these with its own text, or a traceback: a wrong group option (``backbone=resnet50``)
with the raw option list and its search path; a misspelt group (``optimiser.learning_rate=0.1``) with
advice to append it (``+optimiser...``), which only trades one error for another; a launcher or sweeper
whose plugin is not installed with a missing config; ``hydra/launcher=slurm`` on a machine without
SLURM with submitit's traceback, after the sweep folder is made; ``-m`` with ``--cfg`` with a Python
traceback. :func:`command_line_problem` says each in one paragraph naming the closest options and the
fix; ``python -m finetune`` prints it and exits 2 while nothing is written and TensorFlow is not loaded.

The config itself (``backbone.name``, the paths it names) is checked once Hydra has composed it, still
before the run directory exists and before TensorFlow loads (:mod:`finetune.hydra_callbacks`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException

from finetune.config import CONFIG_MODULE, Config, field_schema, register_configs, schema_fields
from finetune.errors import closest
from finetune.sweeps.launchers import INSTALL_HINT, missing_slurm_commands, no_slurm_message
from finetune.sweeps.validate_sweep import may_be_sweep
from finetune.validate import installed


@dataclass(frozen=True)
class Plugin:
    """A Hydra plugin of the ``cluster`` extra (pyproject.toml): its pip name and the module it installs."""

    package: str
    module: str


JOBLIB = Plugin("hydra-joblib-launcher", "hydra_plugins.hydra_joblib_launcher")
SUBMITIT = Plugin("hydra-submitit-launcher", "hydra_plugins.hydra_submitit_launcher")
OPTUNA = Plugin("hydra-optuna-sweeper", "hydra_plugins.hydra_optuna_sweeper")
# (group, option) -> the plugin it needs: ours (conf/hydra/launcher/, conf/hparams_search/) and the
# plugins' own options, which exist only once the plugin is installed.
NEEDS_PLUGIN = {
    ("hydra/launcher", "local_parallel"): JOBLIB, ("hydra/launcher", "joblib"): JOBLIB,
    ("hydra/launcher", "local_submitit"): SUBMITIT, ("hydra/launcher", "submitit_local"): SUBMITIT,
    ("hydra/launcher", "slurm"): SUBMITIT, ("hydra/launcher", "submitit_slurm"): SUBMITIT,
    ("hydra/sweeper", "optuna"): OPTUNA, ("hparams_search", "optuna"): OPTUNA,
}
SLURM_LAUNCHERS = ("slurm", "submitit_slurm")  # hydra/launcher options that submit to SLURM
# Hydra's flags that each say what the command does; it takes one at most (a ValueError with a traceback else).
COMMAND_FLAGS = (("multirun", "-m"), ("cfg", "--cfg"), ("info", "--info"), ("shell_completion", "-sc"),
                 ("run", "--run"))


@contextlib.contextmanager
def _config_loader() -> Iterator[Any]:
    """Hydra's config loader over our configs and the plugins' (listing options composes nothing)."""
    register_configs()
    if GlobalHydra.instance().is_initialized():  # a caller's own Hydra (a notebook, a test): list options with it
        yield GlobalHydra.instance().config_loader()
        return
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


class _Groups:
    """The config groups and their options: ours, the plugins', and those of a ``--config-dir`` folder."""

    def __init__(self, loader: Any, config_dir: Optional[str]) -> None:
        self.loader, self.config_dir = loader, config_dir

    def _extra_dir(self, group: str) -> Optional[str]:
        if self.config_dir is None:
            return None
        folder = os.path.join(os.path.expanduser(self.config_dir), *group.split("/"))
        return folder if os.path.isdir(folder) else None

    def exists(self, group: str) -> bool:
        return bool(self.loader.repository.group_exists(group)) or self._extra_dir(group) is not None

    def options(self, group: str) -> list[str]:
        found = set(self.loader.get_group_options(group)) if self.loader.repository.group_exists(group) else set()
        folder = self._extra_dir(group)
        if folder is not None:
            found |= {name[:-len(ext)] for name in os.listdir(folder) for ext in (".yaml", ".yml")
                      if name.endswith(ext)}
        return sorted(found)

    def children(self, parent: str) -> list[str]:
        """The groups directly below ``parent`` ("" for the top), as they are written on the command line."""
        names = set(self.loader.list_groups(parent))
        folder = self._extra_dir(parent)  # "" -> the --config-dir folder itself
        if folder is not None:
            names |= {name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))}
        return sorted(f"{parent}/{name}" if parent else name for name in names)


def _nearest(name: str, candidates: Sequence[str]) -> list[str]:
    """The closest candidates (:func:`finetune.errors.closest`), less those far behind the best one."""
    near = closest(name, candidates, 3)
    ratios = [difflib.SequenceMatcher(None, name, candidate).ratio() for candidate in near]
    return [candidate for candidate, ratio in zip(near, ratios) if ratio >= 0.85 * max(ratios, default=0)]


def _choices(override: Override) -> list[str]:
    """The options an override picks: one, or each of a list sweep (``a,b``, ``choice(a,b)``). Glob and range
    sweeps and ``null`` are not names to check."""
    if override.value_type in (ValueType.GLOB_CHOICE_SWEEP, ValueType.RANGE_SWEEP, ValueType.INTERVAL_SWEEP):
        return []
    values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
    return [value for value in values if isinstance(value, str) and value != "null" and "/" not in value]


def plugin_problem(group: str, option: str, multirun: bool) -> Optional[str]:
    """``group=option`` needs a plugin that is not installed, or (a sweep) submits to SLURM without SLURM."""
    plugin = NEEDS_PLUGIN.get((group, option))
    if plugin is None:
        return None
    if not installed(plugin.module):
        instead = ("hydra/launcher=local runs a sweep's jobs one after another without it" if group == "hydra/launcher"
                   else "without it, -m sweeps lists of values (optimizer.learning_rate=0.01,0.1)")
        return (f"{group}={option} needs the Hydra plugin {plugin.package}, which is not installed. Install the "
                f"cluster extra: {INSTALL_HINT} (or pip install {plugin.package}); {instead}.")
    missing = missing_slurm_commands() if group == "hydra/launcher" and option in SLURM_LAUNCHERS and multirun else []
    return no_slurm_message(option, missing) if missing else None


def _group_option_problem(groups: _Groups, group: str, option: str) -> Optional[str]:
    options = groups.options(group)
    if option in options:
        return None
    near = _nearest(option, options)
    guess = f" Did you mean {' or '.join(f'{group}={name}' for name in near)}? Its options: {', '.join(options)}." \
        if near else " It has no options yet."
    return (f"{group}={option}: the config group '{group}' has no option {option!r}.{guess} Fix the name on the "
            f"command line, or add {group}/{option}.yaml to a folder given with --config-dir.")


def _unknown_name_problem(groups: _Groups, override: Override) -> Optional[str]:
    """An override whose first word is neither a config group nor a key of the schema (``optimiser.lr=0.1``)."""
    key = override.key_or_group
    first = key.split(".", 1)[0]
    if first == "hydra" or first in schema_fields(Config) or groups.exists(first):
        return None
    value = override.get_value_element_as_str() if not override.is_sweep_override() else override.get_value_string()
    if "/" in first:  # a group path: hydra/launchr -> the groups beside it
        parent = first.rsplit("/", 1)[0]
        candidates = groups.children(parent) if groups.exists(parent) else groups.children("")
        near = _nearest(first, candidates)
        return (f"'{override.input_line}': there is no config group '{first}'. Did you mean "
                f"{' or '.join(f'{name}={value}' for name in near)}? Fix the name on the command line.")
    rest = key[len(first):]
    fields = schema_fields(Config)
    # first.key=...: only what holds keys (a group or a section); first=...: any group or key
    keys = [name for name, spec in fields.items() if not rest or dataclasses.is_dataclass(field_schema(spec))]
    candidates = sorted(set(groups.children("")) | set(keys))
    near = _nearest(first, candidates)
    listed = "Groups and sections" if rest else "Groups and top-level keys"
    return (f"'{override.input_line}': the config has no group or key '{first}'. Did you mean "
            f"{' or '.join(f'{name}{rest}={value}' for name in near)}? {listed}: {', '.join(candidates)}. Fix the "
            "spelling on the command line (a leading '+' would add a key the config does not read).")


def _flags_problem(args: Any) -> Optional[str]:
    given = [flag for name, flag in COMMAND_FLAGS if getattr(args, name)]
    if len(given) < 2:
        return None
    if "-m" in given and "--cfg" in given:
        return ("-m and --cfg cannot go together: --cfg prints one run's config and starts nothing. Drop -m to see "
                "the config (one value per key), or check every job of the sweep with python -m finetune.tools "
                "validate -m ...")
    return (f"{' and '.join(given)} cannot go together: Hydra takes one of -m, --cfg, --info, -sc and --run. Drop all "
            "but one.")


def command_line_problem(argv: Sequence[str]) -> Optional[str]:
    """For ``python -m finetune ARGV``, before Hydra starts: one paragraph (then exit 2) for a wrong group
    option, a misspelt group, a plugin not installed, SLURM missing for a SLURM sweep, or flags that cannot
    go together; None to go on. Composes nothing and imports no TensorFlow; a command line it cannot parse
    is left to Hydra."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(list(argv))  # Hydra's own: it refuses what Hydra would refuse
    problem = _flags_problem(args)
    if problem or args.config_path or args.shell_completion:  # another primary config: other groups
        return problem
    if args.config_dir is not None and not os.path.isdir(os.path.expanduser(args.config_dir)):
        return (f"--config-dir {args.config_dir} is not a folder "
                f"({os.path.abspath(os.path.expanduser(args.config_dir))})"
                ". Give the folder of your configs, laid out like conf/ (experiment/, head/, ...); python -m "
                "finetune.tools init DIR writes a starter one.")
    multirun = may_be_sweep(argv)
    with _config_loader() as loader:
        try:
            overrides = OverridesParser.create(config_loader=loader).parse_overrides(args.overrides)
        except HydraException:
            return None  # Hydra says where the syntax is wrong
        if any(override.key_or_group.startswith("hydra.searchpath") for override in overrides):
            return None  # more config folders: the options are not all known here
        groups = _Groups(loader, args.config_dir)
        found = []
        for override in overrides:
            if override.is_delete():
                continue
            group = override.key_or_group
            if "." not in group and groups.exists(group):
                for option in _choices(override):  # a plugin missing first: its options are then missing too
                    found += [plugin_problem(group, option, multirun) or _group_option_problem(groups, group, option)]
            elif not (override.is_add() or override.is_force_add()):
                found.append(_unknown_name_problem(groups, override))
    found = [problem for problem in found if problem]
    return "\n\n".join(dict.fromkeys(found)) if found else None
