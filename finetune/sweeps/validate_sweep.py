"""Check every job of a sweep on the submitting machine, before anything is queued.

``python -m finetune -m ...`` runs :func:`refuse_bad_sweep` before Hydra starts, and
``python -m finetune.tools validate -m ...`` runs :func:`check_sweep` alone. Either way a bad job stops
the whole sweep while nothing is queued and no sweep directory exists: on a cluster, a bad value would
otherwise fail its job hours later, after waiting in the queue.

The jobs are the ones Hydra would launch. Hydra composes the sweep's config (the command line plus any
``hydra.sweeper.params`` a config sets, e.g. an ``hparams_search`` file), keeps its own overrides
(``hydra.*``, ``hydra/launcher=...``) aside, and composes each job from those plus the job's overrides
(``ConfigLoader.load_sweep_config``, as every launcher does); so do we, with Hydra's own parser and, for
the basic sweeper, its own expansion (``BasicSweeper.split_arguments``: the cartesian product of every
``a,b``, ``choice()``, ``range()`` and ``glob()``).

A search sweeper (Optuna: ``interval()``, or ``range()`` and ``choice()`` it samples from) decides its
jobs while it runs, so they cannot be listed beforehand. For it the check composes *representative*
jobs: both ends of every interval and range, every choice of every ``choice()``, in every combination
(when that is more than :data:`MAX_REPRESENTATIVE_JOBS`, enough jobs that each value is in one). A
value strictly inside an interval is not checked; a config that is valid at both ends almost always is.

Each job's config is checked without TensorFlow (:func:`finetune.validate.problems`, and the paths it
names: they must exist and, in a sweep, be absolute, since a cluster job runs in another working
directory). Only when every job passes that, the checks that need files and TensorFlow run once per
distinct model and data (jobs with equal backbone, head, data, restore and var_lists share one): the
data is scanned (the classes found) and the run graph is built as the dry run builds it, without a
session, which checks the cut, each phase's var_list, the head's output against the class count and
the restore plan against the checkpoint. Demo assets not built yet and zoo checkpoints not downloaded
yet are fine (the first job makes them); the graph is then built without them (a stand-in for the demo
data, no checkpoint), so what they would have checked is left to the job.

A command line is a sweep as Hydra decides it: ``-m``, or a config whose ``hydra.mode`` is MULTIRUN
(``hparams_search=optuna`` needs no ``-m``). Composing a job costs what it costs Hydra (about 0.1 s;
Hydra's basic sweeper composes each job once more before launching it).

``FINETUNE_SWEEP_CHECK`` (:data:`CHECK_ENV`) chooses how much ``python -m finetune -m`` checks:
``full`` (the default), ``config`` (no TensorFlow, no graphs) or ``off``.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

from hydra import initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from finetune.config import CONFIG_MODULE, register_configs, with_config_dir
from finetune.errors import FinetuneError, first_line
from finetune.hydra_callbacks import task_config
from finetune.resolve import CHECK, data_root, path_problems, pretrained_checkpoint
from finetune.sweeps.launchers import load_sweep_config, missing_slurm_commands, no_slurm_message
from finetune.validate import problems

log = logging.getLogger(__name__)

CONFIG_NAME = "config"  # conf/config.yaml, as @hydra.main in finetune/__main__.py names it
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
MULTIRUN_FLAGS = ("-m", "--multirun")
MODE_OVERRIDES = ("hparams_search", "hydra.mode", "hydra/sweeper")  # overrides that may make a run a sweep
# python -m finetune -m: full (every check) | config (no TensorFlow: configs and paths only) | off
CHECK_ENV = "FINETUNE_SWEEP_CHECK"
CHECK_MODES = ("full", "config", "off")
# Launchers that run a sweep's jobs in this process, one after another: the first job trains on the graph the
# check built (finetune.training.shared_graph). Any other runs them elsewhere, where that graph is of no use.
IN_PROCESS_LAUNCHERS = ("hydra_plugins.finetune_sweeps.LocalLauncher",
                        "hydra._internal.core_plugins.basic_launcher.BasicLauncher")
MAX_REPRESENTATIVE_JOBS = 32  # a search sweeper's representative jobs: more combinations -> a covering set
# The config sections that decide the run graph: jobs equal in these share one graph check.
GRAPH_KEYS = ("backbone", "head", "data", "restore", "optimizer.var_list", "train.phases", "paths.cache_dir",
              "allow_unsafe_ops")
# ... but for the fold: which examples validate changes no class, cut, var_list or restore plan, and a fold
# outside [0, data.folds) is a config problem found without TensorFlow. A K-fold sweep builds one graph, not K.
GRAPH_KEYS_IGNORED = ("data.fold",)


@dataclass
class SweepCheck:
    """What :func:`check_sweep` found."""

    jobs: list[list[str]]  # each job's overrides (Hydra's own kept aside)
    problems: list[str] = field(default_factory=list)  # one paragraph each, naming the job(s)
    exhaustive: bool = True  # False: a search sweeper's representative jobs, not every job
    multirun: bool = True  # False: the command line is a single run (one job)
    graphs: int = 0  # distinct model/data graphs built

    def summary(self) -> str:
        """One line for a sweep without problems."""
        jobs = f"{len(self.jobs)} {'job' if len(self.jobs) == 1 else 'jobs'}"
        if not self.exhaustive:
            jobs += " (representative jobs of a search sweeper: both ends of each interval and range, every choice)"
        graphs = f"; {self.graphs} distinct model/data {'graph' if self.graphs == 1 else 'graphs'} built" \
            if self.graphs else ""
        return f"{jobs} checked, all good{graphs}"

    def report(self) -> str:
        """Every problem, under one line saying how many jobs they concern (a sweep's)."""
        if not self.multirun or not self.jobs:
            return "\n\n".join(self.problems)
        return f"The sweep has {len(self.problems)} problem(s) in {len(self.jobs)} job(s):\n\n" + \
            "\n\n".join(self.problems)


# --- the jobs --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _hydra(overrides: Sequence[str], config_dir: Optional[str]) -> Iterator[tuple[Any, list[str]]]:
    """Hydra's config loader for our configs, and ``overrides`` with ``config_dir`` on its search path."""
    register_configs()
    overrides = with_config_dir(overrides, config_dir)
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        yield GlobalHydra.instance().config_loader(), overrides


def _compose_sweep(loader: Any, overrides: list[str], config_name: str, multirun: bool) -> DictConfig:
    """The sweep's own config, as Hydra composes it before it starts the sweeper (FinetuneError if it cannot):
    with ``hydra.mode=MULTIRUN`` added, as Hydra adds it for ``-m``, so that each job's config composed here is
    the one Hydra's sweeper and launcher get (:func:`finetune.sweeps.launchers.load_sweep_config`)."""
    composed = list(overrides)
    if multirun and not any(override.startswith("hydra.mode=") for override in overrides):
        composed.append("hydra.mode=MULTIRUN")
    try:
        return loader.load_configuration(config_name=config_name, overrides=composed,
                                         run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN)
    except (HydraException, OmegaConfBaseException) as error:
        raise FinetuneError(f"The command line {' '.join(overrides)} cannot be composed: {error}") from None


def _config_mode(loader: Any, overrides: list[str], config_name: str) -> Optional[RunMode]:
    """``hydra.mode`` of the config (an hparams_search config sets MULTIRUN), found as Hydra finds it
    when the command line has no ``-m``; None when the config does not compose (the check then says why)."""
    try:
        return loader.load_configuration(config_name=config_name, overrides=overrides, run_mode=RunMode.MULTIRUN,
                                         validate_sweep_overrides=False).hydra.mode
    except Exception:  # noqa: BLE001  (as Hydra's own get_mode: composing again reports the error)
        return None


def _sweeper_arguments(sweep_cfg: DictConfig) -> list[str]:
    """What the sweeper sweeps: ``hydra.sweeper.params`` of the config, then the command line's overrides."""
    params = sweep_cfg.hydra.sweeper.get("params") or {}
    return [f"{key!s}={value}" for key, value in params.items()] + list(sweep_cfg.hydra.overrides.task)


def _jobs(loader: Any, sweep_cfg: DictConfig) -> tuple[list[list[str]], bool]:
    """The jobs' overrides, and whether they are all of them (basic sweeper) or representative ones."""
    parser = OverridesParser.create(config_loader=loader)  # glob() lists a group's options through the loader
    try:
        parsed = parser.parse_overrides(_sweeper_arguments(sweep_cfg))
        if sweep_cfg.hydra.sweeper._target_ == BASIC_SWEEPER:
            return [list(job) for job in BasicSweeper.split_arguments(parsed, None)[0]], True
        return _representative_jobs(parsed), False
    except HydraException as error:
        raise FinetuneError(f"The sweep cannot be expanded into jobs: {error}. The basic sweeper takes lists "
                            "(a=1,2), choice() and range(); interval() needs a search sweeper (hydra/sweeper=optuna, "
                            "or an hparams_search config).") from None


def _representative_values(override: Override) -> list[str]:
    """The values of one override that a search sweeper's jobs are checked at."""
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    value = override.value()
    if override.is_interval_sweep():
        ends = (value.start, value.end)
        return [str(end) if all(isinstance(e, int) for e in ends) else str(float(end)) for end in ends]
    if override.is_range_sweep() and not value.shuffle:
        return [str(value.start), str(value.stop)]  # a search sweeper samples the stop value too
    return list(override.sweep_string_iterator())


def _representative_jobs(parsed: list[Override]) -> list[list[str]]:
    """Every combination of each override's representative values; a covering set when there are too many."""
    values: dict[str, list[str]] = {}
    for override in parsed:  # a key given twice: the later one wins, as in the sweepers
        key = override.get_key_element()
        values.pop(key, None)
        values[key] = [f"{key}={value}" for value in _representative_values(override)]
    columns = list(values.values())
    if _product_size(columns) <= MAX_REPRESENTATIVE_JOBS:
        return [list(job) for job in itertools.product(*columns)]
    count = max(map(len, columns))
    return [[column[index % len(column)] for column in columns] for index in range(count)]


def _product_size(columns: list[list[str]]) -> int:
    size = 1
    for column in columns:
        size *= len(column)
    return size


def expand_sweep(overrides: Sequence[str], config_dir: Optional[str] = None, *,
                 config_name: str = CONFIG_NAME) -> list[list[str]]:
    """The jobs of ``python -m finetune [--config-dir DIR] -m OVERRIDES``, each a list of overrides, in
    Hydra's order (job N is ``multirun/.../N_...``); Hydra's own overrides are not in them. For a search
    sweeper: representative jobs (see the module docstring). FinetuneError if the sweep cannot be composed."""
    with _hydra(overrides, config_dir) as (loader, overrides):
        return _jobs(loader, _compose_sweep(loader, overrides, config_name, multirun=True))[0]


# --- checks without TensorFlow -----------------------------------------------------------------------
def _config_problems(cfg: DictConfig, sweep: bool) -> list[str]:
    found = problems(cfg)
    if not found:  # the paths are read only from a config whose keys are sound
        found = path_problems(cfg, sweep)
    return found


# --- checks with TensorFlow, once per model and data ----------------------------------------------------
def _graph_key(cfg: DictConfig) -> str:
    parts = {}
    for key in GRAPH_KEYS:
        value = OmegaConf.select(cfg, key)
        parts[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    for ignored in GRAPH_KEYS_IGNORED:
        section, name = ignored.rsplit(".", 1)
        parts[section].pop(name, None)
    return json.dumps(parts, sort_keys=True, default=str)


def _data_for_check(cfg: DictConfig, scanned: dict[str, Any]) -> Any:
    """The data ``cfg`` trains on, scanned once per distinct data and cache folder (``scanned`` keeps them);
    the demo dataset as it will be when the first job has not drawn it yet."""
    from finetune import pipeline
    from finetune.data.demo_images import planned_target_dataset

    key = json.dumps(OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["data", "paths"]), resolve=True),
                     sort_keys=True)
    if key not in scanned:
        root = data_root(cfg.data, cfg.paths, CHECK)
        if cfg.data.root is None and not root.is_dir():
            log.info("The demo dataset is not made yet (the first job makes it): checking with its class names.")
            scanned[key] = planned_target_dataset(cfg.data, cfg.paths.cache_dir)
        else:
            scanned[key] = pipeline.load_data(cfg.data, root)
    return scanned[key]


