"""``python -m finetune experiment=NAME [key=value ...]``: one finetuning run (``-m`` for a sweep).

Thin on purpose: ``--help``, shell completion (``-sc``) and config errors answer without importing
TensorFlow. The config is validated (:mod:`finetune.validate`) before a single run's directory exists
and at the start of each sweep job; TensorFlow is imported after that, inside the task.

Exit statuses (:mod:`finetune.errors`): 2 for bad input (a FinetuneError, or a command line Hydra
cannot compose), 1 for an unexpected exception (one paragraph; ``hydra.verbose=true`` adds the
traceback), 75 for a run stopped on a signal. A sweep exits 1 when a job failed.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import typing
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from finetune.config import CONFIG_PATH, Config, register_configs
from finetune.errors import INTERNAL_ERROR, USER_ERROR, FinetuneError, closest, internal_error
from finetune.validate import validate

log = logging.getLogger("finetune")  # not __name__: that is "__main__" under python -m

HELP_FLAGS = ("-h", "--help")
COMPLETION_FLAGS = ("-sc", "--shell-completion")
CONSOLE_SCRIPT = "finetune"  # pyproject.toml [project.scripts]
DEBUG_HINT = "hydra.verbose=true"

_task_started = False  # set by task(): Hydra exits 1 on an override it cannot compose, before any task


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
        if not dataclasses.is_dataclass(node):
            return None
        fields = {field.name: field for field in dataclasses.fields(node)}
        if part not in fields:
            if depth == 0:  # a config group (experiment=...) or Hydra's own: not ours to judge
                return None
            where = ".".join(parts[:depth])
            return (f"Config key '{key}' is not in the schema (finetune/config.py): '{where}' has no key '{part}'. "
                    f"Did you mean {' or '.join(f'{where}.{name}' for name in closest(part, fields, 3))}? Fix the "
                    "spelling on the command line or in your experiment file.")
        node = typing.get_type_hints(node)[part]
        if typing.get_origin(node) is typing.Union:  # Optional[X]: X (a list or dict stays: not checked)
            node = next((arg for arg in typing.get_args(node) if dataclasses.is_dataclass(arg)), node)
    return None


def _finetune(cfg: DictConfig) -> float:
    validate(cfg)
    import finetune.compat  # noqa: F401  (first: makes TF-Slim work on current TensorFlow)
    from finetune import pipeline

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = pipeline.run(cfg, run_dir)
    print(pipeline.summary_table(metrics, run_dir))
    return metric_value(metrics, cfg.optimized_metric)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def task(cfg: DictConfig) -> float:
    """One run, or one job of a sweep: validate, finetune, return ``optimized_metric`` (the sweep objective).

    Bad input ends a single run with its message and status 2, any other exception with one paragraph
    (its traceback only with hydra.verbose) and status 1. In a sweep the job fails alone: its message
    is logged and it raises, so Hydra records it as failed and starts the next job."""
    global _task_started
    _task_started = True
    try:
        return _finetune(cfg)
    except FinetuneError as error:
        return _fail(str(error), error.exit_status)
    except Exception as error:  # noqa: BLE001  (a bug or the environment: one paragraph, not a traceback)
        verbose = bool(HydraConfig.get().verbose)
        log.error("%s", internal_error(error, DEBUG_HINT), exc_info=error if verbose else None)
        return _fail(internal_error(error, DEBUG_HINT), INTERNAL_ERROR, logged=True)


def _fail(message: str, status: int, logged: bool = False) -> float:
    """End this run (exit ``status``) or, in a sweep, this job alone (Hydra reports it at the end)."""
    if not logged:
        log.error("%s", message)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise SweepJobFailed(message) from None
    sys.exit(status)


def main() -> None:
    """The ``finetune`` console script and ``python -m finetune``: our ``--help``, else Hydra."""
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        from finetune.cli_help import help_text

        print(help_text(), end="")
        return
    if any(arg in COMPLETION_FLAGS for arg in sys.argv[1:]):
        # Hydra names the command to complete after argv[0]. Under `python -m finetune` that is
        # .../finetune/__main__.py, and its script would take over completion of every `python` command
        # yet never complete ours (it only knows `python FILE.py`): complete the console script instead.
        sys.argv[0] = CONSOLE_SCRIPT
    misspelt = [problem for problem in map(misspelt_override, sys.argv[1:]) if problem]
    if misspelt:
        print("\n\n".join(misspelt), file=sys.stderr)
        sys.exit(USER_ERROR)
    register_configs()
    try:
        task()
    except SystemExit as exit_:
        # Hydra prints why it could not compose the command line (misspelt key, wrong type, unknown
        # group option) and exits 1 before the task starts: that is bad input.
        if exit_.code == INTERNAL_ERROR and not _task_started:
            raise SystemExit(USER_ERROR) from None
        raise


if __name__ == "__main__":
    main()
