"""Hydra glue of the command line: the callback that checks a single run before Hydra makes its folder.

Named in ``conf/config.yaml`` (``hydra.callbacks.validate``). The checks themselves are
:func:`finetune.validate.validate` (the config), :func:`finetune.resolve.path_problems` (the files and
folders it names) and :func:`finetune.files.makeable` (the run directory).
"""
from __future__ import annotations

import copy
import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from finetune.errors import FinetuneError
from finetune.files import makeable
from finetune.resolve import path_problems
from finetune.validate import raise_problems, validate


def task_config(config: DictConfig) -> DictConfig:
    """``config`` without its ``hydra`` node: what the task function receives (made as Hydra makes it)."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


class ValidateBeforeRun(Callback):
    """Hydra callback: validates a single run's config in ``on_run_start``, which Hydra calls before it
    creates the run directory. A bad config thus leaves no directory behind and touches nothing in an
    existing one.

    Hydra turns exceptions raised by callbacks into warnings, so this one prints the problems and ends
    the process itself (status 2, bad input). It also checks the files and folders the config names
    (:func:`finetune.resolve.path_problems`: a missing data.root or checkpoint is told here, before
    TensorFlow loads, rather than after) and that the run directory can be made (Hydra would die in a
    traceback). Sweep jobs are validated by the task function instead, so one bad job
    fails alone."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra does before it reads the config: ${hydra:...}
        try:
            task = task_config(config)
            validate(task)
            raise_problems(path_problems(task, sweep=False))
            check_run_dir(config.hydra.run.dir)
        except FinetuneError as error:
            print(error, file=sys.stderr)
            raise SystemExit(error.exit_status) from None


def check_run_dir(run_dir: str) -> None:
    """FinetuneError unless ``run_dir`` is a writable folder or can be made one."""
    problem = makeable(run_dir)
    if problem:
        raise FinetuneError(f"The run directory hydra.run.dir={run_dir!r} cannot be made: {problem}. Choose "
                            "a folder you can write (hydra.run.dir=...), or run from one (the default is "
                            "outputs/DATE/TIME below the current folder).")
