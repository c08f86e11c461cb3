"""The jobs of sweeps and run directories, as their files describe them: overrides, status, metrics.

A *job* is a run directory: a sweep's job folder, or a single run's directory. It is found by its
``.hydra/overrides.yaml`` or ``status.json`` and read without TensorFlow (``status.json``,
``metrics.json``, ``timings.json``, ``splits.json``, ``predictions.jsonl``), so a sweep can be read
while it runs. A job that is still running, failed, died or was never finished has no metrics: readers
list it, never average it away. Its state is :func:`finetune.run_status.read_status`'s, the one reader of
``status.json``: a job killed without writing its end shows ``died``, not ``running``.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from finetune.run_files import HISTORY_FILE, METRICS_FILE, PREDICTIONS_FILE, SPLITS_FILE, STATUS_FILE, TIMINGS_FILE
from finetune.run_status import DIED, read_status

OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
HYDRA_FILE = Path(".hydra") / "hydra.yaml"
CONFIG_FILE = Path(".hydra") / "config.yaml"
MAX_DEPTH = 3  # folders below a given folder searched for jobs (a job's own folders are never entered)
LEADING_NUMBER = re.compile(r"^(\d+)(?:_|$)")  # Hydra's default subdir: "${hydra.job.num}_${override_dirname}"


@dataclass
class Job:
    """One run directory as its files describe it."""

    path: Path
    label: str  # its path relative to the folder it was found under (a single run: its folder's name)
    number: Optional[int]  # its number in the sweep
    overrides: dict[str, str]  # KEY -> VALUE text of its command line's task overrides
    # queued, running, done, failed, stopped, cancelled, died; done when metrics.json is there without status
    status: str
    step: Optional[float]
    metrics: Optional[dict]  # metrics.json; None until the run finished
    timings: dict = field(default_factory=dict)
    status_record: dict = field(default_factory=dict)

    @property
    def wall_time_s(self) -> Optional[float]:
        return wall_time(self.status_record.get("started"), self.status_record.get("ended"))

    @property
    def error(self) -> Optional[str]:
        return first_line(self.status_record.get("message")) if self.status in ("failed", DIED) else None

    @property
    def finished(self) -> bool:
        return self.metrics is not None and self.status == "done"

    def value(self, path: str) -> Optional[float]:
        """The number at dotted ``path`` of metrics.json (``val.accuracy``), else None."""
        node: Any = self.metrics
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return number(node)

    def folds(self) -> Optional[int]:
        """k of the run's k-fold cross-validation (splits.json), else None."""
        splits = _read_json(self.path / SPLITS_FILE) or {}
        fold = splits.get("fold")
        return int(fold["folds"]) if isinstance(fold, dict) and fold.get("folds") else None

    def predictions(self, split: str) -> dict[str, bool]:
        """Per example of ``split`` in predictions.jsonl: whether the run predicted its label ({} without it)."""
        path = self.path / PREDICTIONS_FILE
        if not path.is_file():
            return {}
        outcome = {}
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                if entry.get("split") == split:
                    outcome[entry["example"]] = entry["predicted"] == entry["label"]
        return outcome

    def run_record(self) -> dict:
        """run.json ({} without it)."""
        return _read_json(self.path / "run.json") or {}

    def history(self) -> list[dict]:
        """metrics.jsonl: one entry per evaluation ({} lines skipped)."""
        path = self.path / HISTORY_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def find_jobs(folder: Path) -> list[Path]:
    """The job folders of ``folder``: itself when it is one (a single run), else those below it, up to
    :data:`MAX_DEPTH` deep (hidden folders skipped)."""
    folder = Path(folder)
    if is_job(folder):
        return [folder]
    found = []
    for parent, dirs, _files in os.walk(folder):
        path = Path(parent)
        depth = len(path.relative_to(folder).parts)
        if depth and is_job(path):
            found.append(path)
            dirs[:] = []
            continue
        dirs[:] = sorted(name for name in dirs if not name.startswith(".")) if depth < MAX_DEPTH else []
    return found


def is_job(folder: Path) -> bool:
    """Whether ``folder`` is a run directory of ours (a sweep's job or a single run)."""
    return (folder / OVERRIDES_FILE).is_file() or (folder / STATUS_FILE).is_file()


