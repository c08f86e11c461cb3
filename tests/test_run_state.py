"""The run's own state: resuming (exactly), moved and copied run directories, finished runs, the lock,
the config fingerprint, stopping on a signal and on a NaN loss."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SignalAtStep, compose_config, run_cli, run_pipeline

from finetune.errors import FinetuneError, RunStopped
from finetune.training.run_state import RunState
from finetune.weights.readers import read_checkpoint

pytestmark = pytest.mark.slow
QUICK = ("experiment=mobilenet_head", "export.enabled=false", "train.log_every=1", "train.checkpoint_every=1000")
# Shuffled data with random flips, and a head with dropout: everything a resume must continue exactly.
RANDOM = ("data.augment=[{type:flip_left_right}]", "head=conv_pool_dense")
TWO_PHASES = ("train.steps=8", "train.phases=[{name: head, steps: 4}, "
              "{name: top, steps: 4, var_list: ['head/', 'MobilenetV1/Conv2d_11_'], learning_rate: 0.001}]")
# Evaluations along the way, the best one kept: their history must survive the stop too. And metrics.json's
# "train" (the mean of the last log_every steps) reaches back before the stop.
EVALUATED = ("train.steps=9", "train.eval_every=2", "train.keep_best=val.loss", "train.log_every=8")


def _config(cache: Path, *overrides: str):
    return compose_config([*QUICK, f"paths.cache_dir={cache}", *overrides])


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def _final_variables(run_dir: Path, metrics: dict) -> dict[str, np.ndarray]:
    return read_checkpoint(str(run_dir / metrics["checkpoint"]))


@pytest.mark.parametrize("overrides, stop_step", [
    (("train.steps=9",), 5),  # mid-run
    (TWO_PHASES, 3),  # mid-phase
    (TWO_PHASES, 4),  # at the phase boundary
    (EVALUATED, 4),  # at an evaluation
], ids=["one-phase", "mid-phase", "phase-boundary", "evaluated"])
def test_a_stopped_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one(
        demo_cache, tmp_path, overrides, stop_step):
    cfg = _config(demo_cache, *RANDOM, *overrides)
    uninterrupted = run_pipeline(cfg, tmp_path / "whole")
    with pytest.raises(RunStopped, match=f"SIGUSR1 after step {stop_step}") as stopped:
        run_pipeline(cfg, tmp_path / "stopped", listeners=[SignalAtStep(stop_step)])
    assert stopped.value.exit_status == 75
    assert (tmp_path / f"stopped/checkpoints/model.ckpt-{stop_step}.index").is_file()
    assert not (tmp_path / "stopped/metrics.json").exists()
    resumed = run_pipeline(cfg, tmp_path / "stopped")
    assert resumed["timings"]["resumed_from_step"] == stop_step
    assert uninterrupted["timings"]["resumed_from_step"] is None
    assert json.loads((tmp_path / "stopped/timings.json").read_text())["resumed_from_step"] == stop_step
    whole, parts = _final_variables(tmp_path / "whole", uninterrupted), _final_variables(tmp_path / "stopped", resumed)
    assert sorted(whole) == sorted(parts)
    for name in whole:  # weights, BatchNorm statistics, optimizer slots, the global step
        assert np.array_equal(whole[name], parts[name]), name
    # Everything the run reports, byte for byte; only timings.json says that it was resumed.
    for name in ("metrics.json", "metrics.jsonl", "confusion_matrix.json", "misclassified.json", "phases.json"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "stopped" / name).read_bytes(), name
    assert resumed["restore"]["verified_bit_identical"] is True
    evaluations = [json.loads(line)["step"] for line in (tmp_path / "stopped/metrics.jsonl").read_text().splitlines()]
    if "train.keep_best=val.loss" in overrides:
        assert evaluations == [2, 4, 6, 8, 9]
        assert resumed["best"]["step"] in evaluations
        for name in ("best.json", "checkpoint"):
            assert (tmp_path / "whole/checkpoints/best" / name).read_bytes() == \
                (tmp_path / "stopped/checkpoints/best" / name).read_bytes(), name
    else:
        assert evaluations == [resumed["steps"]]  # eval_every=0: the final evaluation alone


def test_two_runs_of_one_config_write_byte_identical_metrics(demo_cache, tmp_path):
    cfg = _config(demo_cache, *RANDOM, "train.steps=4", "export.enabled=true", "export.saved_model=false")
    for name in ("a", "b"):
        run_pipeline(cfg, tmp_path / name)
    assert (tmp_path / "a/metrics.json").read_bytes() == (tmp_path / "b/metrics.json").read_bytes()
    assert json.loads((tmp_path / "a/timings.json").read_text())["images_per_second"] > 0


def test_a_moved_or_copied_run_directory_resumes_its_own_checkpoints(demo_cache, tmp_path):
    run_pipeline(_config(demo_cache, "train.steps=3"), tmp_path / "first")
    state_file = (tmp_path / "first/checkpoints/checkpoint").read_text()
    assert str(tmp_path) not in state_file  # relative paths only
    shutil.move(tmp_path / "first", tmp_path / "moved")
    moved = run_pipeline(_config(demo_cache, "train.steps=5"), tmp_path / "moved")
    assert moved["timings"]["resumed_from_step"] == 3 and moved["checkpoint"] == "checkpoints/model.ckpt-5"
    shutil.copytree(tmp_path / "moved", tmp_path / "copy")
    shutil.rmtree(tmp_path / "moved")  # the copy must not lean on the original's files
    copied = run_pipeline(_config(demo_cache, "train.steps=7"), tmp_path / "copy")
    assert copied["timings"]["resumed_from_step"] == 5 and copied["checkpoint"] == "checkpoints/model.ckpt-7"


@pytest.mark.parametrize("again", [(), ("train.steps=2",)], ids=["same-config", "fewer-steps"])
def test_a_finished_run_is_reported_and_left_untouched(demo_cache, tmp_path, caplog, again):
    first = run_pipeline(_config(demo_cache, "train.steps=3"), tmp_path)
    before = _files(tmp_path)
    with caplog.at_level("INFO", logger="finetune"):
        second = run_pipeline(_config(demo_cache, "train.steps=3", *again), tmp_path)
    assert any("finished already" in record.getMessage() for record in caplog.records)
    assert _files(tmp_path) == before
    assert second["val"] == first["val"] and second["steps"] == 3


def test_another_config_refuses_to_resume_naming_the_keys_and_changes_nothing(demo_cache, tmp_path):
    run_pipeline(_config(demo_cache, "train.steps=3", "head=conv_pool_dense"), tmp_path)
    (tmp_path / "metrics.json").unlink()  # an unfinished run
    before = _files(tmp_path)
    with pytest.raises(FinetuneError, match=r"another config.*head\.layers") as refused:
        run_pipeline(_config(demo_cache, "train.steps=6", "head=pool_dense"), tmp_path)
    assert "hydra.run.dir" in str(refused.value)
    assert _files(tmp_path) == before


def test_resume_never_and_must(demo_cache, tmp_path):
    with pytest.raises(FinetuneError, match="resume=must"):
        run_pipeline(_config(demo_cache, "train.steps=2", "resume=must"), tmp_path / "empty")
    run_pipeline(_config(demo_cache, "train.steps=2"), tmp_path / "run")
    (tmp_path / "run/metrics.json").unlink()
    before = _files(tmp_path / "run")
    with pytest.raises(FinetuneError, match="resume=never"):
        run_pipeline(_config(demo_cache, "train.steps=4", "resume=never"), tmp_path / "run")
    assert _files(tmp_path / "run") == before


def test_a_second_run_in_a_locked_directory_refuses_naming_the_first(demo_cache, tmp_path):
    cfg = _config(demo_cache, "train.steps=2")
    holder = RunState(tmp_path, cfg)
    holder.lock()
    try:
        with pytest.raises(FinetuneError, match=f"in use by process {os.getpid()}"):
            run_pipeline(cfg, tmp_path)
    finally:
        holder.release()
    assert not (tmp_path / "config.yaml").exists()
    run_pipeline(cfg, tmp_path)  # released: the directory is free again


def test_a_nan_loss_stops_the_run_keeping_the_last_good_checkpoint(demo_cache, tmp_path):
    cfg = _config(demo_cache, "train.steps=20", "train.checkpoint_every=1", "optimizer.learning_rate=1e30")
    with pytest.raises(FinetuneError, match=r"loss became (nan|inf) at step \d+.*learning rate") as stopped:
        run_pipeline(cfg, tmp_path)
    kept = RunState(tmp_path, cfg).latest()
    assert kept and Path(kept).name in str(stopped.value)
    assert all(np.isfinite(value).all() for value in read_checkpoint(kept).values())
    assert not (tmp_path / "metrics.json").exists()


def test_sigterm_from_outside_checkpoints_and_exits_75(demo_cache, tmp_path):
    """The real thing, from the command line: SIGTERM once training is under way."""
    env = dict(os.environ, FINETUNE_CACHE=str(demo_cache))
    command = [sys.executable, "-m", "finetune", *QUICK, "train.steps=2000", f"hydra.run.dir={tmp_path}"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    stopped_at = int(RunState(tmp_path, _config(demo_cache)).latest().rsplit("-", 1)[1])
    assert f"after step {stopped_at}" in output
    resumed = run_cli(["finetune", *QUICK, f"train.steps={stopped_at + 2}", "resume=must", f"hydra.run.dir={tmp_path}"],
                      cwd=tmp_path, cache=demo_cache)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == stopped_at + 2
