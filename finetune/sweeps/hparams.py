"""TensorBoard HParams summaries: each run of a sweep records its overrides and final metrics so that the
HParams dashboard of ``tensorboard --logdir MULTIRUN_DIR`` compares the jobs side by side.

A run's ``tensorboard/`` folder gets one more event file holding a session-start summary (the hparams:
the run's task overrides, Hydra's ``hydra.overrides.task``) and, at the final step, the metrics as plain
scalars (``val/accuracy``, ``val/loss``, ``test/accuracy``). No experiment summary is written on
purpose: TensorBoard then builds the table from all sessions it finds (the union of their hparams, each
typed from its values), where one run's experiment summary would hide another run's hparams.

Importing this module does not import TensorFlow or TensorBoard; :func:`write_hparams` imports TensorBoard.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Sequence


# The metrics.json numbers (section, key) written as the session's metrics, under the tag "SECTION/KEY":
# the tags the run's own evaluation summaries use, so the Scalars and HParams dashboards agree.
FINAL_METRICS = (("val", "accuracy"), ("val", "loss"), ("test", "accuracy"))
# The session's metrics are the numbers metrics.json reports (with train.keep_best: the best checkpoint's),
# under their own tags: the evaluation curves (val/accuracy, ...) keep one point per evaluation.
METRIC_PREFIX = "final/"
TENSORBOARD_DIR = "tensorboard"  # a run directory's event folder (pipeline.run writes there too)


def task_overrides_as_hparams(overrides: Sequence[str]) -> dict[str, Any]:
    """Hydra's task overrides (``["optimizer.learning_rate=0.01", "experiment=mobilenet_head"]``) as
    hparams: KEY -> the value as Hydra parses it (float, int, bool or str; a list, a dict or null as its
    text). ``+KEY``/``++KEY`` count as KEY; deletions (``~KEY``) are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    hparams: dict[str, Any] = {}
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException:  # not Hydra syntax (cannot happen for Hydra's own list): keep it as text
            key, _, value = text.partition("=")
            hparams[key.lstrip("+~")] = value
            continue
        if override.is_delete():
            continue
        name = override.key_or_group + (f"@{override.package}" if override.package else "")
        hparams[name] = _hparam_value(override.value(), text)
    return hparams


def _hparam_value(value: Any, text: str) -> Any:
    """A value TensorBoard's hparams accept (bool, int, float, str); anything else as the override's text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return text.split("=", 1)[1] if "=" in text else str(value)


def hparams_metrics(metrics: dict) -> dict[str, float]:
    """The session metrics of a run's metrics.json (as ``pipeline.run`` returns it): ``{"final/val/accuracy":
    ..., "final/val/loss": ..., "final/test/accuracy": ...}``, those present."""
    found = {}
    for section, key in FINAL_METRICS:
        value = (metrics.get(section) or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found[f"{METRIC_PREFIX}{section}/{key}"] = float(value)
    return found


def write_hparams(log_dir: Path, hparams: dict[str, Any], metrics: dict[str, float], step: int,
                  start_time: Optional[float] = None) -> None:
    """Write one HParams session into ``log_dir`` (a new event file): the session start with ``hparams``
    (values bool, int, float or str) and, at ``step``, each of ``metrics`` (tag -> number) as a scalar.

    ``start_time``: the session's start, seconds since the epoch (default: now). Calling it again for the
    same run (a finished run rerun) adds an identical session: TensorBoard shows it once."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import summary_v2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    now = time.time()
    session = summary_v2.hparams_pb(hparams, start_time_secs=now if start_time is None else start_time)
    scalars = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
                                         for tag, value in sorted(metrics.items())])
    writer = EventFileWriter(str(log_dir))
    try:
        writer.add_event(event_pb2.Event(wall_time=now, step=0, summary=session))
        writer.add_event(event_pb2.Event(wall_time=now, step=int(step), summary=scalars))
    finally:
        writer.close()


def write_run_hparams(run_dir: Path, overrides: Sequence[str], metrics: dict) -> None:
    """The call at the end of a run: the session of ``run_dir`` (hparams from its task ``overrides``,
    metrics from its ``metrics``, as ``pipeline.run`` returns them) into ``run_dir/tensorboard``."""
    write_hparams(Path(run_dir) / TENSORBOARD_DIR, task_overrides_as_hparams(overrides), hparams_metrics(metrics),
                  int(metrics.get("steps") or 0))
