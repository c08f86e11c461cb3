"""The run's own state: resuming (exactly), moved and copied run directories, finished runs, the lock,
the config fingerprint, stopping on a signal and on a NaN loss.

These are mechanics, not what is learnt: every run is conftest's tiny profile. Runs that several tests
compare with or start from are trained once for the module (:func:`uninterrupted`, :func:`finished`);
the tests copy a run before they write into it."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SignalAtStep, cli, run_pipeline, tiny_config, tiny_overrides

from finetune.errors import FinetuneError, RunStopped
from finetune.training.run_state import RunState
from finetune.weights.readers import read_checkpoint

pytestmark = pytest.mark.slow
QUICK = ("export.enabled=false", "train.checkpoint_every=1000")
# Shuffled data with random flips, and a head with dropout: everything a resume must continue exactly.
RANDOM = ("data.augment=[{type:flip_left_right}]", "head=conv_pool_dense")
# One phase; with an export, so that the run also serves as one of two runs of one config (the export's
# parity numbers are in metrics.json too).
ONE_PHASE = ("train.steps=9", "export.enabled=true", "export.saved_model=false")
# The second phase also trains the backbone's last block (test_mobilenet_v1 ends with Conv2d_3).
TWO_PHASES = ("train.steps=8", "train.phases=[{name: head, steps: 4}, "
              "{name: top, steps: 4, var_list: ['head/', 'MobilenetV1/Conv2d_3_'], learning_rate: 0.001}]")
# Evaluations along the way, the best one kept: their history must survive the stop too. And metrics.json's
# "train" (the mean of the last log_every steps) reaches back before the stop.
EVALUATED = ("train.steps=9", "train.eval_every=2", "train.keep_best=val.loss", "train.log_every=8")
RESUMED = {"one-phase": ONE_PHASE, "two-phases": TWO_PHASES, "evaluated": EVALUATED}


def _config(cache: Path, data: Path, *overrides: str):
    return tiny_config(cache, data, *QUICK, *overrides)


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def _final_variables(run_dir: Path, metrics: dict) -> dict[str, np.ndarray]:
    return read_checkpoint(str(run_dir / metrics["checkpoint"]))


@pytest.fixture(scope="module")
def uninterrupted(demo_cache, tiny_data, tmp_path_factory):
    """The uninterrupted run of each config of :data:`RESUMED`, trained on first use and shared by the
    module's tests: ``uninterrupted(name) -> (run_dir, metrics)``. Never write into it."""
    runs: dict[str, tuple[Path, dict]] = {}

    def run(name: str) -> tuple[Path, dict]:
        if name not in runs:
            run_dir = tmp_path_factory.mktemp(f"whole-{name}")
            runs[name] = run_dir, run_pipeline(_config(demo_cache, tiny_data, *RANDOM, *RESUMED[name]), run_dir)
        return runs[name]

    return run


