"""``python -m finetune experiment=NAME [key=value ...]``: one finetuning run (``-m`` for a sweep).

Thin on purpose: ``--help``, shell completion (``-sc``) and config errors answer without importing
TensorFlow. What the command line's words alone tell (a wrong group option, a misspelt group, a missing
plugin or SLURM: :mod:`finetune.preflight`) is refused before Hydra starts; a single run's config and
the files and folders it names, after Hydra composed it and before it makes the run directory. The config is
validated (:mod:`finetune.validate`) before a single run's directory exists
and at the start of each sweep job; TensorFlow is imported after that, inside the task. A sweep (``-m``,
or ``hparams_search=...``) is checked whole before Hydra starts (:mod:`finetune.sweeps.validate_sweep`):
one bad job and nothing is launched.

Exit statuses (:mod:`finetune.errors`): 2 for bad input (a FinetuneError, or a command line Hydra
cannot compose), 1 for an unexpected exception (one paragraph; ``hydra.verbose=true`` adds the
traceback), 75 for a run stopped on a signal. A sweep exits 1 when a job failed.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from finetune.config import CONFIG_PATH, Config, field_schema, register_configs, schema_fields
from finetune.errors import INTERNAL_ERROR, USER_ERROR, FinetuneError, RunStopped, closest, internal_error
from finetune.preflight import command_line_problem
from finetune.run_status import resume_command
from finetune.sweeps.launchers import (JobCancelled, cancel_message, forget_launches, jobs_launched,
                                       register_launchers)
from finetune.sweeps.hparams import write_run_hparams
from finetune.sweeps.status import mark_sweep_failed, sweep_failed, update_status
from finetune.sweeps.validate_sweep import refuse_bad_sweep
from finetune.validate import validate

log = logging.getLogger("finetune")  # not __name__: that is "__main__" under python -m

HELP_FLAGS = ("-h", "--help")
COMPLETION_FLAGS = ("-sc", "--shell-completion")
CONSOLE_SCRIPT = "finetune"  # pyproject.toml [project.scripts]
DEBUG_HINT = "hydra.verbose=true"

_task_started = False  # set by task(): Hydra exits 1 on an override it cannot compose, before any task

register_launchers()  # hydra/launcher=local|local_parallel|local_submitit|slurm (conf/hydra/launcher/)


class SweepJobFailed(CompactHydraException):
    """A sweep job's FinetuneError. Hydra records the job as failed, runs the others, and at the end
    of the sweep prints this message (compact: no traceback) and exits with status 1."""


def metric_value(metrics: dict, path: str) -> float:
    """The number at dotted ``path`` (``optimized_metric``) of a run's metrics."""
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            node = None
            break
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        numbers = [f"{section}.{key}" for section, values in metrics.items() if isinstance(values, dict)
                   for key, value in values.items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
        raise FinetuneError(f"Config key 'optimized_metric' is {path!r}, which names no number in this run's "
                            f"metrics.json. Numbers it holds: {', '.join(numbers)}.")
    return float(node)


def misspelt_override(override: str) -> str | None:
    """The problem of a ``KEY=VALUE`` override whose dotted KEY is not in the schema, else None.

    Hydra answers a misspelt key with "use +KEY=VALUE to append", which only trades one error for
    another: say which keys are there instead. Keys Hydra owns, group choices, ``+``/``~`` overrides,
    indexed keys and the free-form ``backbone.params`` are left to Hydra and :mod:`finetune.validate`.
    """
    key = override.split("=", 1)[0].strip()
    if "=" not in override or not key or key[0] in "+~" or any(c in key for c in "[]@/ "):
        return None
    node: Any = Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):  # a list, a free-form dict or a plain value: not checked here
            return None
        fields = schema_fields(node)
        if part not in fields:
            if depth == 0:  # a config group (experiment=...) or Hydra's own: not ours to judge
                return None
            where = ".".join(parts[:depth])
            return (f"Config key '{key}' is not in the schema (finetune/config.py): '{where}' has no key '{part}'. "
                    f"Did you mean {' or '.join(f'{where}.{name}' for name in closest(part, fields, 3))}? Fix the "
                    "spelling on the command line or in your experiment file.")
        node = field_schema(fields[part])
    return None


