"""The appendix of a thesis in one folder (and a ``.tar.gz``): everything a reader needs to check the
results of one or more sweeps, and to run them again.

``bundle/`` holds, per job, its composed config and overrides (``.hydra/``), ``config.yaml``, ``run.json``,
``status.json``, ``metrics.json``, ``metrics.jsonl``, ``splits.json``, ``predictions.jsonl``, ``phases.json``,
``timings.json``, the confusion and misclassified reports (checkpoints and exports only when asked);
``tables/`` (:mod:`finetune.tools.summarize`) and ``figures/``; ``environment.txt``, every installed
distribution and its version (what ``pip freeze`` lists) with the Python and platform; a ``README.md`` with
the commands that reproduce each sweep and job; and ``SHA256SUMS``, the sha256 of every other file, in
``sha256sum -c`` format (:func:`verify` checks it). Nothing is pickled; the folder is built under a temporary
name and renamed, the archive likewise.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import shlex
import shutil
import tarfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml

from finetune.analysis.runs import Job, load_jobs
from finetune.errors import FinetuneError

JOB_FILES = (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "config.yaml", "run.json",
             "status.json", "metrics.json", "metrics.jsonl", "splits.json", "predictions.jsonl", "phases.json",
             "timings.json", "confusion_matrix.json", "misclassified.json", "bad_files.json", "restore_report.txt")
HEAVY_FOLDERS = ("checkpoints", "export")
CHECKSUMS = "SHA256SUMS"


def environment() -> str:
    """The Python, the platform and every installed distribution as NAME==VERSION, sorted."""
    names = sorted({f"{dist.metadata['Name']}=={dist.version}" for dist in importlib.metadata.distributions()
                    if dist.metadata["Name"]}, key=str.lower)
    return (f"# Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}\n"
            + "".join(name + "\n" for name in names))


def _sweep_command(folder: Path) -> Optional[str]:
    """The command that ran the sweep in ``folder`` (its multirun.yaml: the task overrides and the sweep folder)."""
    record = folder / "multirun.yaml"
    if not record.is_file():
        return None
    hydra = (yaml.safe_load(record.read_text()) or {}).get("hydra") or {}
    overrides = (hydra.get("overrides") or {}).get("task") or []
    return shlex.join(["python", "-m", "finetune", "-m", *map(str, overrides)])


def _job_command(job: Job) -> str:
    return shlex.join(["python", "-m", "finetune", *(f"{key}={value}" for key, value in job.overrides.items()),
                       "hydra.run.dir=RUN_DIR"])


def readme(folders: Sequence[Path], jobs: Sequence[Job], checkpoints: bool) -> str:
    lines = ["# Results bundle", "",
             f"Made by `python -m finetune.tools bundle` from {', '.join(f'`{folder}`' for folder in folders)}: "
             f"{len(jobs)} job(s). `sha256sum -c SHA256SUMS` "
             "(or `python -m finetune.tools bundle --verify THIS_FOLDER`) "
             "checks every file.", "",
             "- `jobs/JOB/`: each job's composed config and overrides (`.hydra/`), its reproducibility record "
             "(`run.json`: versions, platform, CPU, git commit, data and weight checksums), its metrics "
             "(`metrics.json`, one line per evaluation in `metrics.jsonl`), its split membership (`splits.json`) and "
             "per-example predictions (`predictions.jsonl`)" + ("; its checkpoints and export" if checkpoints else ""),
             "- `tables/`: the jobs, the groups' means and 95% intervals, as Markdown, CSV and LaTeX",
             "- `figures/`: learning curves, per-class F1 and confusion matrices (PNG and PDF)",
             "- `environment.txt`: the Python, the platform and every installed package", "",
             "## Reproducing", "",
             "Install the package at the git commit in the jobs' `run.json` (`git.commit`), with the versions of "
             "`environment.txt`, then run each sweep:", ""]
    commands = [command for command in (_sweep_command(Path(folder)) for folder in folders) if command]
    lines += ["```bash", *(f"{command} hydra.sweep.dir=SWEEP_DIR" for command in commands), "```", ""] if commands \
        else ["(the folders hold no multirun.yaml: see the jobs below)", ""]
    lines += ["or one job at a time:", "", "```bash"] + [f"{_job_command(job)}  # {job.label}" for job in jobs]
    lines += ["```", "", "Runs of one config on one machine give the same numbers bit for bit; on another CPU or a "
              "GPU they may differ in the last bits, and a run's final numbers with them: compare groups of seeds, "
              "not single runs."]
    return "\n".join(lines) + "\n"


def _copy_job(job: Job, target: Path, checkpoints: bool) -> None:
    for name in JOB_FILES:
        source = job.path / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    if checkpoints:
        for name in HEAVY_FOLDERS:
            if (job.path / name).is_dir():
                shutil.copytree(job.path / name, target / name)


def _checksums(folder: Path) -> str:
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(folder).as_posix()}\n")
    return "".join(lines)


def verify(folder: Path) -> list[str]:
    """The files of a bundle whose sha256 is not the one SHA256SUMS lists, or that are missing or unlisted."""
    folder = Path(folder)
    listed = {}
    for line in (folder / CHECKSUMS).read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    problems = [f"{name}: missing" for name in listed if not (folder / name).is_file()]
    problems += [f"{name}: changed" for name, digest in listed.items() if (folder / name).is_file()
                 and hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest]
    problems += [f"{path.relative_to(folder).as_posix()}: not listed" for path in folder.rglob("*")
                 if path.is_file() and path.name != CHECKSUMS and path.relative_to(folder).as_posix() not in listed]
    return problems


def make_bundle(folders: Sequence[Path], out: Path, write_tables: Callable[[Path], object],
                checkpoints: bool = False, figures: bool = True) -> tuple[Path, Path]:
    """Write the bundle folder ``out`` and ``out.tar.gz``; returns both. ``write_tables(folder)`` writes the
    tables there (``tools summarize``, which sits a layer above this module). FinetuneError when ``out``
    exists or the folders hold no job."""
    out = Path(out)
    archive = out.with_name(out.name + ".tar.gz")
    for path in (out, archive):
        if path.exists():
            raise FinetuneError(f"bundle: {path} exists already; name a new folder (nothing was written).")
    jobs = load_jobs([Path(folder) for folder in folders])
    if not jobs:
        raise FinetuneError(f"bundle: no job folders in {', '.join(map(str, folders))} (a job folder holds "
                            ".hydra/overrides.yaml or status.json).")
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for job in jobs:
            _copy_job(job, staging / "jobs" / job.label.replace("/", "__"), checkpoints)
        write_tables(staging / "tables")
        if figures:
            from finetune.analysis.figures import draw_figures
            from finetune.analysis.groups import group_jobs

            draw_figures(group_jobs(jobs), staging / "figures")
        (staging / "environment.txt").write_text(environment())
        (staging / "README.md").write_text(readme(folders, jobs, checkpoints))
        (staging / CHECKSUMS).write_text(_checksums(staging))
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    temporary = archive.with_name(f".{archive.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(temporary, "w:gz") as tar:
            tar.add(out, arcname=out.name)
        os.replace(temporary, archive)
    finally:
        temporary.unlink(missing_ok=True)
    return out, archive
