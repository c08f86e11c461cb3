"""``runs``: the runs under ``outputs/`` and ``multirun/`` (or the folders named), newest first, and the command
that resumes each one that did not finish.

One line per run directory: where it is, its status (:func:`finetune.run_status.read_status`'s: a run killed
without writing its end shows ``died``), the step it reached of its length (phases.json's, else ``train.steps``),
its best validation metric (``train.keep_best``'s metric, else ``val.accuracy``, over ``metrics.jsonl`` and
``metrics.json``), its age and its overrides. ``--resumable`` keeps the stopped, failed and died runs and prints
the command that resumes each in its own directory (status.json's ``resume_command``). Reads only the runs'
files, never TensorFlow: it answers at once, also while runs train.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from finetune.analysis.groups import higher_is_better
from finetune.analysis.runs import (CONFIG_FILE, HISTORY_FILE, OVERRIDES_FILE, Job, find_jobs, number, read_job,
                                    timestamp)
from finetune.errors import FinetuneError
from finetune.run_files import PHASES_FILE
from finetune.run_status import DIED, resume_command

HELP = ("the runs under outputs/ and multirun/, newest first; --resumable: those that did not finish, with the command "
        "that resumes each")
DEFAULT_FOLDERS = ("outputs", "multirun")  # hydra.run.dir and hydra.sweep.dir's defaults (conf/config.yaml)
RESUMABLE = ("stopped", "failed", DIED)
DEFAULT_METRIC = "val.accuracy"
DESCRIPTION = f"""{HELP}.

DIR: a folder of runs (default: {' and '.join(f'{name}/' for name in DEFAULT_FOLDERS)} in the current folder, where
`python -m finetune` puts single runs and sweeps), a sweep folder or one run's directory; give several to list them
together. Each run: its directory, status (done, running, stopped, failed, died: killed without recording its end,
queued, cancelled), the step it reached of its length in steps, its best validation metric (train.keep_best's metric,
else val.accuracy, over its evaluations), its age (since it ended, else since it started) and its overrides.

--resumable lists only the stopped, failed and died runs, each followed by the command that resumes it in its own
directory from its last checkpoint (the command it was started with, plus hydra.run.dir=ITS_DIR; a sweep's job runs
alone). Run it from the folder the run was started in when its overrides hold relative paths."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("runs", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", metavar="DIR", nargs="*",
                        help="folders of runs, sweep folders or run directories (default: "
                             f"{', '.join(DEFAULT_FOLDERS)})")
    parser.add_argument("--resumable", action="store_true",
                        help="only the stopped, failed and died runs, each with the command that resumes it")
    return parser


@dataclass
class Run:
    """One run directory, as ``tools runs`` shows it."""

    job: Job
    shown: str  # its path as listed: relative to the current folder when it lies below it
    started: float  # seconds since the epoch: when it started (else when its folder last changed)
    age_from: float  # when it ended, else started
    total_steps: Optional[int]
    best: Optional[tuple[str, float]]  # (metric, value)
    overrides: list[str]  # its command line's task overrides, as typed

    @property
    def resume_command(self) -> str:
        """status.json's record of it; for a run started before it was recorded, made from its overrides."""
        recorded = self.job.status_record.get("resume_command")
        return recorded if isinstance(recorded, str) and recorded else resume_command(self.overrides, self.job.path)


def run(args: argparse.Namespace) -> int:
    runs = list_runs([Path(folder) for folder in args.folders] if args.folders else None, args.resumable)
    print(format_runs(runs, args.resumable), end="")
    return 0


def list_runs(folders: Optional[list[Path]] = None, resumable: bool = False, now: Optional[float] = None) -> list[Run]:
    """The runs of ``folders`` (None: :data:`DEFAULT_FOLDERS` of the current folder, those that exist), newest
    first; ``resumable``: only those whose state is in :data:`RESUMABLE`. FinetuneError for a folder that is not
    there, or when none of the default folders is."""
    if folders is None:
        folders = [Path(name) for name in DEFAULT_FOLDERS if Path(name).is_dir()]
        if not folders:
            raise FinetuneError(
                f"tools runs: no {' or '.join(f'{name}/' for name in DEFAULT_FOLDERS)} in {os.getcwd()}, where "
                "`python -m finetune` puts its runs (hydra.run.dir) and sweeps (hydra.sweep.dir) by default. Run it "
                "from the folder you started the runs in, or name the folders: tools runs DIR [DIR ...].")
    for folder in folders:
        if not folder.is_dir():
            raise FinetuneError(f"tools runs {folder}: no such folder. Name a folder of runs (outputs/, multirun/), "
                                "a sweep folder or a run's directory.")
    seen: set[Path] = set()
    runs = []
    for folder in folders:
        for path in find_jobs(folder):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            job = read_job(path, folder)
            if not resumable or job.status in RESUMABLE:
                runs.append(_run(job, time.time() if now is None else now))
    return sorted(runs, key=lambda found: (-found.started, found.shown))


