"""What a run says and leaves behind for people: quiet start-up, line-based progress in log files,
TensorBoard event files that read well, and the warning for a backbone that is neither restored nor trained.

The start-up noise filter, FINETUNE_VERBOSE and what a run writes to its pipes act on the process (file
descriptor 2, read at import): those tests start one. The rest run in this process, on conftest's tiny profile."""
import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from conftest import run_cli, run_pipeline, tiny_config
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tqdm import tqdm

from finetune import compat, demo, pipeline
from finetune.compat import tf
from finetune.config import TrainConfig
from finetune.training.listeners import TrainingWindow
from finetune.training.loop import StepResult
from finetune.weights.restore import format_report, untouched_backbone_warning
from finetune.training.progress import BarProgress, LogProgress, make_progress
from finetune.resolve import REQUIRE, data_root, pretrained_checkpoint
from finetune.training.run_graph import build_run_graph

STEPS, LOG_EVERY, EVAL_EVERY = 12, 4, 6
PROGRESS_LINE = re.compile(r"step (\d+)/(\d+): loss \d+\.\d+, accuracy \d+\.\d+ \(last \d+ steps?\), \d+ images/s, "
                           r"ETA \S+")
ABSL_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+\.cc:\d+\]")  # any line of TF's C++ logging
WARNING_TEXT = "Nothing is restored into the backbone"


def _noise(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if compat.STARTUP_NOISE.match(line.encode()) or ABSL_LINE.match(line)]


@pytest.fixture(scope="module")
def cli_run(demo_cache, tmp_path_factory):
    """A short demo run through the CLI in a process of its own, its stdout and stderr pipes (not terminals), as
    on a cluster: what the process writes to file descriptor 2 (TensorFlow's C++ logging) is checked too.

    The demo experiment, not the tiny profile: in a new process both cost the same (start-up and graph building
    dominate), and the tiny backbone, restored from a whole MobileNet v1 checkpoint, logs a 700-character line
    of unused checkpoint entries."""
    run_dir = tmp_path_factory.mktemp("logged_run")
    result = run_cli(["finetune", "experiment=mobilenet_head", f"train.steps={STEPS}", f"train.log_every={LOG_EVERY}",
                      f"train.eval_every={EVAL_EVERY}", f"train.histogram_every={LOG_EVERY}", "export.enabled=false",
                      f"hydra.run.dir={run_dir}"], cwd=run_dir, cache=demo_cache)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return run_dir, result, events


# --- start-up noise ------------------------------------------------------------------------------

@pytest.mark.skipif(compat.VERBOSE, reason="FINETUNE_VERBOSE is set: the filter is off")
def test_startup_filter_drops_known_noise_and_keeps_everything_else(capfd):
    noise = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
             b"I0000 00:00:1795641526.908716    5841 cudart_stub.cc:31] Could not find cuda drivers on your "
             b"machine, GPU will not be used.\n"
             b"E0000 00:00:1795641532.949451    5844 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA "
             b"error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
    real = b"E0000 00:00:1795641532.949451    5844 some_kernel.cc:12] a real error\n"
    with pytest.raises(ValueError, match="boom"):
        with compat.startup_noise_filtered():
            os.write(2, noise + real)
            raise ValueError("boom")  # what was written still comes out, and fd 2 is put back
    os.write(2, b"after the block\n")
    err = capfd.readouterr().err
    assert err == real.decode() + "after the block\n"


