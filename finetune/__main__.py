"""``python -m finetune experiment=NAME [key=value ...]``: one finetuning run (``-m`` for a sweep).

Thin on purpose: ``--help``, shell completion (``-sc``) and config errors answer without importing
TensorFlow. The config is validated (:mod:`finetune.validate`) before a single run's directory exists
and at the start of each sweep job; TensorFlow is imported after that, inside the task.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from finetune.config import CONFIG_PATH, register_configs
from finetune.errors import FinetuneError
from finetune.validate import validate

log = logging.getLogger("finetune")  # not __name__: that is "__main__" under python -m

HELP_FLAGS = ("-h", "--help")
COMPLETION_FLAGS = ("-sc", "--shell-completion")
CONSOLE_SCRIPT = "finetune"  # pyproject.toml [project.scripts]


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

    Bad input ends a single run with its message and status 1. In a sweep the job fails alone: its
    message is logged and it raises, so Hydra records it as failed and starts the next job."""
    try:
        return _finetune(cfg)
    except FinetuneError as error:
        log.error("%s", error)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise SweepJobFailed(str(error)) from None
        sys.exit(error.exit_status)


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
    register_configs()
    task()


if __name__ == "__main__":
    main()
