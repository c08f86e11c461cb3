"""Finding runs and resuming them (issue 19, item 4): the command a stop message prints, and
``python -m finetune.tools runs`` on run directories written the way runs write them.

A real stop pasted back is tested where a run is stopped already (tests/test_run_state.py, the SIGTERM test;
tests/test_bad_inputs.py, the full disk); here the command's words and the listing, without training."""
from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from conftest import cli
from hydra.core.override_parser.overrides_parser import OverridesParser

from finetune.run_status import DIED, read_status, resume_command
from finetune.sweeps.status import FIELDS

def test_the_resume_command_gives_back_each_word_and_hydra_reads_the_run_dir_back():
    """Quoted for a POSIX shell word by word; the run directory quoted for Hydra too where it must be (a comma
    would make a sweep of it, a quote end it)."""
    overrides = ["experiment=mobilenet_head", "data.augment=[{type:flip_left_right}]", "data.root='/data/my images'",
                 "optimizer.learning_rate=0.01"]
    for run_dir in ["/runs/outputs/2026-12-07/17-00-00", "/runs/with space", "/runs/a,b", "/runs/it's", "/runs/[x]=y"]:
        command = resume_command(overrides, run_dir)
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", "finetune"] and words[3:-1] == overrides
        assert words[-1].startswith("hydra.run.dir=")
        assert OverridesParser.create().parse_override(words[-1]).value() == run_dir, command
    assert resume_command(["train.steps=5"], "relative/run").endswith(f"hydra.run.dir={Path.cwd()}/relative/run")


def test_a_sweep_job_resumes_as_one_run_keeping_only_what_shapes_its_config():
    """A job's own overrides; of Hydra's, those that shape the config (search path, job name), not where or how
    the sweep ran; --config-dir; and hydra.mode=RUN where an hparams_search config would make it a sweep again."""
    command = resume_command(
        ["hparams_search=optuna", "experiment=mobilenet_head", "optimizer.learning_rate=0.0031"], "/sweep/3_x",
        ["hydra.sweep.dir=/sweep", "hydra.mode=MULTIRUN", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
         "hydra.sweeper.n_trials=5", "hydra.job.name=mine", "hydra.searchpath=[file:///conf]"],
        config_dir="/my conf", sweep=True)
    assert shlex.split(command) == [
        "python", "-m", "finetune", "--config-dir", "/my conf", "hparams_search=optuna", "experiment=mobilenet_head",
        "optimizer.learning_rate=0.0031", "hydra.job.name=mine", "hydra.searchpath=[file:///conf]", "hydra.mode=RUN",
        "hydra.run.dir=/sweep/3_x"]
    plain = resume_command(["optimizer.learning_rate=0.1"], "/sweep/0_x", ["hydra.mode=MULTIRUN"], sweep=True)
    assert shlex.split(plain)[3:] == ["optimizer.learning_rate=0.1", "hydra.run.dir=/sweep/0_x"]


def _iso(delta: timedelta) -> str:
    """The time ``delta`` ago (the ages the listing shows are counted from the test's own start)."""
    return (datetime.now(timezone.utc) - delta).isoformat(timespec="seconds")