@pytest.fixture(scope="module")
def finished(demo_cache, tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    """A finished 3-step run: its directory and metrics. Tests copy it (:func:`_copy`) before using it."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    return run_dir, run_pipeline(_config(demo_cache, tiny_data, "train.steps=3"), run_dir)


def _lock_says(run_dir: Path, ended: str) -> bool:
    """The run directory's .lock says that nothing runs there, how the run ended, and which process it was."""
    text = (run_dir / ".lock").read_text()
    return re.fullmatch(rf"not running: {ended} at \S+ \(was process {os.getpid()} on \S+ since \S+\)\n",
                        text) is not None


def _copy(run: tuple[Path, dict], to: Path) -> Path:
    shutil.copytree(run[0], to)
    return to


@pytest.mark.parametrize("name, stop_step", [
    ("one-phase", 5),  # mid-run
    ("two-phases", 3),  # mid-phase
    ("two-phases", 4),  # at the phase boundary
    ("evaluated", 4),  # at an evaluation
], ids=["one-phase", "mid-phase", "phase-boundary", "evaluated"])
def test_a_stopped_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one(
        demo_cache, tiny_data, tmp_path, uninterrupted, name, stop_step):
    overrides = RESUMED[name]
    cfg = _config(demo_cache, tiny_data, *RANDOM, *overrides)
    whole_dir, whole_metrics = uninterrupted(name)
    stopped_dir = tmp_path / "stopped"
    with pytest.raises(RunStopped, match=f"SIGUSR1 after step {stop_step}") as stopped:
        run_pipeline(cfg, stopped_dir, listeners=[SignalAtStep(stop_step)])
    assert stopped.value.exit_status == 75
    assert (stopped_dir / f"checkpoints/model.ckpt-{stop_step}.index").is_file()
    assert not (stopped_dir / "metrics.json").exists()
    assert _lock_says(stopped_dir, "stopped")
    resumed = run_pipeline(cfg, stopped_dir)
    assert _lock_says(stopped_dir, "finished")
    assert resumed["timings"]["resumed_from_step"] == stop_step
    assert whole_metrics["timings"]["resumed_from_step"] is None
    assert json.loads((stopped_dir / "timings.json").read_text())["resumed_from_step"] == stop_step
    whole, parts = _final_variables(whole_dir, whole_metrics), _final_variables(stopped_dir, resumed)
    assert sorted(whole) == sorted(parts)
    for variable in whole:  # weights, BatchNorm statistics, optimizer slots, the global step
        assert np.array_equal(whole[variable], parts[variable]), variable
    # Everything the run reports, byte for byte; only timings.json says that it was resumed.
    for file in ("metrics.json", "metrics.jsonl", "confusion_matrix.json", "misclassified.json", "phases.json"):
        assert (whole_dir / file).read_bytes() == (stopped_dir / file).read_bytes(), file
    assert resumed["restore"]["verified_bit_identical"] is True
    evaluations = [json.loads(line)["step"] for line in (stopped_dir / "metrics.jsonl").read_text().splitlines()]
    if "train.keep_best=val.loss" in overrides:
        assert evaluations == [2, 4, 6, 8, 9]
        assert resumed["best"]["step"] in evaluations
        for file in ("best.json", "checkpoint"):
            assert (whole_dir / "checkpoints/best" / file).read_bytes() == \
                (stopped_dir / "checkpoints/best" / file).read_bytes(), file
    else:
        assert evaluations == [resumed["steps"]]  # eval_every=null (the tiny profile's): the final one alone
    if "export.enabled=true" in overrides:  # the resumed run exported the same model
        assert resumed["export"] == whole_metrics["export"]
        for file in ("export/val_predictions.json", "export/labels.txt"):
            assert (whole_dir / file).read_bytes() == (stopped_dir / file).read_bytes(), file


def test_two_runs_of_one_config_write_byte_identical_metrics(demo_cache, tiny_data, tmp_path, uninterrupted):
    """A second fresh run of the one-phase config (random flips, dropout, an export) repeats the first's
    metrics.json byte for byte."""
    first, _ = uninterrupted("one-phase")
    second = tmp_path / "second"
    metrics = run_pipeline(_config(demo_cache, tiny_data, *RANDOM, *ONE_PHASE), second)
    assert metrics["timings"]["resumed_from_step"] is None and "export" in metrics
    assert (first / "metrics.json").read_bytes() == (second / "metrics.json").read_bytes()
    for run_dir in (first, second):
        assert json.loads((run_dir / "timings.json").read_text())["images_per_second"] > 0


def test_a_moved_or_copied_run_directory_resumes_its_own_checkpoints(demo_cache, tiny_data, tmp_path, finished):
    first = _copy(finished, tmp_path / "first")  # a 3-step run, itself copied from where it was trained
    state_file = (first / "checkpoints/checkpoint").read_text()
    assert str(finished[0]) not in state_file and str(tmp_path) not in state_file  # relative paths only
    shutil.move(first, tmp_path / "moved")
    moved = run_pipeline(_config(demo_cache, tiny_data, "train.steps=5"), tmp_path / "moved")
    assert moved["timings"]["resumed_from_step"] == 3 and moved["checkpoint"] == "checkpoints/model.ckpt-5"
    shutil.copytree(tmp_path / "moved", tmp_path / "copy")
    shutil.rmtree(tmp_path / "moved")  # the copy must not lean on the original's files
    copied = run_pipeline(_config(demo_cache, tiny_data, "train.steps=7"), tmp_path / "copy")
    assert copied["timings"]["resumed_from_step"] == 5 and copied["checkpoint"] == "checkpoints/model.ckpt-7"


@pytest.mark.parametrize("again", [(), ("train.steps=2",)], ids=["same-config", "fewer-steps"])
def test_a_finished_run_is_reported_and_left_untouched(demo_cache, tiny_data, tmp_path, caplog, finished, again):
    run_dir = _copy(finished, tmp_path / "run")
    first = finished[1]
    before = _files(run_dir)
    with caplog.at_level("INFO", logger="finetune"):
        second = run_pipeline(_config(demo_cache, tiny_data, "train.steps=3", *again), run_dir)
    assert any("finished already" in record.getMessage() for record in caplog.records)
    assert _files(run_dir) == before
    assert second["val"] == first["val"] and second["steps"] == 3


def test_another_config_refuses_to_resume_naming_the_keys_and_changes_nothing(demo_cache, tiny_data, tmp_path,
                                                                             finished):
    run_dir = _copy(finished, tmp_path / "run")  # trained with head=conv_pool_dense (the experiment's)
    (run_dir / "metrics.json").unlink()  # an unfinished run
    before = _files(run_dir)
    with pytest.raises(FinetuneError, match=r"another config.*head\.layers") as refused:
        run_pipeline(_config(demo_cache, tiny_data, "train.steps=6", "head=pool_dense"), run_dir)
    assert "hydra.run.dir" in str(refused.value)
    assert _files(run_dir) == before


def test_resume_never_and_must(demo_cache, tiny_data, tmp_path, finished):
    with pytest.raises(FinetuneError, match="resume=must"):
        run_pipeline(_config(demo_cache, tiny_data, "train.steps=2", "resume=must"), tmp_path / "empty")
    run_dir = _copy(finished, tmp_path / "run")
    (run_dir / "metrics.json").unlink()
    before = _files(run_dir)
    with pytest.raises(FinetuneError, match="resume=never"):
        run_pipeline(_config(demo_cache, tiny_data, "train.steps=4", "resume=never"), run_dir)
    assert _files(run_dir) == before


def test_a_second_run_in_a_locked_directory_refuses_naming_the_first(demo_cache, tiny_data, tmp_path, finished):
    """Refused before anything is read or written (in an empty directory, and in a finished run's); once the
    lock is released, a run takes the directory."""
    cfg = _config(demo_cache, tiny_data, "train.steps=3")
    empty, run_dir = tmp_path / "empty", _copy(finished, tmp_path / "run")
    for folder in (empty, run_dir):
        before = _files(folder) if folder.exists() else {}
        holder = RunState(folder, cfg)
        holder.lock()
        try:
            with pytest.raises(FinetuneError, match=f"in use by process {os.getpid()}"):
                run_pipeline(cfg, folder)
        finally:
            holder.release()
        assert _files(folder) == before
    assert not (empty / "config.yaml").exists()
    # Released: the directory is free again (the finished run is reported, which needs the lock too).
    assert run_pipeline(cfg, run_dir) == json.loads((run_dir / "metrics.json").read_text())
    assert _lock_says(run_dir, "finished")


def test_a_nan_loss_stops_the_run_keeping_the_last_good_checkpoint_and_names_the_command_that_resumes_it(
        demo_cache, tiny_data, tmp_path):
    overrides = tiny_overrides(demo_cache, tiny_data, *QUICK, "train.steps=20", "train.checkpoint_every=1",
                               "optimizer.learning_rate=1e30")
    run_dir = tmp_path / "run"
    result = cli(["finetune", *overrides, f"hydra.run.dir={run_dir}"], cwd=tmp_path, cache=demo_cache)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output[-3000:]
    message = re.search(r"The training loss became (nan|inf) at step \d+.*learning rate.*", output)
    assert message, output[-3000:]
    kept = RunState(run_dir, _config(demo_cache, tiny_data)).latest()
    assert kept and Path(kept).name in message[0]
    assert all(np.isfinite(value).all() for value in read_checkpoint(kept).values())
    assert not (run_dir / "metrics.json").exists()
    command = re.search(r"Resume it with: (python -m finetune .*)$", message[0])
    assert command and shlex.split(command[1]) == ["python", "-m", "finetune", *overrides, f"hydra.run.dir={run_dir}"]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["resume_command"] == command[1] in status["message"]


def test_sigterm_from_outside_checkpoints_exits_75_and_prints_the_command_that_resumes_it(demo_cache, tiny_data,
                                                                                         tmp_path):
    """The real thing, a process of its own, in the default dated run directory (outputs/DATE/TIME): SIGTERM once
    training is under way; the stop message's command, pasted (run in this process, from another folder: what is
    tested there is the resume, not the process), resumes it in that directory from the step it stopped at."""
    env = dict(os.environ, FINETUNE_CACHE=str(demo_cache))
    overrides = tiny_overrides(demo_cache, tiny_data, *QUICK, "train.steps=2000")
    process = subprocess.Popen([sys.executable, "-m", "finetune", *overrides], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in process.stdout:  # Hydra logs to stdout
        seen.append(line)
        if "step 3/" in line:
            process.send_signal(signal.SIGTERM)
            break
    rest, _ = process.communicate(timeout=300)
    output = "".join(seen) + rest
    assert process.returncode == 75, output[-2000:]
    assert "Stopped by SIGTERM" in output and "Traceback" not in output
    printed = re.search(r"Resume it with: (python -m finetune .*)$", output, re.MULTILINE)
    assert printed, output[-2000:]
    program, words = shlex.split(printed[1])[:3], shlex.split(printed[1])[3:]
    run_dir = Path(words[-1].removeprefix("hydra.run.dir="))
    assert program == ["python", "-m", "finetune"] and words == [*overrides, f"hydra.run.dir={run_dir}"]
    assert run_dir.is_absolute() and run_dir.parent.parent.resolve() == (tmp_path / "outputs").resolve()  # DATE/TIME
    stopped_at = int(RunState(run_dir, _config(demo_cache, tiny_data)).latest().rsplit("-", 1)[1])
    assert f"after step {stopped_at}" in output
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "stopped" and status["resume_command"] == printed[1]
    # Pasted, with fewer steps so that the test ends soon (train.steps may change on resume).
    pasted = [f"train.steps={stopped_at + 2}" if word == "train.steps=2000" else word for word in words]
    (tmp_path / "elsewhere").mkdir()
    resumed = cli(["finetune", *pasted], cwd=tmp_path / "elsewhere", cache=demo_cache)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == stopped_at + 2
    assert json.loads((run_dir / "timings.json").read_text())["resumed_from_step"] == stopped_at
    assert json.loads((run_dir / "run.json").read_text())["starts"][1]["step"] == stopped_at
    assert sorted(path.name for path in (tmp_path / "outputs").glob("*/*")) == [run_dir.name]  # no second folder


def test_a_resume_on_other_classes_or_examples_is_refused_unless_accepted(demo_cache, tiny_data, tmp_path):
    """A renamed class folder would swap labels and move its images between splits; an added image changes what
    is trained and tested on. Both are refused before anything is written; resume=accept_data_change continues
    on the added image and run.json records it."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run = tmp_path / "run"
    overrides = tiny_overrides(demo_cache, data, *QUICK, f"hydra.run.dir={run}")
    assert cli(["finetune", *overrides, "train.steps=2"], tmp_path, demo_cache).returncode == 0
    kept = {name: content for name, content in _files(run).items()
            if not name.startswith(".hydra") and name not in ("finetune.log", "status.json")}

    def unchanged() -> bool:
        return all((run / name).read_bytes() == content for name, content in kept.items())

    first, second = sorted(p.name for p in data.iterdir())[:2]
    (data / first).rename(data / f"{first}_renamed")
    result = cli(["finetune", *overrides], tmp_path, demo_cache)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output
    assert f"class '{first}' is gone and '{first}_renamed' is new (renamed?)" in output
    assert "labels swapped" in output and unchanged()

    (data / f"{first}_renamed").rename(data / first)
    image = sorted((data / second).iterdir())[0]
    shutil.copy(image, data / second / f"added{image.suffix}")
    result = cli(["finetune", *overrides], tmp_path, demo_cache)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output
    assert f"1 added (e.g. {second}/added{image.suffix})" in output
    assert "resume=accept_data_change" in output and unchanged()

    result = cli(["finetune", *overrides, "resume=accept_data_change"], tmp_path, demo_cache)
    assert result.returncode == 0, result.stderr
    start = json.loads((run / "run.json").read_text())["starts"][-1]
    assert start["step"] == 2 and start["data_change"]["added"] == 1
    assert start["data_change"]["examples"]["added"] == [f"{second}/added{image.suffix}"]
    assert f"{second}/added{image.suffix}" in sum(json.loads((run / "splits.json").read_text())["splits"].values(), [])
