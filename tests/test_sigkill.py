"""Crash safety: a training run killed with SIGKILL at each kind of moment (before any checkpoint, in the
middle of a checkpoint save, between two saves, in the middle of the export, after it finished) and
restarted after each kill finishes with the weights and metrics.json of an uninterrupted run, and nothing
half-written is ever taken for complete. Also the export's all-or-nothing publishing
(:func:`finetune.export.exporter.publish_folder`)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml
from conftest import ROOT, cli, run_pipeline, tiny_config, tiny_overrides

from finetune import graphs
from finetune.compat import tf, tf1
from finetune.errors import FinetuneError
from finetune.export import exporter
from finetune.files import complete_checkpoint
from finetune.training.run_state import RunState

SAVING = re.compile(r"^model\.ckpt-(\d+)\..*tempstate\d+$")  # TF's bundle writer mid-save
EXPORTING = re.compile(r"^\.export\.tmp-\d+$")  # the exporter's folder before it is published
LEFTOVER = re.compile(r"(\.tmp-\d+|tempstate\d+|^checkpoint\.tmp[0-9a-f]{32}|_temp)$")
RESUMING = re.compile(r"Resuming from (model\.ckpt-\d+)")
HALF_WRITTEN = "left half-written by an interrupted earlier process"  # finetune.files, export.exporter


# --- publishing a folder whole (fast) -------------------------------------------------------------------

def _folder(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _contents(path: Path) -> dict[str, str]:
    return {child.name: child.read_text() for child in path.iterdir()}


@pytest.mark.parametrize("can_swap", [True, False], ids=["swap", "move-aside"])
def test_publish_folder_replaces_an_older_folder_whole(tmp_path, monkeypatch, can_swap):
    if not can_swap:
        monkeypatch.setattr(exporter, "_exchange", lambda first, second: False)
    target = _folder(tmp_path / "export", {"model.json": "old", "old_only.pb": "x"})
    staging = _folder(exporter.temporary_folder(target), {"model.json": "new"})
    assert staging.name == f".export.tmp-{os.getpid()}"
    exporter.publish_folder(staging, target)
    assert _contents(target) == {"model.json": "new"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]  # the older one is gone, nothing left
    exporter.publish_folder(_folder(staging, {"a": "b"}), tmp_path / "fresh")  # no older folder
    assert _contents(tmp_path / "fresh") == {"a": "b"} and not staging.exists()


def test_stale_temporary_folders_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "export"
    stale = [_folder(tmp_path / name, {"x": "y"}) for name in (".export.tmp-123", ".export.old.tmp-45")]
    kept = [_folder(tmp_path / name, {"x": "y"})
            for name in ("export", "export-failed", ".export.tmp-x", ".other.tmp-1")]
    assert exporter.remove_stale_temporaries(target) == sorted(stale)
    assert not any(path.exists() for path in stale) and all(path.exists() for path in kept)
    assert exporter.remove_stale_temporaries(tmp_path / "missing" / "export") == []


def _export_files(run_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (run_dir / "export").iterdir() if path.is_file()}


@pytest.mark.slow
def test_a_failed_export_leaves_the_older_export_alone(demo_cache, tiny_data, tiny_run, tmp_path):
    """A copy of conftest's tiny run (4 steps, every format exported) is extended to 6 steps under a parity
    tolerance no export meets, then again under the default one."""
    def cfg(*more: str):
        return tiny_config(demo_cache, tiny_data, "train.steps=6", "export.saved_model=false", *more)

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)
    before = _export_files(run_dir)
    older = sorted(path.name for path in (run_dir / "export").iterdir())
    assert {"model.tflite", "saved_model", "frozen_graph.pb"} <= set(older)
    with pytest.raises(FinetuneError, match=r"export\.parity_tolerance=0.*export-failed.*left as it was"):
        run_pipeline(cfg("export.parity_tolerance=0"), run_dir)  # resumes; parity never 0
    assert _export_files(run_dir) == before
    assert sorted(path.name for path in (run_dir / "export").iterdir()) == older
    failed = run_dir / "export-failed"
    assert (failed / "frozen_graph.pb").is_file() and not (failed / "model.json").exists()
    run_pipeline(cfg(), run_dir)  # swapped in over the older export
    assert json.loads((run_dir / "export/model.json").read_text())["parity"]["tolerance"] == 1e-4
    assert (run_dir / "export/frozen_graph.pb").read_bytes() != before["frozen_graph.pb"]
    # Replaced whole: nothing of the older export (its SavedModel, its TFLite file) is left beside the new one.
    assert not {"model.tflite", "saved_model"} & {path.name for path in (run_dir / "export").iterdir()}
    assert not [path.name for path in run_dir.iterdir() if path.name.startswith(".export")]


# --- SIGKILL at each kind of moment (slow) --------------------------------------------------------------

STEPS, CHECKPOINT_EVERY = 12, 2  # 6 checkpoint saves
# Random flips and the head's dropout: what a resume must continue exactly. An evaluation in the middle:
# the history (metrics.jsonl) must come out whole too. The head has a wide dense layer (16384 units) so that a
# checkpoint is about 9 MB: its save lasts milliseconds and is caught in the middle almost every time (the tiny
# profile's own 160 kB are written in well under a millisecond: about one save in four was), for a few
# milliseconds more per step.
WIDE_HEAD = ("head.layers=[{type: conv2d, filters: 64, kernel_size: 3, activation: relu, batch_norm: true}, "
             "{type: global_avg_pool}, {type: dense, units: 16384, activation: relu}, {type: dropout, rate: 0.3}, "
             "{type: dense}]")
RUN = ("data.augment=[{type:flip_left_right}]", WIDE_HEAD, f"train.steps={STEPS}",
       f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.eval_every=6")


@dataclass
class Process:
    """One ``python -m finetune`` of the run, its output going to ``log``."""

    popen: subprocess.Popen
    log: Path
    started_wall: float  # time.time(), to compare with file times

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def steps_logged(self) -> list[int]:
        return [int(step) for step in re.findall(r"step (\d+)/", self.output())]


def _overrides(cache: Path, data: Path, run_dir: Path) -> list[str]:
    return [*tiny_overrides(cache, data, *RUN), f"hydra.run.dir={run_dir}"]


def _start(run_dir: Path, cache: Path, data: Path, log: Path) -> Process:
    env = {**os.environ, "FINETUNE_CACHE": str(cache)}
    with open(log, "w") as out:
        popen = subprocess.Popen([sys.executable, "-m", "finetune", *_overrides(cache, data, run_dir)],
                                 cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Process(popen, log, time.time())


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _wait(process: Process, condition: Callable[[], bool], pause: float) -> bool:
    """Poll until ``condition()`` (True) or the process's exit (False). ``pause`` 0: a busy loop, to catch a
    checkpoint save that lasts a few milliseconds."""
    while process.popen.poll() is None:
        if condition():
            return True
        if pause:
            time.sleep(pause)
    return False


def _kill_when(process: Process, moment: Callable[[], bool], pause: float = 0.002) -> bool:
    """SIGKILL ``process`` at the first moment ``moment()`` holds. It is checked again once the process is
    stopped (SIGSTOP: it cannot change a file any more), so that the kill lands exactly there; if the moment
    passed in between, the process goes on (SIGCONT) and the next one is waited for. False when the process
    ended first."""
    while _wait(process, moment, pause):
        process.popen.send_signal(signal.SIGSTOP)
        if moment():
            process.popen.kill()
            assert process.popen.wait() == -signal.SIGKILL
            return True
        process.popen.send_signal(signal.SIGCONT)
    process.popen.wait()
    return False


def _saving(run_dir: Path, from_step: int) -> Callable[[], bool]:
    """Whether TF's bundle writer is writing a checkpoint of step ``from_step`` or later."""
    return lambda: any((m := SAVING.match(name)) and int(m[1]) >= from_step for name in _names(run_dir / "checkpoints"))