def _finetune(cfg: DictConfig) -> float:
    validate(cfg)
    import finetune.compat  # noqa: F401  (first: makes TF-Slim work on current TensorFlow)
    from finetune import pipeline
    from finetune.resolve import resolve
    from finetune.sweeps.status import StatusListener

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = pipeline.run(cfg, run_dir, resolve(cfg), listeners=[StatusListener(run_dir)])
    if "timings" in metrics:  # trained now (a finished run's rerun returns its metrics.json): one HParams session
        write_run_hparams(run_dir, list(HydraConfig.get().overrides.task), metrics)
    print(pipeline.summary_table(metrics, run_dir))
    return metric_value(metrics, cfg.optimized_metric)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def task(cfg: DictConfig) -> float:
    """One run, or one job of a sweep: validate, finetune, return ``optimized_metric`` (the sweep objective).

    Bad input ends a single run with its message and status 2, any other exception with one paragraph
    (its traceback only with hydra.verbose) and status 1. In a sweep the job fails alone: its message
    is logged and it raises, so Hydra records it as failed and starts the next job. Either way the run
    directory's status.json (:mod:`finetune.sweeps.status`) says running, then done, failed or stopped."""
    global _task_started
    _task_started = True
    try:
        _cancel_if_the_sweep_failed()
        _record("running", job=_job_record(), resume_command=_resume_command())
        objective = _finetune(cfg)
    except JobCancelled as error:
        _record("cancelled", message=str(error))
        log.error("%s", error)
        raise
    except RunStopped as error:
        message = _with_resume_command(error)
        _record("stopped", step=error.step, message=message)
        if error.hand_over is not None:  # a cluster launcher's signal handler: it requeues this job, then exits
            log.warning("%s Handing the signal to the launcher to requeue the job.", message)
            error.hand_over()
        return _fail(message, error.exit_status)
    except FinetuneError as error:
        return _fail(_with_resume_command(error), error.exit_status, failed=True)
    except Exception as error:  # noqa: BLE001  (a bug or the environment: one paragraph, not a traceback)
        verbose = bool(HydraConfig.get().verbose)
        log.error("%s", internal_error(error, DEBUG_HINT), exc_info=error if verbose else None)
        return _fail(internal_error(error, DEBUG_HINT), INTERNAL_ERROR, logged=True, failed=True)
    _record("done", objective=objective)
    return objective


def _fail(message: str, status: int, logged: bool = False, failed: bool = False) -> float:
    """End this run (exit ``status``) or, in a sweep, this job alone (Hydra reports it at the end).
    ``failed``: record it in status.json (and, under fail_fast, for the sweep's later jobs)."""
    if not logged:
        log.error("%s", message)
    if failed:
        _record("failed", message=message)
        if _in_sweep() and _fail_fast():
            _quietly(mark_sweep_failed, _sweep_dir(), HydraConfig.get().job.num, message)
    if _in_sweep():
        raise SweepJobFailed(message) from None
    sys.exit(status)


def _in_sweep() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def _fail_fast() -> bool:
    """``hydra.launcher.fail_fast`` (our launchers' key; other launchers have none: off)."""
    return bool(OmegaConf.select(HydraConfig.get(), "launcher.fail_fast", default=False))


def _sweep_dir() -> Path:
    return Path(os.path.abspath(str(HydraConfig.get().sweep.dir)))


def _cancel_if_the_sweep_failed() -> None:
    """Under fail_fast, a job that starts after another one failed does not train."""
    if _in_sweep() and _fail_fast():
        failed = sweep_failed(_sweep_dir())
        if failed is not None:
            raise JobCancelled(cancel_message(failed, _sweep_dir()))