def read_job(folder: Path, base: Path) -> Job:
    """What a job folder says (``base``: the folder it was found under, for its label)."""
    status = read_status(folder) or {}
    metrics = _read_json(folder / METRICS_FILE)
    state = status.get("state") or ("done" if metrics is not None else "unknown")
    step = number(status.get("step")) if status.get("step") is not None else number((metrics or {}).get("steps"))
    relative = folder.relative_to(base).as_posix() if folder != base else folder.name
    return Job(folder, relative, _job_number(folder, status), _overrides(folder, status), state, step,
               metrics if state == "done" else None, _read_json(folder / TIMINGS_FILE) or {}, status)


def load_jobs(folders: list[Path]) -> list[Job]:
    """Every job of ``folders`` (sweep folders or run directories), each once, sorted by job number then label.

    Labels are relative to the folders' common parent, so that they tell jobs apart: a sweep's jobs
    ``0_...``, ``1_...``; two sweeps' ``A/0_...``, ``B/0_...``; single runs (which have no job number)
    ``2024-05-01/12-00-00`` and ``2024-05-02/12-00-00``, not twice ``12-00-00``."""
    paths = list(dict.fromkeys(Path(os.path.abspath(job)) for folder in folders for job in find_jobs(Path(folder))))
    if not paths:
        return []
    root = Path(os.path.commonpath([os.path.abspath(folder) for folder in folders]))
    if is_job(root) or any(path == root for path in paths):  # one run's directory: labelled by its name
        root = root.parent
    jobs = [read_job(path, root) for path in paths]
    return sorted(jobs, key=lambda job: (job.number is None, job.number if job.number is not None else 0, job.label))


def _read_json(path: Path) -> Optional[dict]:
    """A JSON object file, or None when absent or unreadable (a job may be writing it: the next call sees it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _job_number(folder: Path, status: dict) -> Optional[int]:
    """status.json's job.num, else .hydra/hydra.yaml's hydra.job.num, else the folder name's leading number."""
    number = (status.get("job") or {}).get("num") if isinstance(status.get("job"), dict) else None
    if number is None and (folder / HYDRA_FILE).is_file():
        import yaml

        try:
            number = ((yaml.safe_load((folder / HYDRA_FILE).read_text()) or {}).get("hydra") or {})["job"]["num"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            number = None
    if number is None:
        match = LEADING_NUMBER.match(folder.name)
        number = match and match[1]
    try:
        return int(number) if number is not None else None
    except (TypeError, ValueError):
        return None


def _overrides(folder: Path, status: dict) -> dict[str, str]:
    """KEY -> VALUE text of the job's task overrides: .hydra/overrides.yaml, else status.json's job.overrides."""
    listed = None
    if (folder / OVERRIDES_FILE).is_file():
        import yaml

        try:
            listed = yaml.safe_load((folder / OVERRIDES_FILE).read_text())
        except (OSError, yaml.YAMLError):
            listed = None
    if not isinstance(listed, list):
        job = status.get("job") if isinstance(status.get("job"), dict) else {}
        listed = job.get("overrides") if isinstance(job.get("overrides"), list) else []
    overrides = {}
    for text in map(str, listed):
        key, _, value = text.partition("=")
        key = key.lstrip("+")
        if key.startswith("~"):  # ~KEY: the key deleted
            key, value = key[1:], "(deleted)"
        overrides[key] = value
    return overrides


def as_number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def number(value: Any) -> Optional[float]:
    """A finite number as int or float, else None."""
    parsed = as_number(value)
    if parsed is None or not math.isfinite(parsed):
        return None
    return int(value) if isinstance(value, int) else parsed


def timestamp(value: Any) -> Optional[float]:
    """Seconds since the epoch from a number or an ISO 8601 text (status.json's started/ended)."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return as_number(value)
    return as_number(value)


def wall_time(started: Any, ended: Any) -> Optional[float]:
    start, end = timestamp(started), timestamp(ended)
    return round(end - start, 1) if start is not None and end is not None and end >= start else None


def first_line(message: Any) -> Optional[str]:
    text = str(message or "").strip()
    return text.splitlines()[0].strip() if text else None
