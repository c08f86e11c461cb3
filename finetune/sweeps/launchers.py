"""What our sweep launchers add to Hydra's: per-job ``status.json``, resuming a sweep, fail_fast.

``hydra/launcher=local|local_parallel|local_submitit|slurm`` (conf/hydra/launcher/) select Hydra's
basic launcher, the joblib launcher and submitit's local and SLURM launchers, each with
:class:`SweepLauncher` mixed in (the classes themselves are declared in the ``hydra_plugins``
namespace, where Hydra looks for plugins: see :mod:`finetune.sweeps.hydra_plugin`). Before launching,
:class:`SweepLauncher` works out each job's directory as the plugin will and

- leaves a job whose ``status.json`` says ``done`` (for the same overrides) alone, answering the sweeper
  with the objective it recorded: running the same sweep again (same ``hydra.sweep.dir``) runs only the
  jobs that did not finish, in their own directories, where they resume from their checkpoints;
- refuses the whole sweep (one paragraph, exit status 2, nothing launched or written into the job
  directories) when a done job's recorded config fingerprint (:mod:`finetune.fingerprint`) is not the one
  the job has now: its results belong to the old config (an experiment file edited since) and must not be
  reported as this one's;
- writes ``queued`` into the others and launches them;
- with ``hydra.launcher.fail_fast=true``, launches nothing more once a job has failed (the failing job
  leaves ``fail_fast.json`` in the sweep directory; a job that starts and finds it is ``cancelled``).

This module imports neither joblib nor submitit; a launcher whose plugin is missing says how to install it.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict

from finetune.errors import USER_ERROR, FinetuneError
from finetune.fingerprint import changed_keys, fingerprint_config, recorded_fingerprint
from finetune.hydra_callbacks import task_config
from finetune.sweeps.status import clear_sweep_failed, read_status, sweep_failed, update_status

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "finetune[cluster]"'
PLUGIN_MODULE = "hydra_plugins.finetune_sweeps"  # finetune/sweeps/hydra_plugin/, see pyproject.toml


_launched = False  # set once a launcher of ours launches a sweep in this process: see jobs_launched()


def jobs_launched() -> bool:
    """Whether this process launched sweep jobs: a failure after that is a failed job, not bad input
    on the command line (jobs of local_parallel, local_submitit and slurm run in other processes)."""
    return _launched


def forget_launches() -> None:
    """A new command in this process (``main()`` called again, as tests and notebooks do) has launched
    nothing yet."""
    global _launched
    _launched = False


class JobCancelled(CompactHydraException):
    """A sweep job not run because an earlier one failed and ``hydra.launcher.fail_fast`` is true."""


@dataclass
class Job:
    """One job of a sweep as the launcher will run it."""

    num: int  # hydra.job.num
    overrides: List[str]  # its task overrides (hydra.overrides.task)
    config: DictConfig  # its composed config, hydra node included
    dir: Path  # its run directory: hydra.sweep.dir/hydra.sweep.subdir


@contextlib.contextmanager
def _current(config: DictConfig) -> Iterator[None]:
    """The job's Hydra config current while inside (interpolations such as ``${hydra:job.num}`` read it)."""
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    try:
        hydra_config.set_config(config)
        yield
    finally:
        hydra_config.cfg = previous


def job_dir(config: DictConfig) -> Path:
    """The directory ``hydra.core.utils.run_job`` gives a sweep job composed as ``config``:
    ``hydra.sweep.dir`` joined with ``hydra.sweep.subdir``, resolved with the job's Hydra config current,
    made absolute against the working directory."""
    with _current(config):
        sweep_dir = str(OmegaConf.select(config, "hydra.sweep.dir"))
        subdir = str(OmegaConf.select(config, "hydra.sweep.subdir"))
    return Path(os.path.abspath(os.path.join(sweep_dir, subdir)))


