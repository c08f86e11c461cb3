"""``summarize``: the tables of sweeps: one row per job, and the statistics of each configuration over its
repeats, compared with a baseline on request.

Reads only what the jobs left (:mod:`finetune.analysis.runs`); TensorFlow is never imported, so it answers at
once, also while a sweep runs. Jobs are grouped by their overrides without the repeat keys (``train.seed``,
``data.fold``; ``--repeat-keys``): each group is one configuration, and each metric gets its mean, standard
deviation and 95% interval over the group's finished repeats (:mod:`finetune.analysis.statistics` says which
interval and why). ``--baseline GROUP`` compares every other group with it, paired on the repeats both have.
Prints Markdown, always; writes ``summary.md``, ``summary.csv`` (jobs), ``groups.csv``, ``summary.tex`` and, with
a baseline, ``comparison.csv``; ``--figures`` adds the figures of :mod:`finetune.analysis.figures`.

The files go where they are asked for, and nowhere else: into ``--output FOLDER`` when it is given; without it,
into the (first) folder summarized only when that folder is ours (a sweep folder, which holds Hydra's
``multirun.yaml``, or a run directory) and holds no file of those names that summarize did not write there:
:data:`RECORD_FILE` keeps the sha256 of each file it wrote, so a user's own ``summary.md`` (or one of ours the
user edited since) is never overwritten. Otherwise, and when the folder cannot be written (read-only), the
table is printed and one line says why nothing was written, naming ``--output``. Every file is written
atomically.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Optional

from finetune.analysis import groups as grouping
from finetune.analysis import tables
from finetune.analysis.runs import Job, as_number, is_job, load_jobs
from finetune.errors import FinetuneError, closest
from finetune.files import write_text_atomically

HELP = ("the tables of sweeps: one row per job; per configuration, each metric's mean and confidence interval "
        "over repeats")
DESCRIPTION = f"""{HELP}.

