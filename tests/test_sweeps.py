"""Sweeps: per-job status.json, our launchers (conf/hydra/launcher/), resuming a sweep, fail_fast.

Sweeps run in-process (conftest.cli): the launcher runs in this process, and so do the jobs of the local
launcher; local_parallel (joblib) and local_submitit start a process per job. The fast tests sweep over
learning rates that the job-side validation refuses: the jobs fail before TensorFlow is needed, so a
sweep takes a second. The slow ones start worker processes (local_parallel) or train two jobs of the tiny
profile through local_submitit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CliResult, cli, tiny_overrides

from finetune.errors import FinetuneError
from finetune.sweeps.launchers import finished, missing_plugin
from finetune.sweeps.status import FAIL_FAST_FILE, read_status, update_status
from finetune.tools.summarize import summarize

BASE = ["experiment=mobilenet_head", "train.steps=2", "export.enabled=false"]  # every job of the fast sweeps
BAD_RATE = "optimizer.learning_rate' is {}"  # the job-side validation's message


# Job folders are named after their overrides (hydra.job.override_dirname), and a name longer than 255
# characters cannot be made: the tiny profile's keys, the same in every job, are left out of the names.
TINY_KEYS_OUT_OF_JOB_DIRS = ("hydra.job.config.override_dirname.exclude_keys=[experiment,hparams_search,backbone.name,"
                             "backbone.cut,backbone.image_size,data.root,paths.cache_dir,train.log_every]")


def sweep(tmp_path: Path, sweep_dir: Path, *overrides: str, job: list[str] = BASE) -> CliResult:
    """``python -m finetune -m JOB OVERRIDES`` in this process; its cache (the demo's, never made: every job
    fails before it needs it, unless ``job`` names another) under ``tmp_path``."""
    return cli(["finetune", "-m", *job, *overrides, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path,
               cache=tmp_path / "cache")


def jobs(sweep_dir: Path) -> dict[int, Path]:
    """The job directories of a sweep by job number (asserting there are no others)."""
    found = {int(path.name.split("_", 1)[0]): path for path in sweep_dir.iterdir()
             if path.is_dir() and not path.name.startswith(".")}
    assert all((path / ".hydra").is_dir() or read_status(path)["state"] == "cancelled" for path in found.values())
    return found


def states(sweep_dir: Path) -> dict[int, str]:
    return {num: read_status(path)["state"] for num, path in sorted(jobs(sweep_dir).items())}


# status.json ----------------------------------------------------------------------------------------------


def test_status_keeps_earlier_fields_and_a_new_attempt_starts_clean(tmp_path):
    assert read_status(tmp_path) is None
    job = {"num": 3, "id": "7", "overrides": ["a=1"]}
    update_status(tmp_path, "queued", job=job)
    assert read_status(tmp_path)["started"] is None
    update_status(tmp_path, "running")
    started = read_status(tmp_path)["started"]
    update_status(tmp_path, "running", step=10)
    update_status(tmp_path, "failed", message="boom")
    status = read_status(tmp_path)
    assert status["state"] == "failed" and status["step"] == 10 and status["message"] == "boom"
    assert status["job"] == job and status["started"] == started and status["ended"] and status["host"]
    assert status["pid"] == os.getpid()  # the process that wrote running: a reader tells from it whether it died
    update_status(tmp_path, "running")  # again: a new attempt
    status = read_status(tmp_path)
    assert status["message"] is None and status["ended"] is None and status["step"] == 10
    update_status(tmp_path, "done", objective=float("nan"))  # JSON has no NaN: stored as null
    assert read_status(tmp_path)["objective"] is None
    assert set(json.loads((tmp_path / "status.json").read_text())) == {
        "state", "step", "message", "objective", "started", "ended", "job", "host", "pid", "resume_command"}


def test_status_refuses_unknown_states_and_fields_and_ignores_a_broken_file(tmp_path):
    with pytest.raises(ValueError):
        update_status(tmp_path, "finished")
    with pytest.raises(TypeError):
        update_status(tmp_path, "done", accuracy=1.0)
    (tmp_path / "status.json").write_text("{not json")
    assert read_status(tmp_path) is None


def test_only_a_done_job_with_the_same_overrides_counts_as_finished():
    done = {"state": "done", "job": {"overrides": ["a=1"]}}
    assert finished(done, ["a=1"])
    assert not finished(done, ["a=2"])
    assert not finished({**done, "state": "stopped"}, ["a=1"])
    assert not finished(None, ["a=1"])


def test_a_launcher_whose_plugin_is_missing_says_how_to_install_it():
    with pytest.raises(FinetuneError, match=r'hydra/launcher=slurm .*pip install "finetune\[cluster\]"'):
        missing_plugin("slurm", "hydra-submitit-launcher")()


def test_importing_finetune_imports_no_launcher_plugin_library():
    code = ("import sys, finetune.__main__, finetune.sweeps.launchers, hydra_plugins.finetune_sweeps; "
            "print(sorted(m for m in ('submitit', 'joblib', 'optuna') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_slurm_config_makes_an_sbatch_script_with_requeue_on_timeout(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from hydra import compose, initialize_config_module
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import _make_sbatch_string

    from finetune.config import CONFIG_MODULE, register_configs

    register_configs()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                           "hydra.launcher.setup=[module load cuda]"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert params.pop("_target_") == "hydra_plugins.finetune_sweeps.SlurmLauncher"
    assert params.pop("fail_fast") is False
    assert params["max_num_timeout"] >= 1  # submitit's 0 would never requeue a job that ran out of time
    # What the plugin's launch does with them, short of submitting (submitit looks for srun first).
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    params.update(name="finetune", submitit_folder=str(tmp_path / "%j"))
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{key if key in shared else f"slurm_{key}": value for key, value in params.items()})
    script = _make_sbatch_string(command="python -m finetune", folder=str(tmp_path), **executor._executor.parameters)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --signal=USR2@120",
                 "#SBATCH --time=240", "module load cuda"):
        assert line in script


# Sweeps whose jobs fail in validation (no TensorFlow): seconds each -----------------------------------------


def test_each_failed_job_records_its_message_in_its_own_directory(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = sweep(tmp_path, sweep_dir, "optimizer.learning_rate=-1,-2", "hydra/launcher=local")
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    found = jobs(sweep_dir)
    assert sorted(found) == [0, 1]  # the launcher's queued status went where the job ran
    for num, rate in ((0, "-1.0"), (1, "-2.0")):
        status = read_status(found[num])
        assert status["state"] == "failed" and BAD_RATE.format(rate) in status["message"]
        assert status["job"]["num"] == num and f"optimizer.learning_rate={rate[:-2]}" in status["job"]["overrides"]
    assert not (sweep_dir / FAIL_FAST_FILE).exists()


@pytest.mark.slow  # two sweeps of three jobs, each composed twice by Hydra: seconds
def test_fail_fast_cancels_the_later_jobs_and_a_rerun_starts_afresh(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = ("optimizer.learning_rate=-1,-2,-3", "hydra/launcher=local", "hydra.launcher.fail_fast=true")
    result = sweep(tmp_path, sweep_dir, *command)
    assert result.returncode != 0
    assert states(sweep_dir) == {0: "failed", 1: "cancelled", 2: "cancelled"}
    cancelled = read_status(jobs(sweep_dir)[2])
    assert cancelled["started"] is None and "fail_fast" in cancelled["message"]
    assert f"hydra.sweep.dir={sweep_dir}" in cancelled["message"]
    # The same command again: the stale failure record is dropped, job 0 runs (and fails) again first.
    result = sweep(tmp_path, sweep_dir, *command)
    assert result.returncode != 0
    assert states(sweep_dir) == {0: "failed", 1: "cancelled", 2: "cancelled"}


@pytest.mark.slow
def test_a_rerun_sweep_launches_only_the_jobs_not_done(tmp_path):
    """Through local_parallel: joblib's worker processes run the jobs, this process the launcher."""
    sweep_dir = tmp_path / "sweep"
    command = ("optimizer.learning_rate=-1,-2", "hydra/launcher=local_parallel")
    sweep(tmp_path, sweep_dir, *command)
    found = jobs(sweep_dir)
    # As if job 0 had finished (objective 0.5) and job 1 had been preempted.
    update_status(found[0], "done", objective=0.5)
    update_status(found[1], "stopped", message="preempted")
    done = read_status(found[0])
    result = sweep(tmp_path, sweep_dir, *command)
    assert result.returncode != 0  # job 1 fails again
    assert read_status(found[0]) == done  # not launched: not even queued
    assert "#0 is done" in result.stdout + result.stderr
    status = read_status(found[1])
    assert status["state"] == "failed" and BAD_RATE.format("-2.0") in status["message"]
    assert sorted(jobs(sweep_dir)) == [0, 1]