def write_run(run_dir: Path, overrides: list[str], state: str, step: int | None, started: timedelta,
              ended: timedelta | None = None, steps: int = 100, keep_best: str | None = None,
              metrics: dict | None = None, history: list[dict] | None = None, recorded: bool = True,
              pid: int | None = None) -> Path:
    """A run directory's files as a run leaves them: Hydra's .hydra/ (overrides.yaml, config.yaml), status.json
    (every field update_status writes), metrics.jsonl (one line per evaluation) and, when it finished, metrics.json.
    ``recorded``: status.json holds the resume command (runs started before it was recorded do not)."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"train": {"steps": steps, "keep_best": keep_best, "eval_every": 10}, "optimized_metric": "val.accuracy"}))
    status = {"state": state, "step": step, "message": None, "objective": None, "started": _iso(started),
              "ended": None if ended is None else _iso(ended), "job": {"num": None, "id": None, "overrides": overrides},
              "host": socket.gethostname(), "pid": pid,
              "resume_command": resume_command(overrides, run_dir) if recorded else None}
    assert sorted(status) == sorted(FIELDS)  # the shape update_status writes
    (run_dir / "status.json").write_text(json.dumps(status))
    if history:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in history))
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def dead_pid() -> int:
    """The pid of a process that ran and was killed (and reaped): gone, as a SIGKILLed run's is."""
    process = subprocess.Popen(["sleep", "60"])
    process.kill()
    process.wait()
    return process.pid


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder where runs were started: single runs in outputs/DATE/TIME and a two-job sweep in multirun/."""
    outputs, sweep = tmp_path / "outputs", tmp_path / "multirun" / "2026-12-05" / "08-00-00"
    base = ["experiment=mobilenet_head"]
    write_run(outputs / "2026-12-07" / "10-00-00", base + ["train.steps=100"], "stopped", 40,
              started=timedelta(hours=2), ended=timedelta(hours=1, minutes=30), keep_best="val.loss",
              history=[{"step": 20, "val": {"accuracy": 0.5, "loss": 0.9}},
                       {"step": 40, "val": {"accuracy": 0.6, "loss": 0.7}}])
    write_run(outputs / "2026-12-07" / "11-00-00", base + ["optimizer.learning_rate=1e30"], "failed", 12,
              started=timedelta(minutes=50), ended=timedelta(minutes=45, seconds=30), recorded=False)
    write_run(outputs / "2026-12-07" / "12-00-00", base + ["head=conv_pool_dense"], "running", 30,
              started=timedelta(minutes=20), pid=dead_pid())  # killed: no .lock held, its process gone
    write_run(outputs / "2026-12-06" / "09-00-00", base, "done", 100, started=timedelta(days=1, hours=3),
              ended=timedelta(days=1, hours=2), history=[{"step": 50, "val": {"accuracy": 0.9, "loss": 0.3}},
                                                         {"step": 100, "val": {"accuracy": 0.8, "loss": 0.4}}],
              metrics={"val": {"accuracy": 0.8, "loss": 0.4}, "steps": 100})
    for num, rate in enumerate(["0.1", "0.01"]):
        job = write_run(sweep / f"{num}_optimizer.learning_rate={rate}", base + [f"optimizer.learning_rate={rate}"],
                        "done", 100, started=timedelta(days=2, minutes=-num), ended=timedelta(days=2, minutes=-30),
                        metrics={"val": {"accuracy": 0.7 + num / 10}, "steps": 100})
        assert json.loads((job / "status.json").read_text())["state"] == "done"
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return tmp_path


def _rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()[1:] if not line.startswith("  resume: ")]


def test_runs_lists_every_run_newest_first_with_its_status_step_best_metric_age_and_overrides(project):
    result = cli(["finetune.tools", "runs"], cwd=project)  # outputs/ and multirun/ of the current folder
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["DIR", "STATUS", "STEP", "BEST", "AGE", "OVERRIDES"]
    rows = _rows(result.stdout)
    assert [row[0] for row in rows] == [
        "outputs/2026-12-07/12-00-00", "outputs/2026-12-07/11-00-00", "outputs/2026-12-07/10-00-00",
        "outputs/2026-12-06/09-00-00", "multirun/2026-12-05/08-00-00/1_optimizer.learning_rate=0.01",
        "multirun/2026-12-05/08-00-00/0_optimizer.learning_rate=0.1"]
    died, failed, stopped, done, job1, job0 = rows
    assert died[1:3] == [DIED, "30/100"] and died[-2:] == ["experiment=mobilenet_head", "head=conv_pool_dense"]
    assert failed[1:5] == ["failed", "12/100", "-", "45m"]
    # train.keep_best=val.loss: the lowest loss of its evaluations so far; its age since it ended
    assert stopped[1:6] == ["stopped", "40/100", "val.loss", "0.7", "1h"]
    assert done[1:6] == ["done", "100/100", "val.accuracy", "0.9", "1d"]  # the best evaluation, not the last
    assert job1[3:6] == ["val.accuracy", "0.8", "1d"] and job0[3:5] == ["val.accuracy", "0.7"]
    assert "resume:" not in result.stdout
    # A sweep folder or one run's directory, named: only those.
    named = cli(["finetune.tools", "runs", "multirun/2026-12-05/08-00-00", "outputs/2026-12-07/10-00-00"], cwd=project)
    assert [row[0] for row in _rows(named.stdout)] == [
        "outputs/2026-12-07/10-00-00", "multirun/2026-12-05/08-00-00/1_optimizer.learning_rate=0.01",
        "multirun/2026-12-05/08-00-00/0_optimizer.learning_rate=0.1"]


def test_runs_resumable_shows_the_stopped_failed_and_died_runs_each_with_the_command_that_resumes_it(project):
    result = cli(["finetune.tools", "runs", "--resumable"], cwd=project)
    assert result.returncode == 0, result.stderr
    assert [(row[0], row[1]) for row in _rows(result.stdout)] == [
        ("outputs/2026-12-07/12-00-00", DIED), ("outputs/2026-12-07/11-00-00", "failed"),
        ("outputs/2026-12-07/10-00-00", "stopped")]
    commands = [line.removeprefix("  resume: ") for line in result.stdout.splitlines() if line.startswith("  resume: ")]
    assert len(commands) == 3
    for command, (name, overrides) in zip(commands, [
            ("12-00-00", ["experiment=mobilenet_head", "head=conv_pool_dense"]),
            ("11-00-00", ["experiment=mobilenet_head", "optimizer.learning_rate=1e30"]),  # none recorded: made here
            ("10-00-00", ["experiment=mobilenet_head", "train.steps=100"])]):
        run_dir = project / "outputs" / "2026-12-07" / name
        assert shlex.split(command) == ["python", "-m", "finetune", *overrides, f"hydra.run.dir={run_dir}"]
    # The died run's message (read_status's, which tools and launchers show) names the same command.
    assert commands[0] in read_status(project / "outputs" / "2026-12-07" / "12-00-00")["message"]
    nothing = cli(["finetune.tools", "runs", "--resumable", "multirun"], cwd=project)
    assert (nothing.returncode, nothing.stdout) == (0, "No stopped, failed or died runs.\n")


def test_runs_shows_the_length_phases_json_resolved_from_train_epochs(tmp_path):
    outputs = tmp_path / "outputs" / "2026-12-07"
    for name, last_step in (("10-00-00", 57), ("11-00-00", None)):  # 11: stopped before phases.json was written
        run_dir = write_run(outputs / name, ["experiment=mobilenet_head", "train.epochs=3"], "stopped", 19,
                            started=timedelta(hours=1), steps=300)
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
        config["train"]["epochs"] = 3.0
        (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        if last_step is not None:
            (run_dir / "phases.json").write_text(json.dumps([{"name": "train", "first_step": 1,
                                                              "last_step": last_step, "steps": last_step,
                                                              "epochs": 3.0}]))
    result = cli(["finetune.tools", "runs"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # train.steps (300) is not the length of a run of train.epochs
    assert sorted(row[2] for row in _rows(result.stdout)) == ["19/57", "19/?"]


def test_runs_where_there_are_none_or_of_a_missing_folder_is_one_paragraph_and_exit_2(tmp_path):
    result = cli(["finetune.tools", "runs"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: tools runs: no outputs/ or multirun/ in {tmp_path}")
    assert "tools runs DIR" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    missing = cli(["finetune.tools", "runs", "outputz"], cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: tools runs outputz: no such folder")
    (tmp_path / "outputs").mkdir()
    empty = cli(["finetune.tools", "runs"], cwd=tmp_path)
    assert (empty.returncode, empty.stdout) == (0, "No runs.\n")


@pytest.mark.slow
def test_runs_answers_without_importing_tensorflow(project):
    code = ("import sys; from finetune.tools import main; status = main(['runs', '--resumable']); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow imported'; sys.exit(status)")
    result = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "outputs/2026-12-07/10-00-00" in result.stdout and "resume: python -m finetune" in result.stdout