@pytest.mark.slow  # a process that imports TensorFlow, then aborts
@pytest.mark.skipif(compat.VERBOSE, reason="FINETUNE_VERBOSE is set: the filter is off")
def test_startup_filter_keeps_the_last_words_of_a_crash(tmp_path):
    crash = ("import os\nfrom finetune.compat import startup_noise_filtered\nwith startup_noise_filtered():\n"
             "    os.write(2, b'F0000 00:00:1795641526.908716    5841 some_lib.cc:31] a fatal error\\n')\n"
             "    os.abort()\n")
    result = subprocess.run([sys.executable, "-c", crash], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "some_lib.cc:31] a fatal error" in result.stderr


@pytest.mark.slow
def test_tools_are_quiet_and_verbose_switch_shows_tensorflow_messages(tmp_path, monkeypatch):
    checkpoint = demo.checkpoint()
    command = ["finetune.tools", "inspect", str(checkpoint)]
    monkeypatch.setenv(compat.VERBOSE_ENV, "1")
    verbose = run_cli(command, cwd=tmp_path)
    monkeypatch.delenv(compat.VERBOSE_ENV)
    quiet = run_cli(command, cwd=tmp_path)
    assert verbose.returncode == 0 and quiet.returncode == 0, quiet.stderr
    if not _noise(verbose.stderr):
        pytest.skip("this TensorFlow build prints no start-up message on this machine: nothing to silence")
    assert _noise(quiet.stderr) == []
    assert quiet.stdout == verbose.stdout  # the tool's own output is untouched


# --- progress ------------------------------------------------------------------------------------

def test_log_progress_writes_one_line_every_n_steps(caplog):
    progress = LogProgress(total=10, initial=0, every=4, batch_size=8)
    with caplog.at_level(logging.INFO, logger="finetune.training.progress"):
        for step in range(1, 11):
            progress.step(step, loss=1.0 / step, accuracy=0.1 * step, seconds=0.01)
    lines = [record.getMessage() for record in caplog.records]
    assert [PROGRESS_LINE.search(line).groups() for line in lines] == [("4", "10"), ("8", "10"), ("10", "10")]
    assert "loss 0.521" in lines[0]  # the mean of steps 1-4 since the previous line, not the last step alone
    assert "800 images/s" in lines[1]  # 4 steps of 8 images in 4 x 0.01 s of training time
    for kind in (True, False):
        made = make_progress(10, 0, 4, 8, terminal=kind)
        assert isinstance(made, BarProgress if kind else LogProgress)
        made.close()


def test_the_last_progress_line_the_bar_and_the_end_of_run_table_average_one_window(caplog):
    """10 steps, log_every 4: the last line (step 10) averages steps 7-10, as metrics.json's train and the table's
    train row do, and each says so; the bar's postfix is the same window's."""
    losses = [1.0 / step for step in range(1, 11)]
    progress = LogProgress(total=10, initial=0, every=4, batch_size=8)
    bar = BarProgress(total=10, initial=0, every=4)
    window = TrainingWindow(OmegaConf.structured(TrainConfig(log_every=4)))
    with caplog.at_level(logging.INFO, logger="finetune.training.progress"):
        for step, loss in enumerate(losses, start=1):
            for listener in (progress, bar):
                listener.step(step, loss=loss, accuracy=0.1 * step, seconds=0.01)
            window.step_ended(None, StepResult(step, 0, loss, 0.1 * step, 0.01))
    bar.close()
    last = caplog.records[-1].getMessage()
    train = window.metrics()
    assert train["last_steps"] == 4 and train["loss"] == pytest.approx(np.mean(losses[-4:]))
    assert f"loss {train['loss']:.3f}, accuracy {train['accuracy']:.3f} (last 4 steps)" in last
    assert f"loss {train['loss']:.3f}, acc {train['accuracy']:.2f} (last 4 steps)" in bar.bar.postfix
    table = pipeline.summary_table({"train": train, "steps": 10}, Path("run"))
    assert re.search(rf"^train \(last 4 steps\) +{train['accuracy']:.3f} +{train['loss']:.3f}$", table, re.M), table


def test_log_records_go_through_tqdm_write_while_the_bar_is_drawn():
    """A log record printed to the console while the bar is on the terminal clears the bar and gets a line of its
    own (tqdm's logging redirection); the console handler is back once the bar closes, and a log file's handler
    is never touched."""
    console, log_file = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers = [logging.StreamHandler(console), logging.StreamHandler(log_file)]
    logger = logging.getLogger("finetune.test_progress")
    saved_level = root.level
    with contextlib.redirect_stderr(console):  # the terminal: the bar and the console handler write there
        root.setLevel(logging.INFO)
        for handler in handlers:
            root.addHandler(handler)
        try:
            with mock.patch.object(tqdm, "write", wraps=tqdm.write) as written:
                bar = make_progress(total=3, initial=0, every=1, batch_size=8, terminal=True)
                bar.step(1, 0.5, 0.5, 0.01)
                logger.info("a log line")
                bar.step(2, 0.5, 0.5, 0.01)
                bar.close()
                logger.info("after the bar")
            assert [call.args[0] for call in written.call_args_list] == ["a log line"]
            assert handlers[0] in root.handlers and handlers[1] in root.handlers
        finally:
            root.setLevel(saved_level)
            for handler in handlers:
                root.removeHandler(handler)
    on_the_line = [line.split("\r")[-1] for line in console.getvalue().split("\n") if "a log line" in line]
    assert on_the_line == ["a log line"], console.getvalue()  # the bar was cleared first: nothing glued to it
    assert log_file.getvalue() == "a log line\nafter the bar\n"


@pytest.mark.slow
def test_progress_in_a_log_file_is_a_few_short_lines(cli_run):
    run_dir, result, _ = cli_run
    output = result.stdout + result.stderr
    progress = [line for line in output.splitlines() if PROGRESS_LINE.search(line)]
    assert [PROGRESS_LINE.search(line).groups() for line in progress] == [
        (str(step), str(STEPS)) for step in range(LOG_EVERY, STEPS + 1, LOG_EVERY)]
    assert all(len(line) < 300 for line in output.splitlines())
    assert "\r" not in output  # no progress-bar redraws
    assert _noise(output) == []
    assert len(progress) == len([line for line in (run_dir / "finetune.log").read_text().splitlines()
                                 if PROGRESS_LINE.search(line)])  # the log file has them too
    assert WARNING_TEXT not in output  # the demo checkpoint is restored


# --- TensorBoard ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_histogram_tags_are_the_variable_names(cli_run):
    run_dir, _, events = cli_run
    tags = events.Tags()["histograms"]
    variables = {name for name, _ in tf.train.list_variables(str(run_dir / "checkpoints"))}
    assert tags and set(tags) <= variables, sorted(set(tags) - variables)
    assert any(tag.startswith("head/") for tag in tags) and any(tag.startswith("MobilenetV1/") for tag in tags)
    assert [events.Histograms(tags[0])[i].step for i in range(3)] == [0, LOG_EVERY, 2 * LOG_EVERY]


@pytest.mark.slow
def test_val_is_a_curve_with_eval_every_and_test_stays_out_of_training(cli_run):
    run_dir, _, events = cli_run
    evaluated = list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    for tag in ("val/accuracy", "val/loss"):
        assert [event.step for event in events.Scalars(tag)] == evaluated, tag
    # The test split is evaluated once, at the end: never in a curve or the history that steers a run.
    assert not [tag for tag in events.Tags()["scalars"] + events.Tags()["images"] if tag.startswith("test/")]
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in history] == evaluated and all("test" not in line for line in history)
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["images"] > 0
    logged = list(range(0, STEPS, LOG_EVERY))
    for tag in ("train/loss", "train/accuracy", "train/learning_rate"):
        assert [event.step for event in events.Scalars(tag)] == logged, tag