def graph_problems(cfg: DictConfig, scanned: Optional[dict[str, Any]] = None) -> list[str]:
    """What building ``cfg``'s run graph finds (data, cut, var_lists, class count, restore plan); no session.
    ``scanned``: data already scanned, by :func:`_data_for_check`'s key (filled in here)."""
    import finetune.compat  # noqa: F401  (first: makes TF-Slim work on current TensorFlow)
    from finetune.errors import internal_error
    from finetune.training.devices import choose_device
    from finetune.training.shared_graph import run_graph

    try:
        data = _data_for_check(cfg, {} if scanned is None else scanned)
        # Held for the first job when it runs in this process on this graph (finetune.training.shared_graph).
        run_graph(cfg, data, pretrained_checkpoint(cfg.restore, cfg.paths, CHECK), choose_device(cfg.train, say=False))
    except FinetuneError as error:
        return [str(error)]
    except Exception as error:  # noqa: BLE001  (TensorFlow refusing the graph, or a bug: one paragraph)
        return [f"Building the run graph failed: {internal_error(error, 'python -m finetune.tools plan ...')} "
                f"({CHECK_ENV}=config skips this check.)"]
    return []


# --- the whole sweep ----------------------------------------------------------------------------------
def _labels(jobs: list[list[str]]) -> list[str]:
    """Each job as ``#N (the overrides that differ between jobs)``."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job:
            values.setdefault(override.split("=", 1)[0], set()).add(override)
    varying = {key for key, seen in values.items() if len(seen) > 1}
    return [f"#{number} ({' '.join(o for o in job if o.split('=', 1)[0] in varying) or ' '.join(job) or 'defaults'})"
            for number, job in enumerate(jobs)]


def _name_jobs(found: dict[str, list[int]], labels: list[str], sweep: bool) -> list[str]:
    """One paragraph per distinct problem, naming the jobs that have it."""
    if not sweep:
        return list(found)
    named = []
    for problem, numbers in found.items():
        if len(numbers) == len(labels) and len(labels) > 1:
            where = f"All {len(labels)} jobs"
        else:
            where = ("Job " if len(numbers) == 1 else "Jobs ") + ", ".join(labels[n] for n in numbers)
        named.append(f"{where}: {problem}")
    return named


def check_sweep(overrides: Sequence[str], config_dir: Optional[str] = None, *, config_name: str = CONFIG_NAME,
                multirun: Optional[bool] = True, build_graphs: bool = True) -> SweepCheck:
    """Compose and check every job of ``python -m finetune [--config-dir DIR] [-m] OVERRIDES``; then, when
    all pass and ``build_graphs`` is on, build one run graph per distinct model and data. ``multirun``:
    True for ``-m``, False for one run, None for what the config's ``hydra.mode`` says (as Hydra does
    without ``-m``). Never writes, never trains, never downloads."""
    try:
        with _hydra(overrides, config_dir) as (loader, overrides):
            if multirun is None:
                multirun = _config_mode(loader, overrides, config_name) == RunMode.MULTIRUN
            sweep_cfg = _compose_sweep(loader, overrides, config_name, multirun)
            if multirun:
                _refuse_slurm_without_slurm(sweep_cfg)
            jobs, exhaustive = _jobs(loader, sweep_cfg) if multirun else ([list(sweep_cfg.hydra.overrides.task)], True)
            found: dict[str, list[int]] = {}
            configs: list[Optional[DictConfig]] = []
            for number, job in enumerate(jobs):
                cfg, job_problems = _compose_job(loader, sweep_cfg, job, multirun)
                configs.append(cfg)
                for problem in job_problems:
                    found.setdefault(problem, []).append(number)
    except FinetuneError as error:
        return SweepCheck([], [str(error)], multirun=bool(multirun))
    check = SweepCheck(jobs, exhaustive=exhaustive, multirun=multirun)
    if not found and build_graphs:
        groups: dict[str, list[int]] = {}
        for number, cfg in enumerate(configs):
            groups.setdefault(_graph_key(cfg), []).append(number)
        scanned: dict[str, Any] = {}
        for numbers in groups.values():
            for problem in graph_problems(configs[numbers[0]], scanned):
                found.setdefault(problem, []).extend(numbers)
        check.graphs = len(groups)
        if multirun and str(OmegaConf.select(sweep_cfg, "hydra.launcher._target_")) not in IN_PROCESS_LAUNCHERS:
            from finetune.training.shared_graph import release

            release()  # held for nothing: the jobs run in other processes
    check.problems = _name_jobs(found, _labels(jobs), multirun)
    return check


def _compose_job(loader: Any, sweep_cfg: DictConfig, job: list[str], multirun: bool
                 ) -> tuple[Optional[DictConfig], list[str]]:
    """One job's config (as its launcher composes it) and its problems found without TensorFlow."""
    try:
        cfg = task_config(load_sweep_config(loader.load_sweep_config, sweep_cfg, job) if multirun else sweep_cfg)
        return cfg, _config_problems(cfg, sweep=multirun)
    except (HydraException, OmegaConfBaseException) as error:
        return None, [f"The job's config cannot be composed: {first_line(error)}"]


