"""A run directory's ``status.json`` read back, and whether the process that says ``running`` is still there.

A process killed by SIGKILL (the out-of-memory killer, a cluster's hard limit, ``kill -9``) writes no end:
its ``status.json`` says ``running`` for ever. Every reader of the file (the sweep launchers, ``tools
summarize``, the analysis of runs) goes through :func:`read_status`, which shows such a run as ``died``
when two things hold: the process the status names (its ``pid``, else the one the run directory's
``.lock`` names) is gone from this machine, and nothing holds the run directory's lock (the kernel drops
an ``flock`` when its process ends, however it ends). ``died`` is never written; it is a terminal state
that is not finished, and the next start of the run writes ``running`` over it and resumes from the last
checkpoint. A run recorded on another machine cannot be looked at from here: it stays ``running``.

:func:`resume_command` is the command line that resumes a run in its own directory; the command line records it
in ``status.json`` (``resume_command``) when the run starts and prints it with every message that ends a run early.

The lock itself is taken by :meth:`finetune.training.run_state.RunState.lock`; its text is written here so
that the writer and the readers agree on it: while the run runs, ``process PID on HOST since TIME``
(:func:`lock_text`); when it ends, before the lock is let go, ``not running: finished|stopped|failed at TIME
(was process PID on HOST since TIME)`` (:func:`ended_lock_text`). A process killed outright cannot rewrite it,
so the text alone never says a run is alive: the rule above (process gone, lock not held) decides. No
TensorFlow: the tools read sweeps while they run.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shlex
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

from finetune.run_files import STATUS_FILE

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# What a process writes into status.json; DIED is only ever read (see the module docstring).
WRITTEN_STATES = ("queued", "running", "done", "failed", "stopped", "cancelled")
DIED = "died"
STATES = WRITTEN_STATES + (DIED,)
TERMINAL = ("done", "failed", "stopped", "cancelled", DIED)  # no process works on the run any more
LOCK_TEXT = re.compile(r"^(?:not running: \w+ at \S+ \(was )?process (\d+) on (\S+)")
NOT_RUNNING = "not running"  # how the text of a lock its process let go begins
RESUME_PROGRAM = "python -m finetune"
# Hydra overrides that say where and how a sweep's jobs run: a resumed job is one run in its own directory.
NOT_RESUMED = ("hydra.run.", "hydra.sweep.", "hydra.mode=", "hydra/launcher=", "hydra.launcher.", "hydra/sweeper=",
               "hydra.sweeper.")
SEARCH_OVERRIDE = "hparams_search="  # its config makes a command line a sweep (hydra.mode: MULTIRUN)
HYDRA_PLAIN_VALUE = re.compile(r"[\w/.\-+:@%~]+")  # a value Hydra's override parser takes unquoted


def _hydra_value(text: str) -> str:
    """``text`` as the value of a Hydra override: quoted (Hydra's single quotes) unless plain."""
    if HYDRA_PLAIN_VALUE.fullmatch(text):
        return text
    # Hydra reads a backslash as an escape only before a quote or at the end of the string.
    return "'" + re.sub(r"(\\*)('|$)", lambda match: match[1] * 2 + ("\\'" if match[2] else ""), text) + "'"


def resume_command(task_overrides: Sequence[str], run_dir: str | Path, hydra_overrides: Sequence[str] = (),
                   config_dir: Optional[str] = None, config_name: Optional[str] = None, sweep: bool = False) -> str:
    """The command that resumes a run in ``run_dir``: ``python -m finetune [--config-dir DIR] OVERRIDES
    hydra.run.dir=RUN_DIR``, each word quoted for a POSIX shell (``shlex.split`` gives the words back).

    ``task_overrides`` and ``hydra_overrides`` are Hydra's record of the command line (``hydra.overrides``); of the
    latter only those that shape the config (``hydra.searchpath``, ``hydra.job.*``, ...) are kept, not where or how
    jobs ran. ``sweep``: a sweep's job, resumed as one run in its own directory (``hydra.mode=RUN`` when its
    overrides name an ``hparams_search``, whose config would make the command a sweep again)."""
    words = RESUME_PROGRAM.split()
    if config_dir:
        words += ["--config-dir", str(config_dir)]
    if config_name and config_name != "config":
        words += ["--config-name", str(config_name)]
    words += [str(text) for text in task_overrides]
    words += [str(text) for text in hydra_overrides if not str(text).lstrip("+~").startswith(NOT_RESUMED)]
    if sweep and any(str(text).startswith(SEARCH_OVERRIDE) for text in task_overrides):
        words.append("hydra.mode=RUN")
    words.append(f"hydra.run.dir={_hydra_value(os.path.abspath(os.fspath(run_dir)))}")
    return " ".join(words[:3] + [shlex.quote(word) for word in words[3:]])


def now() -> str:
    """The time now, local with its UTC offset, to the second."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def lock_text(since: str) -> str:
    """What the process holding a run directory's lock writes into it (error messages quote it)."""
    return f"process {os.getpid()} on {os.uname().nodename} since {since}\n"


def ended_lock_text(ended: str, since: str) -> str:
    """What that process writes over it as it lets the lock go: the run ``ended`` (finished, stopped or failed)
    and nothing runs in the directory."""
    return f"{NOT_RUNNING}: {ended} at {now()} (was {lock_text(since).strip()})\n"


def _this_host(host: Optional[str]) -> bool:
    return host is None or host in (socket.gethostname(), os.uname().nodename)


def lock_record(run_dir: str | Path) -> tuple[Optional[int], Optional[str]]:
    """The process and host the run directory's ``.lock`` names, running or not (None, None without one)."""
    try:
        match = LOCK_TEXT.match((Path(run_dir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None, None
    return (int(match[1]), match[2]) if match else (None, None)


def lock_held(run_dir: str | Path) -> bool:
    """Whether a process holds the run directory's lock. Probed with a shared lock taken and dropped at once,
    never by writing; a lock file that cannot be opened counts as held (nothing to be sure of)."""
    try:
        handle = open(Path(run_dir) / LOCK_FILE, "rb")
    except FileNotFoundError:
        return False
    except OSError:
        return True
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            return error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def process_gone(pid: int, host: Optional[str] = None) -> bool:
    """Whether process ``pid`` of ``host`` (None: this machine) is known to be gone: it is on this machine and
    no longer runs (or is a zombie nobody reaped yet). A process on another machine is never known gone."""
    if not _this_host(host):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    except OSError:
        return False
    try:  # a zombie has ended; it only waits for its parent to read its exit status
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def died(run_dir: str | Path, status: dict) -> bool:
    """Whether a run whose status says ``running`` ended without writing its end (see the module docstring)."""
    if status.get("state") != "running":
        return False
    pid, host = status.get("pid"), status.get("host")
    if not isinstance(pid, int) or isinstance(pid, bool):
        pid, host = lock_record(run_dir)
    if pid is None or not process_gone(pid, host):
        return False
    return not lock_held(run_dir)


def read_json_object(path: Path) -> Optional[dict]:
    """A JSON object we wrote (None when the file is missing, unreadable or not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # written atomically, so only a hand edit gets here
        log.warning("Ignoring %s: %s", path, error)
        return None
    return data if isinstance(data, dict) else None


def read_status(run_dir: str | Path) -> Optional[dict]:
    """The run's ``status.json`` (None when there is none, or it is not one of ours), its ``state`` ``died``
    when it says ``running`` but its process ended without saying so, with a message saying what to do."""
    status = read_json_object(Path(run_dir) / STATUS_FILE)
    if status is None or status.get("state") not in WRITTEN_STATES:
        return None
    if died(run_dir, status):
        pid = status.get("pid") or lock_record(run_dir)[0]
        command = status.get("resume_command")
        how = (f"Resume it from its last checkpoint with: {command}" if isinstance(command, str) and command else
               "Run the same command again (a sweep: with hydra.sweep.dir=THE_SWEEP_DIR) to resume from its last "
               "checkpoint.")
        status = {**status, "state": DIED, "message": (
            f"The process (pid {pid}) ended without recording its end: killed (SIGKILL, out of memory) or its "
            f"machine went down. {how}")}
    return status