# --- issue 18: a done job counts as done only under the config it finished under -----------------------------
def test_a_sweep_rerun_after_its_experiment_file_changed_is_refused_and_touches_no_job(tmp_path):
    """Jobs left done as a finished run leaves them (status.json, checkpoints/fingerprint.json), under the
    experiment file as it was; then the file is edited and the same sweep command is run again."""
    from finetune.config import compose_config
    from finetune.fingerprint import CHECKPOINT_DIR, FINGERPRINT_FILE, fingerprint, fingerprint_config
    from finetune.sweeps.validate_sweep import expand_sweep

    user = tmp_path / "conf"
    (user / "experiment").mkdir(parents=True)
    experiment = user / "experiment" / "my_sweep.yaml"
    experiment.write_text(Path(__file__).parent.parent.joinpath("conf/experiment/mobilenet_head.yaml").read_text())
    sweep_dir = tmp_path / "sweep"
    overrides = ["experiment=my_sweep", "optimizer.learning_rate=0.01,0.02", "export.enabled=false"]
    for num, job in enumerate(expand_sweep(overrides, user)):
        folder = sweep_dir / f"job{num}"
        update_status(folder, "done", objective=0.5, job={"num": num, "id": str(num), "overrides": job})
        config = fingerprint_config(compose_config(job, user))
        (folder / CHECKPOINT_DIR).mkdir()
        (folder / CHECKPOINT_DIR / FINGERPRINT_FILE).write_text(
            json.dumps({"fingerprint": fingerprint(config), "config": config}))
    command = ["finetune", "--config-dir", str(user), "-m", *overrides, f"hydra.sweep.dir={sweep_dir}",
               "hydra.sweep.subdir=job${hydra.job.num}"]
    # Unchanged: both jobs are done, nothing runs.
    result = cli(command, cwd=tmp_path, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "#0 is done" in result.stdout + result.stderr and "#1 is done" in result.stdout + result.stderr
    # The experiment file edited: its results are not this config's. Refused, every job's file as it was.
    experiment.write_text(experiment.read_text().replace("split: {train: 0.6, val: 0.2, test: 0.2}",
                                                         "split: {train: 0.5, val: 0.25, test: 0.25}"))
    before = {path: path.read_bytes() for path in sorted(sweep_dir.rglob("*"))
              if path.is_file() and path.name != "multirun.yaml"}  # Hydra's record of the latest command
    result = cli(command, cwd=tmp_path, cache=tmp_path / "cache")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"Job #0 of this sweep, {sweep_dir / 'job0'}, finished under another config (and 1 more: #1)" in output
    assert "data.split.train (0.6 -> 0.5)" in output and "data.split.val (0.2 -> 0.25)" in output
    assert "hydra.sweep.dir=NEW_DIR" in output and "delete the job directory" in output
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output and "is done" not in output
    assert {path: path.read_bytes() for path in sorted(sweep_dir.rglob("*"))
            if path.is_file() and path.name != "multirun.yaml"} == before


# Training through submitit on this machine ------------------------------------------------------------------


@pytest.mark.slow
def test_a_local_submitit_sweep_records_every_job_and_resumes_only_the_unfinished(demo_cache, tiny_data, tmp_path):
    """submitit starts each job as its own process; the two that train are the tiny profile's, 2 steps."""
    sweep_dir = tmp_path / "sweep"
    job = tiny_overrides(demo_cache, tiny_data, "train.steps=2", "export.enabled=false", "data.feature_cache=off",
                         TINY_KEYS_OUT_OF_JOB_DIRS)
    command = ("optimizer.learning_rate=0.01,-1,0.02,-2", "hydra/launcher=local_submitit")
    result = sweep(tmp_path, sweep_dir, *command, job=job)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    assert states(sweep_dir) == {0: "done", 1: "failed", 2: "done", 3: "failed"}
    found = jobs(sweep_dir)
    for num in (0, 2):
        status = read_status(found[num])
        metrics = json.loads((found[num] / "metrics.json").read_text())
        assert status["objective"] == pytest.approx(metrics["val"]["accuracy"])
        assert status["job"]["num"] == num and status["ended"] >= status["started"]
    assert BAD_RATE.format("-1.0") in read_status(found[1])["message"]
    # The sweep table: every job, the failing ones marked so with their message, the others done.
    table = summarize(sweep_dir)
    assert {row["job"]: row["status"] for row in table.rows} == {0: "done", 1: "failed", 2: "done", 3: "failed"}
    assert "optimizer.learning_rate" in table.columns and (sweep_dir / "summary.csv").is_file()
    assert all(BAD_RATE.format("-") in row["error"] for row in table.rows if row["status"] == "failed")
    # Job 2 was preempted (as a signal leaves it): the same command reruns it and the failed ones only.
    update_status(found[2], "stopped", message="preempted")
    done = read_status(found[0])
    result = sweep(tmp_path, sweep_dir, *command, job=job)
    assert result.returncode != 0
    assert read_status(found[0]) == done
    assert states(sweep_dir) == {0: "done", 1: "failed", 2: "done", 3: "failed"}
    assert read_status(found[2])["objective"] == pytest.approx(
        json.loads((found[2] / "metrics.json").read_text())["val"]["accuracy"])