def config_changes(job: Job) -> Optional[str]:
    """What changed (keys, old -> new) between the config a done job recorded and the one it has now; None
    when they are the same, or the job recorded none (nothing to compare: as before fingerprints)."""
    recorded = recorded_fingerprint(job.dir)
    if recorded is None:
        return None
    with _current(job.config):  # the task's config, resolved as the job would resolve it
        now = fingerprint_config(task_config(job.config))
    return changed_keys(recorded, now)


def changed_config_message(changed: List[tuple[Job, str]], sweep_dir: Path) -> str:
    """Why a sweep run again is refused when done jobs finished under another config, and the fixes."""
    first, changes = changed[0]
    others = f" (and {len(changed) - 1} more: {', '.join(f'#{job.num}' for job, _ in changed[1:])})" \
        if len(changed) > 1 else ""
    return (f"Job #{first.num} of this sweep, {first.dir}, finished under another config{others}, so its results "
            f"are not this command's: {changes}. Nothing was launched and no job directory was changed. Run the "
            "sweep in a new folder (hydra.sweep.dir=NEW_DIR), delete the job directory to run it again under the new "
            f"config, or put those keys back to reuse the results (the sweep folder: {sweep_dir}).")


def finished(status: Optional[dict], overrides: Sequence[str]) -> bool:
    """Whether a job with this ``status.json`` is done, and was run with the same overrides."""
    return (status is not None and status.get("state") == "done"
            and (status.get("job") or {}).get("overrides") == list(overrides))


def _finished_return(job: Job, status: dict) -> JobReturn:
    """What the sweeper gets for a job done in an earlier run of the sweep: its recorded objective."""
    objective = status.get("objective")
    ret = JobReturn(overrides=job.overrides, hydra_cfg=job.config, working_dir=os.getcwd(),
                    task_name=str(job.config.hydra.job.name), status=JobStatus.COMPLETED)
    ret.return_value = float("nan") if objective is None else float(objective)  # null: it was not finite
    return ret


def _failed_return(job: Job, error: Exception) -> JobReturn:
    ret = JobReturn(overrides=job.overrides, hydra_cfg=job.config, working_dir=os.getcwd(),
                    task_name=str(job.config.hydra.job.name), status=JobStatus.FAILED)
    ret.return_value = error
    return ret


def cancel_message(failed: dict, sweep_dir: Path) -> str:
    """Why a job is cancelled under fail_fast, and what to do."""
    return (f"Not run: job {failed.get('job')} of this sweep failed and hydra.launcher.fail_fast is true. Fix "
            f"it, then run the same command with hydra.sweep.dir={sweep_dir} to run the jobs that did not "
            f"finish. Job {failed.get('job')}: {failed.get('message')}")