def _job_record() -> dict:
    """Which job this is, for status.json: its number and id in the sweep, its overrides."""
    hydra_config = HydraConfig.get()
    job_id = OmegaConf.select(hydra_config, "job.id", default=None, throw_on_missing=False)
    return {"num": OmegaConf.select(hydra_config, "job.num", default=None, throw_on_missing=False),
            "id": None if job_id is None else str(job_id),
            "overrides": list(hydra_config.overrides.task)}


def _resume_command() -> str:
    """The command line that resumes this run (a sweep's job: as one run) in its own directory."""
    hydra_config = HydraConfig.get()
    config_dir = next((str(source.path) for source in hydra_config.runtime.config_sources
                       if source.provider == "command-line" and source.schema == "file"), None)
    return resume_command(list(hydra_config.overrides.task), hydra_config.runtime.output_dir,
                          list(hydra_config.overrides.hydra), config_dir=config_dir,
                          config_name=hydra_config.job.config_name, sweep=_in_sweep())


def _with_resume_command(error: FinetuneError) -> str:
    """The error's message; for a run that ended early keeping its checkpoints, with the command that resumes it."""
    if not error.resumable:
        return str(error)
    message = f"{error} Resume it with: {_resume_command()}"
    if _in_sweep():
        message += (f" (or run the sweep's command again with hydra.sweep.dir={_sweep_dir()}: it runs only the jobs "
                    "that did not finish)")
    return message


def _record(state: str, **fields: Any) -> None:
    """The run's status.json says ``state``; a status that cannot be written never hides the run's own outcome."""
    _quietly(update_status, HydraConfig.get().runtime.output_dir, state, **fields)


def _quietly(write: Any, *args: Any, **kwargs: Any) -> None:
    try:
        write(*args, **kwargs)
    except OSError as error:
        log.warning("Could not write the run's status (%s): %s", getattr(write, "__name__", write), error)


def main() -> None:
    """The ``finetune`` console script and ``python -m finetune``: our ``--help``, else Hydra."""
    global _task_started
    _task_started = False  # this command's own (main() may run more than once in a process)
    forget_launches()
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        from finetune.cli_help import help_text

        print(help_text(), end="")
        return
    if any(arg in COMPLETION_FLAGS for arg in sys.argv[1:]):
        # Hydra names the command to complete after argv[0]. Under `python -m finetune` that is
        # .../finetune/__main__.py, and its script would take over completion of every `python` command
        # yet never complete ours (it only knows `python FILE.py`): complete the console script instead.
        sys.argv[0] = CONSOLE_SCRIPT
    # What the words alone tell (a wrong group option, a misspelt group or key, a plugin or SLURM missing,
    # flags that cannot go together) is told before Hydra starts: its own text would list its search path.
    problem = command_line_problem(sys.argv[1:])
    misspelt = [problem] if problem else [problem for problem in map(misspelt_override, sys.argv[1:]) if problem]
    if misspelt:
        print("\n\n".join(misspelt), file=sys.stderr)
        sys.exit(USER_ERROR)
    # A sweep is checked whole before Hydra starts: a bad job stops it while nothing is queued and no
    # sweep directory exists (FINETUNE_SWEEP_CHECK=config checks without TensorFlow, =off not at all).
    refusal = refuse_bad_sweep(sys.argv[1:])
    if refusal:
        print(refusal, file=sys.stderr)
        sys.exit(USER_ERROR)
    register_configs()
    try:
        task()
    except SystemExit as exit_:
        # Hydra prints why it could not compose the command line (misspelt key, wrong type, unknown
        # group option) and exits 1 before the task starts: that is bad input.
        if exit_.code == INTERNAL_ERROR and not (_task_started or jobs_launched()):
            raise SystemExit(USER_ERROR) from None
        raise


if __name__ == "__main__":
    main()