def _refuse_slurm_without_slurm(sweep_cfg: DictConfig) -> None:
    """A SLURM launcher on a machine without SLURM's commands: FinetuneError, before a job is checked or the
    sweep folder made (for ``tools validate -m``, and a primary config of its own that picks the launcher)."""
    target = str(OmegaConf.select(sweep_cfg, "hydra.launcher._target_", default=""))
    if target.rsplit(".", 1)[-1] == "SlurmLauncher":  # ours and the submitit plugin's
        missing = missing_slurm_commands()
        if missing:
            choice = OmegaConf.select(sweep_cfg, "hydra.runtime.choices", default={}).get("hydra/launcher", "slurm")
            raise FinetuneError(no_slurm_message(choice, missing))


def validate_sweep(overrides: Sequence[str], config_dir: Optional[str] = None, **options: Any) -> list[str]:
    """Every problem of the jobs of ``python -m finetune -m OVERRIDES``, one paragraph each, naming the
    job(s) by their overrides; empty when every job is good. ``options``: those of :func:`check_sweep`."""
    return check_sweep(overrides, config_dir, **options).problems


# --- python -m finetune -m ------------------------------------------------------------------------------
def check_mode() -> str:
    """``FINETUNE_SWEEP_CHECK``: full, config or off (FinetuneError for another value)."""
    mode = os.environ.get(CHECK_ENV, "full").strip().lower() or "full"
    if mode not in CHECK_MODES:
        raise FinetuneError(f"The environment variable {CHECK_ENV} is {mode!r}; it must be one of "
                            f"{', '.join(CHECK_MODES)} (full checks every job of a sweep before it starts, config "
                            "checks the configs and paths only, off skips the check).")
    return mode