def _check_nothing_half_written_is_taken(run_dir: Path, state: RunState) -> Optional[str]:
    """After a kill: every checkpoint the state file lists is complete, with its progress; every JSON file
    (outside temporaries) parses; an export/ is complete. Returns the checkpoint a restart resumes from."""
    checkpoint_state = tf1.train.get_checkpoint_state(str(state.checkpoint_dir))
    for path in (checkpoint_state.all_model_checkpoint_paths if checkpoint_state else []):
        prefix = str(state.checkpoint_dir / Path(path).name)
        assert complete_checkpoint(prefix), f"{prefix} is listed in the checkpoint state but incomplete"
        json.loads(Path(prefix + ".progress.json").read_text())
    latest = state.latest()
    assert (latest is None) == (checkpoint_state is None), "a checkpoint state whose newest checkpoint is not usable"
    for path in run_dir.rglob("*.json"):
        if not any(part.startswith(".") for part in path.relative_to(run_dir).parts):  # temporaries are not read
            json.loads(path.read_text())
    if (run_dir / "metrics.jsonl").exists():
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            json.loads(line)
    if (run_dir / "config.yaml").exists():
        assert isinstance(yaml.safe_load((run_dir / "config.yaml").read_text()), dict)
    if (run_dir / "export").exists():
        meta = json.loads((run_dir / "export/model.json").read_text())
        assert all((run_dir / "export" / name).exists() for name in meta["files"].values())
    return latest


def _check_start(process: Process, run_dir: Path, latest: Optional[str]) -> None:
    """The process resumed from ``latest`` if there was one, else started fresh: its restore report and its
    log say so."""
    output = process.output()
    expected = Path(latest).name if latest else None
    assert RESUMING.findall(output) == ([expected] if latest else []), output[-3000:]
    report = run_dir / "restore_report.txt"
    assert report.stat().st_mtime >= process.started_wall  # written by this process
    first_line = report.read_text().splitlines()[0]
    assert first_line.startswith(f"Resuming from {expected} " if latest else "Fresh start:"), first_line