class SweepLauncher:
    """Mixed in before a Hydra launcher class (see the module docstring). The plugin launches the jobs
    it is handed; this class decides which and writes their ``queued`` status first."""

    config: DictConfig
    hydra_context: Any

    def __init__(self, fail_fast: bool = False, **params: Any) -> None:
        self.fail_fast = bool(fail_fast)  # ours: the plugin never sees it
        self.sweep_started = False
        super().__init__(**params)  # type: ignore[call-arg]

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)  # type: ignore[misc]
        compose_once(hydra_context.config_loader)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        global _launched
        sweep_dir = Path(os.path.abspath(str(self.config.hydra.sweep.dir)))
        jobs = [self.compose_job(overrides, initial_job_idx + index) for index, overrides in enumerate(job_overrides)]
        statuses = {job.num: read_status(job.dir) for job in jobs}
        # Before anything is written: a done job whose config changed since refuses the sweep.
        changed = [(job, changes) for job in jobs if finished(statuses[job.num], job.overrides)
                   for changes in [config_changes(job)] if changes is not None]
        if changed:  # bad input: the paragraph alone, exit 2 (an exception would get Hydra's HYDRA_FULL_ERROR hint)
            print(changed_config_message(changed, sweep_dir), file=sys.stderr)
            raise SystemExit(USER_ERROR)
        _launched = True
        if not self.sweep_started:  # a fail_fast record left by an earlier run of this sweep is stale
            self.sweep_started = True
            clear_sweep_failed(sweep_dir)
        returns: dict[int, JobReturn] = {}
        pending = []
        for job in jobs:
            status = statuses[job.num]
            if finished(status, job.overrides):
                log.info("#%d is done (%s): not launched again", job.num, job.dir)
                returns[job.num] = _finished_return(job, status)  # type: ignore[arg-type]
            else:
                update_status(job.dir, "queued", job={"num": job.num, "id": None, "overrides": job.overrides})
                pending.append(job)
        while pending:
            failed = sweep_failed(sweep_dir) if self.fail_fast else None
            if failed is not None:
                for job in pending:
                    returns[job.num] = self._cancel(job, failed, sweep_dir)
                break
            group = self.next_group(pending)
            pending = pending[len(group):]
            returns.update(zip((job.num for job in group), self.launch_group(group)))
        return [returns[job.num] for job in jobs]

    def compose_job(self, overrides: Sequence[str], num: int) -> Job:
        """Job ``num`` composed the way the plugin launchers compose it (hydra.job.num and id set)."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.num = num
            config.hydra.job.id = num
        return Job(num, list(overrides), config, job_dir(config))

    def next_group(self, pending: List[Job]) -> List[Job]:
        """The jobs to hand the plugin at once: the first run of consecutive numbers (the plugins number
        the jobs of one call consecutively from ``initial_job_idx``)."""
        end = 1
        while end < len(pending) and pending[end].num == pending[end - 1].num + 1:
            end += 1
        return pending[:end]

    def launch_group(self, group: List[Job]) -> Sequence[JobReturn]:
        """The plugin's own launch of ``group`` (consecutive job numbers)."""
        return self.plugin_launch([job.overrides for job in group], group[0].num)

    def plugin_launch(self, job_overrides: List[List[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """The launch of the plugin class this one is mixed into."""
        return super().launch(job_overrides, initial_job_idx=initial_job_idx)  # type: ignore[misc]

    def _cancel(self, job: Job, failed: dict, sweep_dir: Path) -> JobReturn:
        message = cancel_message(failed, sweep_dir)
        log.error("#%d: %s", job.num, message)
        update_status(job.dir, "cancelled", message=message)
        return _failed_return(job, JobCancelled(message))


class SequentialSweepLauncher(SweepLauncher):
    """For Hydra's basic launcher: one job at a time, so fail_fast stops at the first failure."""

    def next_group(self, pending: List[Job]) -> List[Job]:
        return pending[:1]


MAX_COMPOSED = 2048  # job configs kept (a search sweeper's long sweep starts again after that many)
_COMPOSED: dict[tuple[str, tuple[str, ...]], DictConfig] = {}  # (sweep config, job overrides) -> job config
_MASTER_KEYS: dict[int, tuple[DictConfig, str]] = {}  # id(sweep config) -> (it, its key)


def _master_key(master_config: DictConfig) -> str:
    known = _MASTER_KEYS.get(id(master_config))
    if known is None or known[0] is not master_config:
        known = (master_config, json.dumps(OmegaConf.to_container(master_config, resolve=False), sort_keys=True,
                                           default=str))
        _MASTER_KEYS[id(master_config)] = known
    return known[1]


def load_sweep_config(compose: Callable[[DictConfig, list[str]], DictConfig], master_config: DictConfig,
                      sweep_overrides: Sequence[str]) -> DictConfig:
    """Job ``sweep_overrides`` of the sweep ``master_config``, as ``compose`` (a config loader's
    ``load_sweep_config``) composes it, but composed once per process: the sweep's check
    (:mod:`finetune.sweeps.validate_sweep`) composes every job, then Hydra's basic sweeper composes each to check
    it, this launcher to find its directory and the plugin to run it, and one compose takes a tenth of a second
    (a sweep of many short jobs pays it per job). A compose depends only on the sweep's config and the job's
    overrides (and the config files), so later calls get a copy of the first."""
    key = (_master_key(master_config), tuple(sweep_overrides))
    if key not in _COMPOSED:
        if len(_COMPOSED) >= MAX_COMPOSED:
            _COMPOSED.clear()
            _MASTER_KEYS.clear()
        _COMPOSED[key] = compose(master_config, list(sweep_overrides))
    return copy.deepcopy(_COMPOSED[key])


def compose_once(loader: Any) -> None:
    """Make Hydra's config ``loader`` compose through :func:`load_sweep_config`. Set on the loader object itself,
    which the sweeper and the launcher share."""
    if getattr(loader, "_finetune_composes_once", False):
        return
    loader.load_sweep_config = functools.partial(load_sweep_config, loader.load_sweep_config)
    loader._finetune_composes_once = True


class SubmititSweepLauncher(SweepLauncher):
    """For submitit's launchers: every job to launch goes into one job array, even when jobs done
    earlier leave gaps in the numbering. The plugin numbers the array 0..n-1; :meth:`__call__` (run in
    the job, where submitit unpickles this launcher) maps that back to the job's own number, so it
    lands in its own directory; a requeued job (submitit's ``checkpoint``) is called the same way."""

    job_nums: Optional[List[int]] = None

    def next_group(self, pending: List[Job]) -> List[Job]:
        return pending

    def launch_group(self, group: List[Job]) -> Sequence[JobReturn]:
        self.job_nums = [job.num for job in group]
        return self.plugin_launch([job.overrides for job in group], 0)

    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: Any) -> JobReturn:
        if self.job_nums is not None:
            job_num = self.job_nums[job_num]
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)  # type: ignore[misc]


SLURM_COMMANDS = ("sbatch", "srun")  # submitit submits with sbatch and refuses to start without srun


def missing_slurm_commands() -> list[str]:
    """SLURM's commands that are not on PATH (none on a cluster's login node)."""
    return [command for command in SLURM_COMMANDS if shutil.which(command) is None]


def no_slurm_message(launcher: str, missing: Sequence[str]) -> str:
    """Why ``hydra/launcher=LAUNCHER`` (a SLURM launcher) cannot submit from this machine, and what to do
    (submitit would end in a traceback, after the sweep folder is made)."""
    return (f"hydra/launcher={launcher} submits the sweep's jobs to SLURM, but this machine has no "
            f"{' and no '.join(missing)} on PATH: it is not a SLURM cluster's login node, or SLURM's commands are "
            "not loaded (e.g. `module load slurm`). Run the sweep from your cluster's login node, or on this "
            "machine with hydra/launcher=local_submitit (the same submitit path, jobs as local processes) or "
            "hydra/launcher=local.")


def missing_plugin(launcher: str, package: str) -> type:
    """A stand-in for the launcher class of a plugin that is not installed: selecting
    ``hydra/launcher=LAUNCHER`` then ends with how to install it."""

    class MissingPlugin(Launcher):
        def __init__(self, **_params: Any) -> None:
            raise FinetuneError(f"hydra/launcher={launcher} needs the Hydra plugin {package}, which is not installed. "
                                f"Install the cluster extras ({INSTALL_HINT}) or pick another launcher "
                                "(hydra/launcher=local runs the jobs one after another).")

        def setup(self, **_kwargs: Any) -> None:  # never reached: __init__ refuses
            raise NotImplementedError

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            raise NotImplementedError

    MissingPlugin.__name__ = MissingPlugin.__qualname__ = f"Missing_{package.replace('-', '_')}"
    return MissingPlugin


def register_launchers() -> None:
    """Tell Hydra about our launchers. A regular install puts them where Hydra's plugin scan finds them
    (``hydra_plugins/finetune_sweeps``); an editable install (``pip install -e``) maps the module there
    without a folder the scan can walk, so register them by hand (registering twice is harmless)."""
    import importlib

    from hydra.core.plugins import Plugins

    plugin = importlib.import_module(PLUGIN_MODULE)
    for launcher in plugin.LAUNCHERS:
        Plugins.instance().register(launcher)
