"""The sweep table (``python -m finetune.tools summarize``), TensorBoard HParams sessions, the Optuna search config."""
from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import tensorflow as tf
import yaml
from conftest import ROOT, cli, tiny_overrides
from hydra.core.override_parser.overrides_parser import OverridesParser

from finetune.config import CONFIG_MODULE, register_configs
from finetune.errors import FinetuneError
from finetune.sweeps import hparams
from finetune.tools import main
from finetune.analysis.runs import load_jobs
from finetune.run_status import LOCK_FILE, lock_record, read_status
from finetune.sweeps.launchers import finished
from finetune.sweeps.validate_sweep import check_sweep
from finetune.tools.summarize import SUMMARY_CSV, SUMMARY_MD, summarize, summarize_folders

COMMON = ["experiment=mobilenet_head", "train.steps=2"]  # the same in every fake job: no column


def make_job(sweep: Path, num: int, learning_rate: str, metrics: dict | None = None, status: dict | None = None,
             images_per_second: float | None = None) -> Path:
    """A job folder as a sweep leaves it (the files are written by this test, not by a run)."""
    job = sweep / f"{num}_optimizer.learning_rate={learning_rate}"
    (job / ".hydra").mkdir(parents=True)
    overrides = COMMON + [f"optimizer.learning_rate={learning_rate}"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if status is not None:
        (job / "status.json").write_text(json.dumps(status))
    if images_per_second is not None:
        (job / "timings.json").write_text(json.dumps({"images_per_second": images_per_second}))
    return job


def run_metrics(val_accuracy: float, steps: int = 2) -> dict:
    return {"val": {"accuracy": val_accuracy, "loss": 1.0 - val_accuracy, "top_k_accuracy": 1.0},
            "test": {"accuracy": val_accuracy - 0.1, "loss": 0.9}, "steps": steps,
            "best": {"metric": "val.accuracy", "value": val_accuracy + 0.05, "step": 1, "checkpoint": "x"}}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Four jobs: done with status.json, done without (metrics.json only), failed, still running."""
    folder = tmp_path / "multirun"
    make_job(folder, 0, "0.1", run_metrics(0.5), images_per_second=123.4,
             status={"state": "done", "step": 2, "started": "2024-05-01T12:00:00", "ended": "2024-05-01T12:03:05",
                     "job": {"num": 0, "id": "a", "overrides": []}})
    make_job(folder, 1, "0.01", run_metrics(0.75))
    make_job(folder, 2, "-1", status={"state": "failed", "step": 0, "started": 1714564800.0, "ended": 1714564842.0,
                                      "message": "Config key 'optimizer.learning_rate' is -1 | must be > 0.\nmore"})
    make_job(folder, 3, "0.001", status={"state": "running", "step": 1, "started": 1714564800.0})
    (folder / "multirun.yaml").write_text("hydra: {}\n")
    (folder / ".submitit" / "123").mkdir(parents=True)  # hidden: never a job
    return folder


def test_the_table_has_one_row_per_job_the_varying_overrides_and_best_first(sweep):
    table = summarize(sweep)
    assert [row["job"] for row in table.rows] == [1, 0, 2, 3]  # val.accuracy highest first; without it last
    assert "optimizer.learning_rate" in table.columns
    assert not {"experiment", "train.steps"} & set(table.columns)  # the same in every job
    assert table.columns[:3] == ["job", "dir", "optimizer.learning_rate"]
    done, done_too, failed, running = table.rows
    assert (done["status"], done["step"], done["val.accuracy"], done["best.value"]) == ("done", 2, 0.75, 0.8)
    assert (done_too["wall_time_s"], done_too["images_per_second"]) == (185.0, 123.4)
    assert done["wall_time_s"] is None  # no status.json: no times
    assert (failed["status"], failed["wall_time_s"], failed["val.accuracy"]) == ("failed", 42.0, None)
    assert failed["error"] == "Config key 'optimizer.learning_rate' is -1 | must be > 0."
    assert (running["status"], running["step"], running["error"]) == ("running", 1, None)

    summary = (sweep / SUMMARY_MD).read_text()  # the jobs table first, then the groups (tests/test_statistics.py)
    assert summary.startswith("## Jobs\n\n" + table.markdown + "\n## Groups\n")
    markdown = table.markdown
    lines = markdown.splitlines()
    assert len(lines) == 2 + 4 and lines[0].startswith("| job | dir | optimizer.learning_rate | status |")
    assert "3m05s" in lines[3] and "123" in lines[3]
    assert "| failed |" in lines[4] and "is -1 \\| must be > 0." in lines[4]  # a pipe escaped, one line


def test_the_csv_parses_back_to_the_same_rows(sweep):
    table = summarize(sweep)
    with open(sweep / SUMMARY_CSV, newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == table.columns and "dir" in rows[0]
    assert [row["job"] for row in rows] == ["1", "0", "2", "3"]
    assert float(rows[0]["val.accuracy"]) == 0.75 and rows[2]["val.accuracy"] == ""
    assert rows[1]["dir"] == "0_optimizer.learning_rate=0.1" and float(rows[1]["wall_time_s"]) == 185.0
    assert rows[2]["error"].startswith("Config key 'optimizer.learning_rate' is -1 | must")


def test_sort_by_another_column_and_ascending(sweep):
    assert [row["job"] for row in summarize(sweep, ascending=True).rows] == [0, 1, 2, 3]
    by_rate = summarize(sweep, sort="optimizer.learning_rate", ascending=True).rows
    assert [row["optimizer.learning_rate"] for row in by_rate] == ["-1", "0.001", "0.01", "0.1"]  # as numbers
    with pytest.raises(FinetuneError, match="--sort val.acuracy: no such column. Did you mean val.accuracy"):
        summarize(sweep, sort="val.acuracy")


def test_the_command_prints_the_table_without_importing_tensorflow(sweep):
    code = ("import sys; from finetune.tools import main; status = main(['summarize', sys.argv[1]]); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow imported'; sys.exit(status)")
    result = subprocess.run([sys.executable, "-c", code, str(sweep)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert (sweep / SUMMARY_MD).read_text() in result.stdout and str(sweep / SUMMARY_CSV) in result.stdout


def test_single_runs_and_two_sweeps_of_one_config_are_told_apart_by_their_run_directory(tmp_path):
    """Rows of the same config from different runs: single runs (no job number; the same TIME folder name on two
    days) and the same job of two sweeps each get their own directory, relative to the folders' common parent."""
    outputs = tmp_path / "outputs"
    for day, accuracy in (("2024-05-01", 0.5), ("2024-05-02", 0.6)):
        run = outputs / day / "12-00-00"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(COMMON))
        (run / "metrics.json").write_text(json.dumps(run_metrics(accuracy)))
    for name in ("A", "B"):
        make_job(tmp_path / "multirun" / name, 0, "0.1", run_metrics(0.7))
    result = cli(["finetune.tools", "summarize", "outputs/2024-05-01/12-00-00", "outputs/2024-05-02/12-00-00",
                  "--output", "tables"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = result.stdout.split("## Groups")[0].splitlines()
    assert jobs[2].startswith("| job | dir | status | step | val.accuracy |")
    assert [line.split(" | ")[1] for line in jobs[4:6]] == ["2024-05-02/12-00-00", "2024-05-01/12-00-00"]
    with open(tmp_path / "tables" / SUMMARY_CSV, newline="") as file:
        assert [row["dir"] for row in csv.DictReader(file)] == ["2024-05-02/12-00-00", "2024-05-01/12-00-00"]
    one = cli(["finetune.tools", "summarize", "outputs/2024-05-01/12-00-00", "--output", "one"], cwd=tmp_path)
    assert one.returncode == 0 and "| - | 12-00-00 | done | 2 | 0.5 |" in one.stdout  # a single run alone
    sweeps = summarize_folders([tmp_path / "multirun" / "A", tmp_path / "multirun" / "B"], output=tmp_path / "two")
    assert [row["dir"] for row in sweeps.jobs.rows] == ["A/0_optimizer.learning_rate=0.1",
                                                        "B/0_optimizer.learning_rate=0.1"]


def test_a_folder_without_jobs_is_one_clear_message(tmp_path, capsys):
    assert main(["summarize", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: summarize {tmp_path}: no job folders found") and "multirun/DATE/TIME" in error
    assert "Traceback" not in error and not (tmp_path / SUMMARY_MD).exists()
    assert main(["summarize", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


# --- issue 18: a status that is true, files only where asked -----------------------------------------------
def dead_pid() -> int:
    """The pid of a process that ran and was killed with SIGKILL (and reaped): gone, as a killed job's is."""
    process = subprocess.Popen(["sleep", "60"])
    process.kill()
    process.wait()
    return process.pid


def as_a_killed_process_leaves_it(job: Path, pid: int) -> None:
    """status.json saying running, and the .lock naming the process, unlocked: what SIGKILL leaves."""
    (job / "status.json").write_text(json.dumps({
        "state": "running", "step": 1, "message": None, "objective": None, "started": "2024-05-01T12:00:00",
        "ended": None, "job": {"num": int(job.name.split("_")[0]), "id": None, "overrides": []},
        "host": socket.gethostname(), "pid": pid}))
    (job / LOCK_FILE).write_text(f"process {pid} on {os.uname().nodename}\n")


def row_of(output: str, job: int) -> str:
    """The jobs table's line of ``job`` in summarize's printed Markdown."""
    return next(line for line in output.splitlines() if line.startswith(f"| {job} |"))


def test_a_killed_job_shows_died_and_a_job_whose_process_holds_the_lock_running(sweep, tmp_path):
    killed, alive = sweep / "3_optimizer.learning_rate=0.001", make_job(sweep, 4, "0.0001")
    as_a_killed_process_leaves_it(killed, dead_pid())
    as_a_killed_process_leaves_it(alive, os.getpid())  # this process: alive, and it holds the lock
    with open(alive / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = cli(["finetune.tools", "summarize", str(sweep)], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "| died |" in row_of(result.stdout, 3) and "ended without recording its end" in row_of(result.stdout, 3)
        assert "| running |" in row_of(result.stdout, 4)
        # The lock decides as much as the pid: a process that still holds the lock is running.
        with open(killed / LOCK_FILE, "a") as other:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert read_status(killed)["state"] == "running"
    # A live process that has not taken the lock yet (it starts up) is running too.
    assert read_status(alive)["state"] == "running"
    # Died is an end, but not a finish: no metrics to average, and a rerun of the sweep launches the job again.
    jobs = {job.number: job for job in load_jobs([sweep])}
    assert jobs[3].status == "died" and not jobs[3].finished and not finished(read_status(killed), [])
    # A status.json written before the pid was recorded: the pid the .lock names decides.
    status = json.loads((killed / "status.json").read_text())
    del status["pid"]
    (killed / "status.json").write_text(json.dumps(status))
    assert read_status(killed)["state"] == "died"


def test_a_lock_its_run_let_go_says_not_running_and_the_died_rule_still_reads_it(tmp_path):
    """A run that ended rewrote its .lock to say so, naming the process it was. Should its status.json still say
    running (written before the pid was recorded), the rule stays: that process gone and the lock not held is
    died; the lock held (a run starting in the directory) is running."""
    job, dead = tmp_path / "0_job", dead_pid()
    job.mkdir()
    as_a_killed_process_leaves_it(job, dead)
    status = json.loads((job / "status.json").read_text())
    del status["pid"]
    (job / "status.json").write_text(json.dumps(status))
    (job / LOCK_FILE).write_text(f"not running: finished at 2024-05-01T12:30:00+00:00 (was process {dead} on "
                                 f"{os.uname().nodename} since 2024-05-01T12:00:00+00:00)\n")
    assert lock_record(job) == (dead, os.uname().nodename)
    assert read_status(job)["state"] == "died"
    with open(job / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert read_status(job)["state"] == "running"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def test_summarize_leaves_a_users_own_summary_alone_prints_the_table_and_writes_where_asked(sweep, tmp_path):
    (sweep / SUMMARY_MD).write_text("# My notes on this sweep\n")
    before = snapshot(sweep)
    result = cli(["finetune.tools", "summarize", str(sweep)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "## Jobs" in result.stdout
    assert row_of(result.stdout, 1).startswith("| 1 | 1_optimizer.learning_rate=0.01 | 0.01 | done |")
    note = [line for line in result.stdout.splitlines() if line.startswith("Nothing written")]
    assert len(note) == 1 and SUMMARY_MD in note[0] and "--output FOLDER" in note[0]
    assert snapshot(sweep) == before  # the user's file byte-identical, and nothing else written beside it
    out = tmp_path / "tables"
    result = cli(["finetune.tools", "summarize", str(sweep), "--output", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / SUMMARY_MD).read_text().startswith("## Jobs") and (out / SUMMARY_CSV).is_file()
    assert str(out / SUMMARY_CSV) in result.stdout and "Nothing written" not in result.stdout
    assert snapshot(sweep) == before
    assert not (out / ".summarize.json").exists()  # a folder the user named gets the tables, nothing more


def test_summarize_rewrites_only_its_own_files_and_never_a_folder_not_ours(sweep, tmp_path):
    assert cli(["finetune.tools", "summarize", str(sweep)], cwd=tmp_path).returncode == 0
    ours = (sweep / SUMMARY_CSV).read_bytes()
    result = cli(["finetune.tools", "summarize", str(sweep), "--sort", "job"], cwd=tmp_path)
    assert result.returncode == 0 and "Nothing written" not in result.stdout  # its own files: rewritten
    assert (sweep / SUMMARY_CSV).read_bytes() != ours
    (sweep / SUMMARY_CSV).write_text("edited by hand\n")  # ours no more
    before = snapshot(sweep)
    result = cli(["finetune.tools", "summarize", str(sweep)], cwd=tmp_path)
    assert result.returncode == 0 and f"holds {SUMMARY_CSV}, which summarize did not write" in result.stdout
    assert snapshot(sweep) == before
    # The folder above the sweep is nobody's sweep: the table, and nothing written into it.
    (tmp_path / "notes.txt").write_text("mine\n")
    result = cli(["finetune.tools", "summarize", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 0 and "## Jobs" in result.stdout
    assert "is not a sweep folder or run directory" in result.stdout and "--output FOLDER" in result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["multirun", "notes.txt"]


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` (and what it holds) read-only for a while: without write permission, or as root (who writes
    through permissions) a read-only bind mount of the folder onto itself."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode != 0:
        pytest.skip("root writes into folders without write permission, "
                    "and this sandbox cannot bind-mount one read-only")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_summarize_on_a_read_only_folder_prints_the_table_and_says_it_wrote_nothing(sweep, tmp_path):
    before = snapshot(sweep)
    with read_only(sweep):
        result = cli(["finetune.tools", "summarize", str(sweep)], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "## Jobs" in result.stdout and "Traceback" not in result.stdout + result.stderr
        note = [line for line in result.stdout.splitlines() if line.startswith("Nothing written")]
        assert len(note) == 1 and "cannot be written" in note[0] and "--output FOLDER" in note[0]
        # --output into a folder that cannot be made: the table, then the error (asked for, not done: exit 2).
        result = cli(["finetune.tools", "summarize", str(sweep), "--output", str(sweep / "tables")], cwd=tmp_path)
        assert result.returncode == 2 and "## Jobs" in result.stdout
        assert f"summarize --output {sweep / 'tables'}: " in result.stderr and "Traceback" not in result.stderr
    assert snapshot(sweep) == before


# --- TensorBoard HParams ---------------------------------------------------------------------------------
def test_task_overrides_become_typed_hparams():
    assert hparams.task_overrides_as_hparams(
        ["optimizer.learning_rate=1e-3", "head.layers.0.filters=64", "+train.keep_best=val.accuracy",
         "export.enabled=false", "~data.feature_cache", "data.augment=[flip_left_right]", "experiment=mobilenet_head"]
    ) == {"optimizer.learning_rate": 0.001, "head.layers.0.filters": 64, "train.keep_best": "val.accuracy",
          "export.enabled": False, "data.augment": "[flip_left_right]", "experiment": "mobilenet_head"}
    assert hparams.hparams_metrics(run_metrics(0.75)) == {"final/val/accuracy": 0.75, "final/val/loss": 0.25,
                                                          "final/test/accuracy": 0.65}


def read_events(folder: Path) -> list:
    return [event for path in sorted(folder.glob("events.out.tfevents.*"))
            for event in tf.compat.v1.train.summary_iterator(str(path))]


def test_hparams_sessions_are_written_and_tensorboard_lists_both_runs(tmp_path):
    from tensorboard.plugins.hparams import metadata

    for num, rate in enumerate(("0.1", "0.01")):
        hparams.write_run_hparams(tmp_path / f"{num}_lr={rate}", [f"optimizer.learning_rate={rate}", *COMMON],
                                  run_metrics(0.5 + num / 4, steps=7))
    values = [(event.step, value) for event in read_events(tmp_path / "0_lr=0.1" / "tensorboard")
              for value in event.summary.value]
    (_, start), *scalars = values
    assert start.metadata.plugin_data.plugin_name == "hparams"
    info = metadata.parse_session_start_info_plugin_data(start.metadata.plugin_data.content)
    assert dict(info.hparams)["optimizer.learning_rate"].number_value == 0.1
    assert dict(info.hparams)["experiment"].string_value == "mobilenet_head"
    assert dict(info.hparams)["train.steps"].number_value == 2
    assert {value.tag: (step, round(value.simple_value, 4)) for step, value in scalars} == {
        "final/val/accuracy": (7, 0.5), "final/val/loss": (7, 0.5), "final/test/accuracy": (7, 0.4)}

    groups = list_session_groups(tmp_path)
    sessions = {group.sessions[0].name: group for group in groups}
    assert set(sessions) == {"0_lr=0.1/tensorboard", "1_lr=0.01/tensorboard"}
    best = sessions["1_lr=0.01/tensorboard"]
    assert best.hparams["optimizer.learning_rate"].number_value == 0.01
    assert {value.name.tag: round(value.value, 4) for value in best.metric_values}["final/val/accuracy"] == 0.75


def list_session_groups(logdir: Path) -> list:
    """The session groups TensorBoard's HParams dashboard would list for ``--logdir logdir``."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context
    from tensorboard.plugins.hparams import list_session_groups as handler

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    tb_context = base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer,
                                       data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(logdir)))
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=10,
                                               allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS])
    return list(handler.Handler(context.RequestContext(), backend_context.Context(tb_context), "", request).run()
                .session_groups)


# --- Optuna search ---------------------------------------------------------------------------------------
def compose_with_hydra(overrides: list[str]):
    """The config with its ``hydra`` node, as ``python -m finetune OVERRIDES`` composes it."""
    from hydra import compose, initialize_config_module

    register_configs()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_the_optuna_search_composes_and_its_direction_follows_the_metric():
    cfg = compose_with_hydra(["experiment=mobilenet_head", "hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert (sweeper.direction, sweeper.n_trials, sweeper.n_jobs, sweeper.sampler.seed) == ("maximize", 20, 1, 12345)
    assert dict(sweeper.params) == {"optimizer.learning_rate": "tag(log, interval(1e-4, 0.1))",
                                    "head.layers.0.filters": "choice(32, 64, 128)",
                                    "head.layers.2.rate": "interval(0.0, 0.6)"}
    # The keys searched name the head's conv2d width and its dropout rate.
    assert (cfg.head.layers[0].type, cfg.head.layers[2].type) == ("conv2d", "dropout")
    loss = compose_with_hydra(["experiment=mobilenet_head", "hparams_search=optuna", "optimized_metric=val.loss"])
    assert loss.hydra.sweeper.direction == "minimize"


# Job folders are named after their overrides (hydra.job.override_dirname), and a name longer than 255
# characters cannot be made: the tiny profile's keys, the same in every job, are left out of the names.
TINY_KEYS_OUT_OF_JOB_DIRS = ("hydra.job.config.override_dirname.exclude_keys=[experiment,hparams_search,backbone.name,"
                             "backbone.cut,backbone.image_size,data.root,paths.cache_dir,train.log_every]")


@pytest.mark.slow
def test_an_optuna_search_runs_its_trials_and_summarizes(demo_cache, tiny_data, tmp_path):
    """Two trials of the tiny profile, in this process (our local launcher runs Optuna's jobs)."""
    sweep = tmp_path / "search"
    result = cli(["finetune", *tiny_overrides(demo_cache, tiny_data, "train.steps=2", "export.enabled=false",
                                              "data.feature_cache=off"),
                  "hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
                  TINY_KEYS_OUT_OF_JOB_DIRS],
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optimizer.learning_rate", "head.layers.0.filters", "head.layers.2.rate"}
    assert main(["summarize", str(sweep)]) == 0
    table = summarize(sweep)
    assert len(table.rows) == 2 and all(row["status"] == "done" for row in table.rows)
    assert {"optimizer.learning_rate", "head.layers.2.rate"} <= set(table.columns)
    assert max(row["val.accuracy"] for row in table.rows) == pytest.approx(best["best_value"])
    # Each trial's resume command runs it alone in its own directory: hydra.mode=RUN, or the search would start again.
    for job in sorted(path for path in sweep.iterdir() if (path / "status.json").is_file()):
        words = shlex.split(read_status(job)["resume_command"])
        assert "hparams_search=optuna" in words and words[-2] == "hydra.mode=RUN"
        assert OverridesParser.create().parse_override(words[-1]).value() == str(job)  # quoted for Hydra: commas
        check = check_sweep(words[3:], multirun=None, build_graphs=False)
        assert check.multirun is False and not check.problems, check.report()
