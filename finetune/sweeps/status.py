"""``status.json``: what a run (a single run, or one job of a sweep) is doing, in its run directory.

The launchers (:mod:`finetune.sweeps.launchers`) write ``queued`` before a sweep starts its jobs, the
task (``finetune/__main__.py``) writes ``running`` when it starts and ``done`` (with the objective),
``failed`` (with the error's message), ``stopped`` (a signal: resumable) or ``cancelled`` (fail_fast)
at the end; :class:`StatusListener` updates ``step`` at each checkpoint. A launcher reads it back to leave a
finished job alone when a sweep is run again. It is read through :func:`finetune.run_status.read_status`, which
shows a run whose process was killed without writing its end (SIGKILL) as ``died``. Fields::

    {"state": "queued"|"running"|"done"|"failed"|"stopped"|"cancelled" (read back: also "died"),
     "step": int|None, "message": str|None, "objective": float|None,
     "started": ISO time|None (null while queued), "ended": ISO time|None,
     "job": {"num": int|None, "id": str|int|None, "overrides": [str, ...]}, "host": str|None,
     "pid": int|None (the process that wrote running last),
     "resume_command": str|None (the command line that resumes the run in its directory, written with running:
                       :func:`finetune.run_status.resume_command`)}

The sweep directory holds one more file while a fail_fast sweep has a failed job: ``fail_fast.json``.
"""
from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path
from typing import Any, Optional

from finetune.files import write_json_atomically
from finetune.run_status import (STATUS_FILE, WRITTEN_STATES, now, read_json_object,  # noqa: F401
                                 read_status)  # (read_status: re-exported)
from finetune.training.loop import Listener, Loop

log = logging.getLogger(__name__)

FAIL_FAST_FILE = "fail_fast.json"  # in the sweep directory: a job failed and hydra.launcher.fail_fast is on
STATES = WRITTEN_STATES  # what update_status writes ("died" is only read: finetune.run_status)
ENDED = ("done", "failed", "stopped", "cancelled")
FIELDS = ("state", "step", "message", "objective", "started", "ended", "job", "host", "pid", "resume_command")
# What a new attempt (queued again, or running after anything but running) starts without.
PER_ATTEMPT = ("message", "objective", "ended")


def update_status(run_dir: str | Path, state: str, **fields: Any) -> None:
    """Set the run's state and the given ``fields`` (see the module docstring), keeping the others.

    ``running`` after another state is a new attempt: ``started`` is now and the message, objective and
    end time of an earlier attempt go; ``running`` again only updates (e.g. ``step=``). An ended state
    sets ``ended``. A non-finite objective is stored as null (JSON has no NaN). ``running`` records this
    process (``pid``, ``host``): a reader tells from them whether it died without writing its end."""
    if state not in STATES:
        raise ValueError(f"status state {state!r} is not one of {', '.join(STATES)}")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise TypeError(f"status.json has no field {', '.join(unknown)}; its fields: {', '.join(FIELDS)}")
    run_dir = Path(run_dir)
    status = dict.fromkeys(FIELDS)
    status.update(read_status(run_dir) or {})
    if state in ("queued", "running") and status["state"] != state:
        status.update(dict.fromkeys(PER_ATTEMPT))
        status["started"] = now() if state == "running" else None
    if state == "running":
        status.update(host=socket.gethostname(), pid=os.getpid())
    if state in ENDED:
        status["ended"] = now()
    status.update(fields, state=state)
    objective = status["objective"]
    if objective is not None:
        status["objective"] = float(objective) if math.isfinite(float(objective)) else None
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(run_dir / STATUS_FILE, status)


def mark_sweep_failed(sweep_dir: str | Path, job_num: Any, message: str) -> None:
    """Record in the sweep directory that job ``job_num`` failed, for fail_fast: later jobs see it."""
    write_json_atomically(Path(sweep_dir) / FAIL_FAST_FILE, {"job": job_num, "message": message, "time": now()})


def sweep_failed(sweep_dir: str | Path) -> Optional[dict]:
    """The fail_fast record of the sweep (``{"job", "message", "time"}``), or None while no job failed."""
    return read_json_object(Path(sweep_dir) / FAIL_FAST_FILE)


def clear_sweep_failed(sweep_dir: str | Path) -> None:
    """Forget an earlier run's failure: a sweep run again starts with a clean slate."""
    (Path(sweep_dir) / FAIL_FAST_FILE).unlink(missing_ok=True)


class StatusListener(Listener):
    """Keeps status.json's ``step`` at the run's latest checkpoint while it trains (a training-loop listener,
    added by the command line: a run started from Python has no status.json)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = run_dir

    def checkpointed(self, loop: Loop, step: int, checkpoint: str) -> None:
        update_status(self.run_dir, "running", step=step)