DIR is a folder a sweep (`python -m finetune -m ...`) wrote, e.g. multirun/2024-05-01/12-00-00, or a single
run's directory; give several to summarize them together (sweeps and single runs alike). The jobs table: the job,
its run directory (relative to the folders' common parent), each override that differs between the jobs, \
status, the last step, the final metrics, the best checkpoint's metric, wall time, images/s,
a failed job's error; sorted best first by --sort. The groups table: the jobs grouped by their overrides without
--repeat-keys (train.seed and data.fold), each metric's mean ± half its 95% interval over the group's finished
repeats (Student's t over seeds; the corrected resampled t of Nadeau and Bengio over folds). --baseline GROUP
compares every other group with it on the repeats both have: the mean difference and its interval, the paired
t-test and the Wilcoxon signed-rank test (Holm-corrected), and McNemar's exact test on the per-example test
predictions. A job killed without writing its end (SIGKILL) shows as died.

The tables are always printed. The files (summary.md, summary.csv, groups.csv, summary.tex, comparison.csv,
figures/) go into --output FOLDER; without it, into the first DIR only when it is a sweep folder or run
directory and no file of those names there is one summarize did not write (a summary.md of your own is never
overwritten); otherwise one line says why nothing was written."""

SUMMARY_MD, SUMMARY_CSV, GROUPS_CSV, COMPARISON_CSV, SUMMARY_TEX = (
    "summary.md", "summary.csv", "groups.csv", "comparison.csv", "summary.tex")
FIGURES_DIR = "figures"
RECORD_FILE = ".summarize.json"  # in a folder summarize wrote into: {"written": {relative path: sha256}}
SWEEP_MARKER = "multirun.yaml"  # Hydra writes it into every sweep folder it starts
JOB_METRICS = ("val.accuracy", "val.balanced_accuracy", "val.macro_f1", "val.loss", "val.top_k_accuracy",
               "test.accuracy", "val.tta.accuracy", "test.tta.accuracy")  # columns shown where a job has them
DEFAULT_SORT = "val.accuracy"
SHORT_NUMBER = 8  # an override's decimal number longer than this is shown to 4 digits in the Markdown table
MESSAGE_WIDTH = 80  # a failed job's error in the Markdown table (the CSV has its whole first line)


def _names(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("summarize", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", metavar="DIR", nargs="+", help="sweep folders (hydra.sweep.dir) or run directories")
    parser.add_argument("--sort", metavar="KEY", default=None,
                        help=f"the jobs table's column to sort by (default {DEFAULT_SORT}): a metric, an override's "
                             "key, job, dir, status, step, wall_time_s, images_per_second")
    parser.add_argument("--ascending", action="store_true", help="lowest first (default: highest first)")
    parser.add_argument("--metrics", metavar="M,M", help="metrics of the groups table (default: those of "
                        f"{', '.join(grouping.METRICS)} the jobs report)")
    parser.add_argument("--repeat-keys", metavar="K,K", default=",".join(grouping.REPEAT_KEYS),
                        help="overrides that make repeats of one configuration (default: %(default)s)")
    parser.add_argument("--baseline", metavar="GROUP", help="compare every other group with this one: its label, "
                        "or KEY=VALUE overrides only it has (e.g. optimizer.learning_rate=0.01)")
    parser.add_argument("--caption", help="the LaTeX table's caption (the interval's method follows it)")
    parser.add_argument("--output", metavar="FOLDER", help="write the files into FOLDER (default: into the first DIR "
                        "when it is a sweep folder or run directory holding no summary files that summarize did "
                        "not write; else print only)")
    parser.add_argument("--figures", action="store_true", help="also draw figures (PNG and PDF) into OUTPUT/figures")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        report = summarize_folders([Path(folder) for folder in args.folders], sort=args.sort,
                                   ascending=args.ascending, metrics=_names(args.metrics),
                                   repeat_keys=_names(args.repeat_keys) or [], baseline=args.baseline,
                                   caption=args.caption, output=Path(args.output) if args.output else None,
                                   figures=args.figures)
    except NotWritten as error:  # the table first, then why --output got nothing (exit 2)
        print(error.report.markdown, end="")
        raise
    print(report.markdown, end="")
    if report.written:
        print(f"\nWritten: {', '.join(str(path) for path in report.written)}")
    if report.note:
        print(f"\n{report.note}")
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
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([_csv_cell(row.get(column)) for column in self.columns])
        return out.getvalue()


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
    numeric = all(as_number(row[key]) is not None for row in present)
    value = (lambda row: as_number(row[key])) if numeric else (lambda row: str(row[key]))
    return sorted(present, key=value, reverse=not ascending) + missing  # stable: ties stay in job order


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
    if isinstance(value, str) and len(value) > SHORT_NUMBER and as_number(value) is not None and "." in value:
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


class Report:
    """What summarize found: the jobs table, the groups and their statistics, the comparison, the files written."""

    def __init__(self, jobs: Summary, groups_md: str, comparison_md: str, written: list[Path]) -> None:
        self.jobs, self.groups_md, self.comparison_md, self.written = jobs, groups_md, comparison_md, written
        self.note: Optional[str] = None  # one line: why no file was written (the table is printed all the same)

    @property
    def markdown(self) -> str:
        parts = ["## Jobs\n\n" + self.jobs.markdown, "## Groups\n\n" + self.groups_md]
        if self.comparison_md:
            parts.append("## Comparison\n\n" + self.comparison_md)
        return "\n".join(parts)


def job_row(job: Job) -> dict[str, Any]:
    best = (job.metrics or {}).get("best") if isinstance((job.metrics or {}).get("best"), dict) else {}
    row: dict[str, Any] = {"dir": job.label, "job": job.number, "status": job.status, "step": job.step,
                           "best.metric": best.get("metric"), "best.value": as_number(best.get("value")),
                           "best.step": as_number(best.get("step")), "wall_time_s": job.wall_time_s,
                           "images_per_second": as_number(job.timings.get("images_per_second")), "error": job.error}
    row.update({name: job.value(name) for name in JOB_METRICS})
    return row


def summarize(multirun_dir: Path, sort: Optional[str] = None, ascending: bool = False) -> Summary:
    """The jobs table of one folder (its files written as :func:`summarize_folders` writes them unasked)."""
    return summarize_folders([Path(multirun_dir)], sort=sort, ascending=ascending).jobs


def summarize_folders(folders: list[Path], sort: Optional[str] = None, ascending: bool = False,
                      metrics: Optional[list[str]] = None, repeat_keys: Optional[list[str]] = None,
                      baseline: Optional[str] = None, caption: Optional[str] = None, output: Optional[Path] = None,
                      figures: bool = False) -> Report:
    """Read the jobs of ``folders``, make every table, write the files into ``output``, else where the module
    docstring says (``report.note`` says why they were not); FinetuneError when the folders hold no job, no
    finished job, or ``sort``, ``metrics`` or ``baseline`` name nothing there, and :class:`NotWritten` (with the
    report) when ``output`` cannot be written."""
    jobs = load_jobs(folders)
    if not jobs:
        raise FinetuneError(_no_jobs(folders))
    repeat_keys = grouping.REPEAT_KEYS if repeat_keys is None else tuple(repeat_keys)
    table = _jobs_table(jobs, sort, ascending)
    groups = grouping.group_jobs(jobs, repeat_keys)
    if not any(group.finished for group in groups):
        states = ", ".join(sorted({job.status for job in jobs}))
        raise FinetuneError(f"summarize {' '.join(map(str, folders))}: {len(jobs)} job(s), none finished (states: "
                            f"{states}); there is nothing to average. Wait for the jobs, or run the failed ones again "
                            "(the same sweep command with hydra.sweep.dir=THE_FOLDER).")
    _check_comparable(groups)
    metrics = _metrics(jobs, metrics)
    estimates = {group.label: grouping.estimates(group, metrics) for group in groups}
    groups_md = tables.groups_markdown(groups, estimates, metrics)
    files = {SUMMARY_CSV: table.csv, GROUPS_CSV: tables.groups_csv(groups, estimates, metrics),
             SUMMARY_TEX: tables.groups_latex(groups, estimates, metrics, caption)}
    comparison_md = ""
    if baseline is not None:
        base = grouping.find_group(groups, baseline)
        rows = grouping.compare(groups, base, metrics, repeat_keys)
        predictions = grouping.compare_predictions(groups, base, "test", repeat_keys)
        comparison_md = tables.comparison_markdown(base, rows, predictions)
        files[COMPARISON_CSV] = tables.comparison_csv(rows)
    report = Report(table, groups_md, comparison_md, [])
    files = {SUMMARY_MD: report.markdown, **files}
    if output is None:
        report.note = refuse_default_output(Path(folders[0]), list(files), figures)
        if report.note is not None:
            return report
    target = Path(output or folders[0])
    try:
        report.written = write_files(target, files, groups if figures else None,
                                     record=output is None or (target / RECORD_FILE).is_file())
    except OSError as error:
        problem = f"{target} cannot be written ({error.strerror or error})"
        if output is not None:
            raise NotWritten(f"summarize --output {output}: {problem}. Name a folder you can write.", report) from None
        report.note = f"Nothing written: {problem}; --output FOLDER writes the files into a folder you can write."
    return report


class NotWritten(FinetuneError):
    """``--output`` cannot be written; ``report`` holds the tables, printed all the same."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record(folder: Path) -> dict[str, str]:
    """What summarize wrote into ``folder`` before: relative path -> sha256 ({} without a readable record)."""
    try:
        written = json.loads((folder / RECORD_FILE).read_text()).get("written")
    except (OSError, ValueError, AttributeError):
        return {}
    return written if isinstance(written, dict) else {}


def refuse_default_output(folder: Path, names: list[str], figures: bool) -> Optional[str]:
    """Why the files must not go into ``folder`` unasked (one line naming --output), or None when they may:
    it is ours (a sweep folder or run directory) and every file of those names there is one summarize wrote."""
    if not ((folder / SWEEP_MARKER).is_file() or is_job(folder)):
        return (f"Nothing written: {folder} is not a sweep folder or run directory (no {SWEEP_MARKER}, .hydra/ or "
                "status.json), so summarize leaves it alone; --output FOLDER writes the files.")
    record = _record(folder)
    present = [folder / name for name in names if (folder / name).exists()]
    if figures and (folder / FIGURES_DIR).is_dir():
        present += sorted(path for path in (folder / FIGURES_DIR).rglob("*") if not path.is_dir())
    theirs = []
    for path in present:
        relative = path.relative_to(folder).as_posix()
        try:
            ours = path.is_file() and record.get(relative) == _sha256(path)
        except OSError:
            ours = False
        if not ours:
            theirs.append(relative)
    if theirs:
        return (f"Nothing written: {folder} holds {', '.join(theirs[:5])}{' ...' if len(theirs) > 5 else ''}, which "
                "summarize did not write (or which changed since), kept as they are; --output FOLDER writes the "
                "files elsewhere.")
    return None


def write_files(folder: Path, files: dict[str, str], groups: Optional[list[grouping.Group]],
                record: bool = True) -> list[Path]:
    """Write ``files`` (name -> text) and, with ``groups``, the figures into ``folder``, each atomically, then (with
    ``record``) the record of their sha256 (:data:`RECORD_FILE`); returns the paths written. A folder named by
    --output gets no record of its own (a bundle's tables stay what they are); one it already has is kept true."""
    written: list[Path] = []
    complete = False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            write_text_atomically(folder / name, text)
            written.append(folder / name)
        if groups is not None:
            from finetune.analysis.figures import draw_figures

            written += draw_figures(groups, folder / FIGURES_DIR)
        complete = True
    finally:
        # Also after a failed write (a full disk): what was written is recorded ours, so the next run replaces it.
        if record and written:
            digests = {path: digest for path, digest in _record(folder).items() if (folder / path).is_file()}
            digests.update({path.relative_to(folder).as_posix(): _sha256(path) for path in written})
            try:
                write_text_atomically(folder / RECORD_FILE,
                                      json.dumps({"written": digests}, indent=2, sort_keys=True) + "\n")
            except OSError:
                if complete:
                    raise
    return written


def _jobs_table(jobs: list[Job], sort: Optional[str], ascending: bool) -> Summary:
    rows = [job_row(job) for job in jobs]
    varying = varying_overrides([job.overrides for job in jobs], rows)
    # dir: the run directory, which tells apart rows of one config from different runs or sweeps
    columns = ["job", "dir", *varying, "status", "step"]
    columns += [name for name in JOB_METRICS if any(row.get(name) is not None for row in rows)]
    if any(row.get("best.value") is not None for row in rows):
        columns += ["best.metric", "best.value", "best.step"]
    columns += ["wall_time_s", "images_per_second"]
    if any(row.get("error") for row in rows):
        columns.append("error")
    return Summary(sort_rows(rows, columns, sort, ascending), columns)


def _metrics(jobs: list[Job], wanted: Optional[list[str]]) -> list[str]:
    found = grouping.present_metrics(jobs, wanted)
    if wanted:
        missing = [metric for metric in wanted if metric not in found]
        if missing:
            reported = sorted({path for job in jobs if job.metrics for path in reported_numbers(job.metrics)})
            raise FinetuneError(f"summarize --metrics: no finished job reports {', '.join(missing)}. Did you mean "
                                f"{' or '.join(closest(missing[0], reported, 3))}? They report: {', '.join(reported)}.")
    return found


def reported_numbers(metrics: dict) -> list[str]:
    """The dotted paths of metrics.json's numbers a table can show: ``SECTION.KEY``, and ``SPLIT.tta.KEY``
    of test-time augmentation."""
    def numbers(node: dict) -> list[str]:
        return [key for key, value in node.items() if isinstance(value, (int, float)) and not isinstance(value, bool)]

    found = []
    for section, values in metrics.items():
        if isinstance(values, dict):
            found += [f"{section}.{key}" for key in numbers(values)]
            if isinstance(values.get("tta"), dict):
                found += [f"{section}.tta.{key}" for key in numbers(values["tta"])]
    return found


def _check_comparable(groups: list[grouping.Group]) -> None:
    """A group's repeats must be of one data set and class list: else averaging them compares nothing."""
    for group in groups:
        seen = {}
        for job in group.finished:
            record = job.run_record().get("data") or {}
            seen.setdefault((record.get("file_list_sha256"), tuple(record.get("classes") or ())), []).append(job.label)
        if len(seen) > 1:
            shown = "; ".join(f"{', '.join(labels[:3])}" for labels in seen.values())
            raise FinetuneError(
                f"summarize: the group {group.label!r} mixes runs on different data (another file list or class "
                f"list in their run.json: {shown}), so its metrics cannot be averaged or compared. Summarize those "
                "folders separately, or keep the key that differs (data.root, ...) out of --repeat-keys.")


def _no_jobs(folders: list[Path]) -> str:
    missing = [folder for folder in folders if not folder.is_dir()]
    if missing:
        return (f"summarize {missing[0]}: no such folder. Name the folder a sweep wrote (hydra.sweep.dir, by default "
                "multirun/DATE/TIME), or a run's directory.")
    return (f"summarize {' '.join(map(str, folders))}: no job folders found (a job folder holds .hydra/overrides.yaml "
            "or status.json). Name the folder a sweep (`python -m finetune -m ...`) wrote, by default "
            "multirun/DATE/TIME, or a run's directory.")