@pytest.mark.slow
def test_graph_is_the_connected_deployable_model(cli_run):
    _, _, events = cli_run
    graph_def = events.Graph()
    nodes = {node.name: node for node in graph_def.node}
    assert not [name for name in nodes if name.startswith(("train/", "eval/", "optimizer/"))]
    behind_logits = _upstream(nodes, ["logits"])
    # The head and the backbone lie on the way from input to logits, in one connected graph.
    assert "input" in behind_logits
    assert any(name.startswith("head/") for name in behind_logits)
    assert any(name.startswith("MobilenetV1/") for name in behind_logits)
    assert _upstream(nodes, ["logits", "probabilities"]) == set(nodes)  # nothing detached


def _upstream(nodes: dict, outputs: list[str]) -> set[str]:
    """The nodes that ``outputs`` depend on (themselves included), walking back along every input."""
    seen, queue = set(outputs), deque(outputs)
    while queue:
        for name in nodes[queue.popleft()].input:
            name = name.lstrip("^").split(":")[0]
            if name not in seen:
                seen.add(name)
                queue.append(name)
    return seen


# --- the nothing-restored warning ----------------------------------------------------------------
# The run logs untouched_backbone_warning(plan) as it is, and its restore_report.txt is format_report(plan, ...),
# what `tools plan` prints: a run's log and report show the warning a plan gives.

def _plan(cache: Path, data: Path, *overrides: str):
    cfg = tiny_config(cache, data, *overrides)
    data = pipeline.load_data(cfg.data, data_root(cfg.data, cfg.paths, REQUIRE))
    checkpoint = pretrained_checkpoint(cfg.restore, cfg.paths, REQUIRE)
    return build_run_graph(cfg, data, checkpoint).plan


@pytest.mark.slow
def test_a_frozen_backbone_that_restores_nothing_is_warned_of_once(demo_cache, tiny_data, tmp_path, caplog):
    cfg = tiny_config(demo_cache, tiny_data, "restore.checkpoint=null", "train.steps=2", "export.enabled=false",
                      "data.feature_cache=off")
    with caplog.at_level(logging.WARNING, logger="finetune"):
        run_pipeline(cfg, tmp_path)
    warnings = [record for record in caplog.records if WARNING_TEXT in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    warning = warnings[0].getMessage()
    assert "\n" not in warning
    assert "restore.checkpoint=PATH|zoo:NAME|demo" in warning and "experiment=mobilenet_head" in warning
    assert f"WARNING: {warning}" in (tmp_path / "restore_report.txt").read_text()  # what `tools plan` prints


@pytest.mark.slow
def test_no_warning_when_the_backbone_is_restored(tiny_run):
    """conftest's tiny run restores the demo backbone: its report (the plan's summary, then its tables) has no
    warning."""
    run_dir, _ = tiny_run
    report = (run_dir / "restore_report.txt").read_text()
    assert "restored" in report and WARNING_TEXT not in report


@pytest.mark.slow  # builds a run's graph
def test_no_warning_when_the_backbone_is_trained(demo_cache, tiny_data):
    plan = _plan(demo_cache, tiny_data, "restore.checkpoint=null", 'optimizer.var_list=[".*"]')
    assert untouched_backbone_warning(plan) is None
    assert WARNING_TEXT not in format_report(plan, verified=None)