def _variables(prefix: str) -> dict[str, bytes]:
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name).tobytes() + str(reader.get_tensor(name).dtype).encode()
            for name in reader.get_variable_to_shape_map()}


def _step(checkpoint: Optional[str]) -> int:
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0


def _untouched(run_dir: Path) -> dict[str, bytes]:
    """The run's files but those every start of the command rewrites: Hydra's (.hydra/, the log), status.json
    and the lock."""
    skipped = {".lock", "status.json", "finetune.log"}
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()
            and p.name not in skipped and p.relative_to(run_dir).parts[0] != ".hydra"}


@pytest.mark.slow
def test_sigkill_at_each_kind_of_moment_then_resume_equals_an_uninterrupted_run(demo_cache, tiny_data, tmp_path):
    reference = tmp_path / "reference"  # the same command, uninterrupted (in this process)
    whole = cli(["finetune", *_overrides(demo_cache, tiny_data, reference)], cwd=tmp_path, cache=demo_cache)
    assert whole.returncode == 0, (whole.stdout + whole.stderr)[-3000:]
    run_dir = tmp_path / "killed"
    state = RunState(run_dir, tiny_config(demo_cache, tiny_data, *RUN))
    checkpoints = run_dir / "checkpoints"
    processes: list[Process] = []

    def start() -> tuple[Process, Optional[str]]:
        latest = _check_nothing_half_written_is_taken(run_dir, state)
        processes.append(_start(run_dir, demo_cache, tiny_data, tmp_path / f"process_{len(processes)}.log"))
        return processes[-1], latest

    # 1. Before any checkpoint: its start written (config.yaml, run.json, restore.json), no save begun.
    process, latest = start()
    assert latest is None
    assert _kill_when(process, lambda: (run_dir / "restore_report.txt").exists()
                      and not any(name.startswith("model.ckpt") for name in _names(checkpoints))), \
        process.output()[-3000:]
    _check_start(process, run_dir, latest)

    # 2. In the middle of a save (the bundle writer's temporary there), after a first save of this process.
    process, latest = start()
    assert latest is None  # nothing was saved: a fresh start again
    assert _kill_when(process, _saving(run_dir, 2 * CHECKPOINT_EVERY), pause=0), process.output()[-3000:]
    _check_start(process, run_dir, latest)
    assert any(SAVING.match(name) for name in _names(checkpoints))  # left half-written

    # 3. Between two saves: this process saved, then trained a step that no checkpoint holds yet.
    process, latest = start()
    assert _step(latest) >= CHECKPOINT_EVERY

    def between_saves() -> bool:
        saved, logged = _step(state.latest()), max(process.steps_logged(), default=0)
        return saved > _step(latest) and logged > saved and not any("tmp" in name for name in _names(checkpoints))

    assert _kill_when(process, between_saves), process.output()[-3000:]
    assert _step(state.latest()) < max(process.steps_logged())  # steps that the next process trains again
    _check_start(process, run_dir, latest)
    assert HALF_WRITTEN in process.output()  # the save killed in 2.

    # 4. In the middle of the export (its folder there, not published yet): training is over.
    process, latest = start()
    staging = run_dir / f".export.tmp-{process.popen.pid}"
    assert _kill_when(process, lambda: (staging / "frozen_graph.pb").exists()
                      and not (run_dir / "export").exists()), process.output()[-3000:]
    _check_start(process, run_dir, latest)
    assert staging.is_dir() and _step(state.latest()) == STEPS and not (run_dir / "metrics.json").exists()

    # 5. After it finished (metrics.json written): then a rerun finds the run finished and changes nothing.
    process, latest = start()
    assert _step(latest) == STEPS
    assert _kill_when(process, lambda: (run_dir / "metrics.json").exists()), process.output()[-3000:]
    _check_start(process, run_dir, latest)
    assert HALF_WRITTEN in process.output() and staging.name in process.output()  # the export killed in 4.
    latest = _check_nothing_half_written_is_taken(run_dir, state)
    before = _untouched(run_dir)
    again = cli(["finetune", *_overrides(demo_cache, tiny_data, run_dir)], cwd=tmp_path, cache=demo_cache)
    assert again.returncode == 0 and "finished already" in again.stdout + again.stderr, again.stderr[-3000:]
    assert _untouched(run_dir) == before

    assert Path(latest).name == f"model.ckpt-{STEPS}"
    assert _variables(latest) == _variables(str(reference / "checkpoints" / f"model.ckpt-{STEPS}"))
    assert (run_dir / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    for name in ("metrics.jsonl", "export/val_predictions.json"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name
    for name in ("frozen_graph.pb", "optimized_graph.pb"):  # equal graphs (a .pb's map fields have no fixed order)
        assert graphs.load_graph_def(run_dir / "export" / name) == graphs.load_graph_def(reference / "export" / name)
    leftovers = [str(path.relative_to(run_dir)) for path in run_dir.rglob("*") if LEFTOVER.search(path.name)]
    assert not leftovers