def _run(job: Job, now: float) -> Run:
    status = job.status_record
    try:
        changed = job.path.stat().st_mtime
    except OSError:
        changed = now
    started = timestamp(status.get("started")) or changed
    config = _yaml(job.path / CONFIG_FILE)
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    total = _planned_steps(job.path, train)
    metric = train.get("keep_best") if isinstance(train.get("keep_best"), str) else DEFAULT_METRIC
    return Run(job, _shown(job.path), started, timestamp(status.get("ended")) or started,
               int(total) if total is not None else None, best_value(job, metric), _overrides(job))


def _planned_steps(run_dir: Path, train: dict[str, Any]) -> Optional[float]:
    """The run's length: its last phase's last step as phases.json records it (train.epochs and phases resolved),
    else train.steps of its config (None: neither says)."""
    try:
        phases = json.loads((run_dir / PHASES_FILE).read_text())
        return number(phases[-1]["last_step"])
    except (OSError, ValueError, LookupError, TypeError):
        return number(train.get("steps")) if train.get("epochs") is None else None


def best_value(job: Job, metric: str) -> Optional[tuple[str, float]]:
    """The best value of ``metric`` (``val.accuracy``: highest; a loss: lowest) over the run's evaluations
    (metrics.jsonl), its final metrics and its kept best (metrics.json), with the metric; None without one."""
    section, _, key = metric.partition(".")
    values = []
    path = job.path / HISTORY_FILE
    try:
        lines = path.read_text().splitlines() if path.is_file() else []
    except OSError:
        lines = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # a line being written
            continue
        if isinstance(entry, dict) and isinstance(entry.get(section), dict):
            values.append(number(entry[section].get(key)))
    metrics = job.metrics or {}
    values.append(job.value(metric))
    best = metrics.get("best") if isinstance(metrics.get("best"), dict) else {}
    if best.get("metric") == metric:
        values.append(number(best.get("value")))
    values = [value for value in values if value is not None]
    if not values:
        return None
    return metric, (max if higher_is_better(metric) else min)(values)


def _yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping file ({} when absent, unreadable or not a mapping: a run may be writing it)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _overrides(job: Job) -> list[str]:
    """The run's task overrides as typed: .hydra/overrides.yaml, else status.json's job.overrides."""
    import yaml

    try:
        listed = yaml.safe_load((job.path / OVERRIDES_FILE).read_text()) if (job.path / OVERRIDES_FILE).is_file() \
            else None
    except (OSError, yaml.YAMLError):
        listed = None
    if not isinstance(listed, list):
        record = job.status_record.get("job") if isinstance(job.status_record.get("job"), dict) else {}
        listed = record.get("overrides") if isinstance(record.get("overrides"), list) else []
    return [str(text) for text in listed]


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it lies below it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(os.getcwd()).as_posix()
    except ValueError:
        return absolute.as_posix()


def age(seconds: float) -> str:
    """``40s``, ``12m``, ``5h``, ``3d``: how long ago."""
    seconds = max(0.0, seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def format_runs(runs: list[Run], resumable: bool = False, now: Optional[float] = None) -> str:
    """The runs as aligned columns (the overrides last, whole); with ``resumable``, each run's resume command
    on the line below it."""
    if not runs:
        return "No stopped, failed or died runs.\n" if resumable else "No runs.\n"
    now = time.time() if now is None else now
    header = ("DIR", "STATUS", "STEP", "BEST", "AGE", "OVERRIDES")
    rows = []
    for found in runs:
        step = "-" if found.job.step is None else f"{found.job.step:g}"
        best = "-" if found.best is None else f"{found.best[0]} {found.best[1]:.4g}"
        rows.append((found.shown, found.job.status, f"{step}/{found.total_steps or '?'}", best,
                     age(now - found.age_from), " ".join(found.overrides) or "-"))
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header) - 1)]
    lines = []
    for index, row in enumerate([header, *rows]):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
        if resumable and index:
            lines.append(f"  resume: {runs[index - 1].resume_command}")
    return "\n".join(line.rstrip() for line in lines) + "\n"