def may_be_sweep(argv: Sequence[str]) -> bool:
    """``python -m finetune ARGV`` may start a sweep: ``-m``/``--multirun``, or an override that may set
    ``hydra.mode`` (an hparams_search config sets MULTIRUN). Other command lines are single runs, checked
    by Hydra's callback as before, without composing their config once more here."""
    return any(arg in MULTIRUN_FLAGS or arg.lstrip("+~").startswith(MODE_OVERRIDES) for arg in argv)


def refuse_bad_sweep(argv: Sequence[str]) -> Optional[str]:
    """For ``python -m finetune``'s main(), before Hydra starts: the message to print (then exit 2)
    when ``argv`` starts a sweep with a bad job; None to go on (not a sweep, all good, or switched off)."""
    if not may_be_sweep(argv):
        return None
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(list(argv))  # Hydra's own: it refuses what Hydra would refuse
    if args.cfg or args.info or args.hydra_help or args.shell_completion or args.config_path or args.experimental_rerun:
        return None  # Hydra prints something and launches nothing, or reads another primary config
    try:
        mode = check_mode()
    except FinetuneError as error:
        return str(error)
    if mode == "off":
        return None
    check = check_sweep(args.overrides, args.config_dir, config_name=args.config_name or CONFIG_NAME,
                        multirun=True if args.multirun else None, build_graphs=mode == "full")
    if not check.multirun or not check.problems:
        return None  # a single run is checked by Hydra's callback (finetune.hydra_callbacks.ValidateBeforeRun)
    return (f"{check.report()}\n\nNothing was launched. Fix the job(s) and run the sweep again "
            f"(`python -m finetune.tools validate -m ...` checks a sweep alone; {CHECK_ENV}=off skips this check).")

