"""``summarize``: the table of a sweep. One row per job folder of a multirun directory: the overrides
that vary between the jobs, status, final and best metrics, wall time, speed, a failed job's error.

Reads only what the jobs left (``.hydra/overrides.yaml``, ``status.json``, ``metrics.json``,
``timings.json``); TensorFlow is never imported, so it answers at once, also while the sweep runs.
Prints a Markdown table and writes it, and the same rows as CSV, to ``summary.md`` and ``summary.csv``
in the multirun directory.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from finetune.errors import FinetuneError, closest

HELP = "the table of a sweep: one row per job (varying overrides, status, metrics, wall time); writes summary.md/.csv"
DESCRIPTION = f"""{HELP}.

MULTIRUN_DIR is the folder a sweep (`python -m finetune -m ...`) wrote, e.g. multirun/2024-05-01/12-00-00;
its job folders are those holding .hydra/overrides.yaml or status.json. Columns: the job number, each override
whose value differs between the jobs, status (from status.json; without it, done when metrics.json is there),
the last step, the final metrics (val.accuracy, val.loss, val.top_k_accuracy, test.accuracy), the best
checkpoint's metric (train.keep_best), wall time, images/s, and a failed job's error. Rows are sorted best
first by --sort (default val.accuracy, highest first; jobs without it last)."""

SUMMARY_MD, SUMMARY_CSV = "summary.md", "summary.csv"
STATUS_FILE, METRICS_FILE, TIMINGS_FILE = "status.json", "metrics.json", "timings.json"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
HYDRA_FILE = Path(".hydra") / "hydra.yaml"
METRIC_COLUMNS = ("val.accuracy", "val.loss", "val.top_k_accuracy", "test.accuracy")
DEFAULT_SORT = "val.accuracy"
MAX_DEPTH = 3  # folders below MULTIRUN_DIR searched for jobs (a job's own folders are never entered)
SHORT_NUMBER = 8  # an override's decimal number longer than this is shown to 4 digits in the Markdown table
MESSAGE_WIDTH = 80  # a failed job's error in the Markdown table (the CSV has its whole first line)
LEADING_NUMBER = re.compile(r"^(\d+)(?:_|$)")  # Hydra's default subdir: "${hydra.job.num}_${override_dirname}"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("summarize", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("multirun_dir", metavar="MULTIRUN_DIR", help="the folder a sweep wrote (hydra.sweep.dir)")
    parser.add_argument("--sort", metavar="KEY", default=None,
                        help=f"the column to sort by (default {DEFAULT_SORT}): a metric, an override's key, job, "
                             "status, step, wall_time_s, images_per_second")
    parser.add_argument("--ascending", action="store_true", help="lowest first (default: highest first)")
    return parser


def run(args: argparse.Namespace) -> int:
    folder = Path(args.multirun_dir)
    table = summarize(folder, sort=args.sort, ascending=args.ascending)
    print(table.markdown, end="")
    print(f"\nWritten: {folder / SUMMARY_MD}, {folder / SUMMARY_CSV}")
    return 0


class Summary:
    """The rows of a sweep (column -> value, unformatted) and the columns, varying overrides included."""

    def __init__(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        self.rows, self.columns = rows, columns

    @property
    def markdown(self) -> str:
        header = [_md_cell(column) for column in self.columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(_md_cell(_display(column, row.get(column))) for column in self.columns) + " |"
                  for row in self.rows]
        return "\n".join(lines) + "\n"

    @property
    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.columns + ["dir"])
        for row in self.rows:
            writer.writerow([_csv_cell(row.get(column)) for column in self.columns] + [row["dir"]])
        return out.getvalue()


def summarize(multirun_dir: Path, sort: Optional[str] = None, ascending: bool = False) -> Summary:
    """Read the jobs of ``multirun_dir``, sort them, write ``summary.md`` and ``summary.csv`` there; return
    the table. FinetuneError when the folder holds no job or ``sort`` names no column."""
    from finetune.files import write_text_atomically

    multirun_dir = Path(multirun_dir)
    jobs = find_jobs(multirun_dir)
    if not jobs:
        raise FinetuneError(_no_jobs(multirun_dir))
    rows = [read_job(job, multirun_dir) for job in jobs]
    varying = varying_overrides([row.pop("overrides") for row in rows], rows)
    columns = ["job", *varying, "status", "step"]
    columns += [name for name in METRIC_COLUMNS if any(row.get(name) is not None for row in rows)]
    if any(row.get("best.value") is not None for row in rows):
        columns += ["best.metric", "best.value", "best.step"]
    columns += ["wall_time_s", "images_per_second"]
    if any(row.get("error") for row in rows):
        columns.append("error")
    rows = sort_rows(rows, columns, sort, ascending)
    table = Summary(rows, columns)
    write_text_atomically(multirun_dir / SUMMARY_MD, table.markdown)
    write_text_atomically(multirun_dir / SUMMARY_CSV, table.csv)
    return table


def _no_jobs(folder: Path) -> str:
    if not folder.is_dir():
        return (f"summarize {folder}: no such folder. Name the folder a sweep wrote (hydra.sweep.dir, by default "
                "multirun/DATE/TIME).")
    single = (f" It looks like a single run's directory ({METRICS_FILE} is there): summarize takes the sweep folder "
              "that holds the job folders." if (folder / METRICS_FILE).is_file() else "")
    return (f"summarize {folder}: no job folders found (a job folder holds {OVERRIDES_FILE} or {STATUS_FILE}).{single} "
            "Name the folder a sweep (`python -m finetune -m ...`) wrote, by default multirun/DATE/TIME.")


def find_jobs(multirun_dir: Path) -> list[Path]:
    """The job folders under ``multirun_dir`` (up to :data:`MAX_DEPTH` deep, hidden folders skipped)."""
    found = []
    for folder, dirs, _files in os.walk(multirun_dir):
        path = Path(folder)
        depth = len(path.relative_to(multirun_dir).parts)
        if depth and _is_job(path):
            found.append(path)
            dirs[:] = []
            continue
        dirs[:] = sorted(name for name in dirs if not name.startswith(".")) if depth < MAX_DEPTH else []
    return found


def _is_job(folder: Path) -> bool:
    return (folder / OVERRIDES_FILE).is_file() or (folder / STATUS_FILE).is_file()


def read_job(folder: Path, multirun_dir: Path) -> dict[str, Any]:
    """One row: what a job folder says, unformatted (None where it says nothing); ``overrides`` is a dict."""
    status = _read_json(folder / STATUS_FILE) or {}
    metrics = _read_json(folder / METRICS_FILE)
    timings = _read_json(folder / TIMINGS_FILE) or {}
    state = status.get("state") or ("done" if metrics is not None else "unknown")
    metrics = metrics or {}
    best = metrics.get("best") if isinstance(metrics.get("best"), dict) else {}
    row: dict[str, Any] = {
        "dir": folder.relative_to(multirun_dir).as_posix(),
        "job": _job_number(folder, status),
        "overrides": _overrides(folder, status),
        "status": state,
        "step": _number(status.get("step")) if status.get("step") is not None else _number(metrics.get("steps")),
        "best.metric": best.get("metric"),
        "best.value": _number(best.get("value")),
        "best.step": _number(best.get("step")),
        "wall_time_s": _wall_time(status.get("started"), status.get("ended")),
        "images_per_second": _number(timings.get("images_per_second")),
        "error": _first_line(status.get("message")) if state == "failed" else None,
    }
    for name in METRIC_COLUMNS:
        section, key = name.split(".")
        row[name] = _number((metrics.get(section) or {}).get(key) if isinstance(metrics.get(section), dict) else None)
    return row


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


def varying_overrides(overrides: list[dict[str, str]], rows: list[dict[str, Any]]) -> list[str]:
    """The keys whose value is not the same in every job (a key missing from a job counts as a value),
    in first-seen order; each row gets them as columns (None where the job has no such override)."""
    keys = list(dict.fromkeys(key for job in overrides for key in job))
    varying = [key for key in keys if len({job.get(key) for job in overrides}) > 1]
    for row, job in zip(rows, overrides):
        row.update({key: job.get(key) for key in varying})
    return varying


def sort_rows(rows: list[dict[str, Any]], columns: list[str], key: Optional[str], ascending: bool) -> list[dict]:
    """Rows sorted by column ``key`` (highest first unless ``ascending``), rows without a value last, ties
    by job number. Without ``key``: by val.accuracy when a job has it, else by job number."""
    if key is None:
        key, ascending = (DEFAULT_SORT, ascending) if DEFAULT_SORT in columns else ("job", True)
    if key not in columns:
        raise FinetuneError(f"summarize --sort {key}: no such column. Did you mean "
                            f"{' or '.join(closest(key, columns, 3))}? Columns: {', '.join(columns)}.")
    by_job = sorted(rows, key=lambda row: (row["job"] is None, row["job"] if row["job"] is not None else 0,
                                           row["dir"]))
    present = [row for row in by_job if row.get(key) is not None]
    missing = [row for row in by_job if row.get(key) is None]
    numeric = all(_as_number(row[key]) is not None for row in present)
    value = (lambda row: _as_number(row[key])) if numeric else (lambda row: str(row[key]))
    return sorted(present, key=value, reverse=not ascending) + missing  # stable: ties stay in job order


def _as_number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _number(value: Any) -> Optional[float]:
    """A finite number as int or float, else None."""
    number = _as_number(value)
    if number is None or not math.isfinite(number):
        return None
    return int(value) if isinstance(value, int) else number


def _timestamp(value: Any) -> Optional[float]:
    """Seconds since the epoch from a number or an ISO 8601 text (status.json's started/ended)."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return _as_number(value)
    return _as_number(value)


def _wall_time(started: Any, ended: Any) -> Optional[float]:
    start, end = _timestamp(started), _timestamp(ended)
    return round(end - start, 1) if start is not None and end is not None and end >= start else None


def _first_line(message: Any) -> Optional[str]:
    text = str(message or "").strip()
    return text.splitlines()[0].strip() if text else None


def _display(column: str, value: Any) -> str:
    """A value as the Markdown table shows it."""
    if value is None:
        return "" if column == "error" else "-"
    if column == "wall_time_s":
        return _duration(value)
    if column == "images_per_second":
        return f"{value:.0f}"
    if column == "error" and len(value) > MESSAGE_WIDTH:
        return value[:MESSAGE_WIDTH - 1] + "…"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and len(value) > SHORT_NUMBER and _as_number(value) is not None and "." in value:
        return f"{float(value):.4g}"  # an override Optuna drew (0.006118347066559997): the CSV has it whole
    return str(value)


def _duration(seconds: float) -> str:
    """``42.0s``, ``3m05s``, ``1h02m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _md_cell(text: str) -> str:
    """Text safe in a Markdown table cell: pipes escaped, on one line."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _csv_cell(value: Any) -> Any:
    return "" if value is None else value
