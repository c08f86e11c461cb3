"""A cluster job's preemption, end to end through submitit's local executor: the signal a scheduler sends
before a time limit makes the job checkpoint and requeue itself, the requeued job resumes in the same run
directory, and it ends with the numbers of a job that was never interrupted."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_pipeline, tiny_config, tiny_overrides

pytest.importorskip("submitit")

# conftest's tiny profile: the job's process is the subject, not what it learns. Its steps take milliseconds:
# enough of them that the signal, sent as step 5 is logged, lands before the last.
STEPS = 60
RUN = (f"train.steps={STEPS}", "train.checkpoint_every=1000", "export.enabled=false", "data.feature_cache=off",
       "optimizer.learning_rate=0.02")


def _job_process(sweep: Path) -> int | None:
    """The pid of the submitit job process working under ``sweep`` (its command line names the folder)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in command and any(str(sweep).encode() in part for part in command):
            return int(entry.name)
    return None


def _wait_for_training(job: Path, sweep: Path, deadline: float) -> int:
    """Wait until the job has trained a few steps (its log says so); return its process id, found before (a
    step takes milliseconds)."""
    pid = None
    while time.monotonic() < deadline:
        pid = pid or _job_process(sweep)
        log = job / "finetune.log"
        if pid is not None and log.is_file() and f"step 5/{STEPS}" in log.read_text(errors="replace"):
            return pid
        time.sleep(0.005)
    raise AssertionError(f"the job did not start training in time; its folder holds {sorted(os.listdir(job))}")


@pytest.mark.slow
def test_a_preempted_job_checkpoints_requeues_resumes_in_place_and_ends_as_an_uninterrupted_one(
        demo_cache, tiny_data, tmp_path):
    reference = run_pipeline(tiny_config(demo_cache, tiny_data, *RUN), tmp_path / "reference")

    sweep = tmp_path / "sweep"
    env = {**os.environ, "FINETUNE_CACHE": str(demo_cache)}
    # One job, in sweep/job (the default subdir names the overrides, and data.root's path would nest it).
    command = [sys.executable, "-m", "finetune", "-m", *tiny_overrides(demo_cache, tiny_data, *RUN),
               "hydra/launcher=local_submitit", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        job = sweep / "job"
        while not job.is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(_wait_for_training(job, sweep, deadline), signal.SIGUSR2)  # what SLURM sends before the limit
        output, _ = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 0, output[-3000:]

    record = json.loads((job / "run.json").read_text())
    first, second = record["starts"]
    assert first["step"] == 0 and 5 <= second["step"] < STEPS and second["why"].startswith("Resuming")
    assert json.loads((job / "status.json").read_text())["state"] == "done"
    assert first["pid"] != second["pid"]  # requeued: a new process took the job up in the same directory
    assert "Caught signal SIGUSR2" in "".join(p.read_text(errors="replace") for p in sweep.glob(".submitit/*/*.err"))
    # The stop's message, logged before the requeue, names the command that resumes this job alone, in its directory.
    log_text = (job / "finetune.log").read_text()
    logged = re.search(r"Resume it with: (python -m finetune .*?) \(or run the sweep's command again with "
                       r"hydra\.sweep\.dir=(\S+): .*Handing the signal to the launcher", log_text)
    assert logged, log_text[-3000:]
    status = json.loads((job / "status.json").read_text())
    own = status["job"]["overrides"]  # the sweeper's record of the job: a repeated key once, false as False
    assert shlex.split(logged[1]) == ["python", "-m", "finetune", *own, f"hydra.run.dir={job}"]
    assert f"train.steps={STEPS}" in own and status["resume_command"] == logged[1]
    assert logged[2] == str(sweep)
    resumed = json.loads((job / "metrics.json").read_text())
    for split in ("val", "test"):
        assert resumed[split] == reference[split], split
    assert resumed["train"] == reference["train"] and resumed["steps"] == STEPS
