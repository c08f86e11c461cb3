"""Crash safety: a training run killed with SIGKILL at 20 random moments (while it starts, while it saves a
checkpoint, while it exports, anywhere) and restarted after each kill finishes with the weights and
metrics.json of an uninterrupted run, and nothing half-written is ever taken for complete. Also the
export's all-or-nothing publishing (:func:`finetune.export.exporter.publish_folder`)."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml
from conftest import ROOT, compose_config, run_pipeline

from finetune import graphs
from finetune.compat import tf, tf1
from finetune.errors import FinetuneError
from finetune.export import exporter
from finetune.files import complete_checkpoint
from finetune.training.run_state import RunState

SEED = 9
KILLS = 20
STEPS, CHECKPOINT_EVERY = 24, 3  # 8 checkpoint saves
OVERRIDES = ["experiment=mobilenet_head", f"train.steps={STEPS}", f"train.checkpoint_every={CHECKPOINT_EVERY}",
             "train.log_every=3", "train.eval_every=12"]
SAVING = re.compile(r"^model\.ckpt-(\d+)\..*tempstate\d+$")  # TF's bundle writer mid-save
EXPORTING = re.compile(r"^\.export\.tmp-\d+$")  # the exporter's folder before it is published
LEFTOVER = re.compile(r"(\.tmp-\d+|tempstate\d+|^checkpoint\.tmp[0-9a-f]{32}|_temp)$")
RESUMING = re.compile(r"Resuming from (model\.ckpt-\d+)")


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


@pytest.mark.slow
def test_a_failed_export_leaves_the_older_export_alone(demo_cache, tmp_path):
    def cfg(*more: str):
        return compose_config([*OVERRIDES, f"paths.cache_dir={demo_cache}", "train.eval_every=0", *more])

    run_pipeline(cfg("train.steps=3"), tmp_path)
    before = {path.name: path.read_bytes() for path in (tmp_path / "export").iterdir() if path.is_file()}
    with pytest.raises(FinetuneError, match=r"export\.parity_tolerance=0.*export-failed.*left as it was"):
        run_pipeline(cfg("train.steps=6", "export.parity_tolerance=0"), tmp_path)  # resumes; parity never 0
    assert {path.name: path.read_bytes() for path in (tmp_path / "export").iterdir() if path.is_file()} == before
    failed = tmp_path / "export-failed"
    assert (failed / "frozen_graph.pb").is_file() and not (failed / "model.json").exists()
    run_pipeline(cfg("train.steps=6"), tmp_path)  # swapped in over the older export
    assert json.loads((tmp_path / "export/model.json").read_text())["parity"]["tolerance"] == 1e-4
    assert (tmp_path / "export/frozen_graph.pb").read_bytes() != before["frozen_graph.pb"]
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".export")]


# --- SIGKILL at 20 moments (slow) -----------------------------------------------------------------------

@dataclass
class Process:
    """One ``python -m finetune`` of the run, its output going to ``log``."""

    popen: subprocess.Popen
    log: Path
    started: float  # time.monotonic()
    started_wall: float  # time.time(), to compare with file times

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _start(run_dir: Path, cache: Path, log: Path) -> Process:
    env = {**os.environ, "FINETUNE_CACHE": str(cache)}
    with open(log, "w") as out:
        popen = subprocess.Popen([sys.executable, "-m", "finetune", *OVERRIDES, f"hydra.run.dir={run_dir}"],
                                 cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Process(popen, log, time.monotonic(), time.time())


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _wait(process: Process, condition: Callable[[], bool], deadline: float = float("inf"),
          pause: float = 0.0) -> bool:
    """Poll until ``condition()`` (True) or the deadline (True) or the process's exit (False). ``pause`` 0:
    a busy loop, to catch a checkpoint save that lasts a few milliseconds."""
    while process.popen.poll() is None:
        if condition() or time.monotonic() >= deadline:
            return True
        if pause:
            time.sleep(pause)
    return False


def _saving(run_dir: Path, from_step: int, before: set[str]) -> Callable[[], bool]:
    """Whether a save of step ``from_step`` or later is under way (an earlier kill's leftovers, ``before``,
    do not count)."""
    return lambda: any((m := SAVING.match(name)) and int(m[1]) >= from_step and name not in before
                       for name in _names(run_dir / "checkpoints"))


def _exporting(run_dir: Path, before: set[str]) -> Callable[[], bool]:
    """Whether an export is under way (an earlier kill's leftovers, ``before``, do not count)."""
    return lambda: any(EXPORTING.match(name) and name not in before for name in _names(run_dir))


@dataclass
class Reference:
    """The uninterrupted run, and when (seconds after its start) things happened in it."""

    run_dir: Path
    first_checkpoint: float
    last_checkpoint: float
    export_started: float
    export_done: float
    ended: float


def _reference_run(run_dir: Path, cache: Path, log: Path) -> Reference:
    process = _start(run_dir, cache, log)
    times = {}
    last = f"model.ckpt-{STEPS}.index"
    events = {"first_checkpoint": lambda: "checkpoint" in _names(run_dir / "checkpoints"),
              "last_checkpoint": lambda: last in _names(run_dir / "checkpoints"),
              "export_started": _exporting(run_dir, set()),
              "export_done": lambda: (run_dir / "export/model.json").exists()}
    for name, condition in events.items():
        assert _wait(process, condition, pause=0.002), process.output()[-3000:]
        times[name] = time.monotonic() - process.started
    assert process.popen.wait() == 0, process.output()[-3000:]
    return Reference(run_dir, **times, ended=time.monotonic() - process.started)


def _schedule(rng: random.Random) -> list[tuple[str, float]]:
    """The 20 moments: (kind, a uniform number in [0, 1) placing it). First 8, while training is
    unfinished: during a checkpoint save (after 0 or 1 complete saves of the process: 5 such kills pass
    at most 5 of the 8 saves) or during start-up. Then 12: anywhere before the export, or during it.
    Each comes at the latest as the export is published, so that every kill lands in a running process."""
    early = ["save"] * 5 + ["startup"] * 3
    late = ["anywhere"] * 7 + ["export"] * 5
    rng.shuffle(early)
    rng.shuffle(late)
    return [(kind, rng.random()) for kind in early + late]


def _kill_at(kind: str, u: float, process: Process, run_dir: Path, latest_step: int, ref: Reference) -> bool:
    """Wait for the moment, then SIGKILL; False when the process ended first (then it was waited for)."""
    exporting = _exporting(run_dir, set(_names(run_dir)))
    if kind == "save":  # busy polling (a save lasts milliseconds), once this process's training began
        target = min(latest_step + (int(u * 2) + 1) * CHECKPOINT_EVERY, STEPS)
        saving = _saving(run_dir, target, set(_names(run_dir / "checkpoints")))
        events = set(_names(run_dir / "tensorboard"))  # a new events file: training starts
        found = _wait(process, lambda: bool(set(_names(run_dir / "tensorboard")) - events) or exporting(), pause=0.01)
        found = found and _wait(process, lambda: saving() or exporting())  # a save too quick to see: at its export
    elif kind == "export":  # u of the way through the export, at the latest as it is published
        found = _wait(process, exporting, pause=0.002)
        deadline = time.monotonic() + u * (ref.export_done - ref.export_started)
        found = found and _wait(process, lambda: not exporting(), deadline)
    else:  # u of the way through start-up, or to the export (at the latest as the export starts)
        span = ref.first_checkpoint if kind == "startup" or latest_step >= STEPS else ref.export_started
        found = _wait(process, exporting, process.started + u * span, pause=0.002)
    if found:
        process.popen.send_signal(signal.SIGKILL)
    return process.popen.wait() == -signal.SIGKILL  # else it ended before the moment came


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
    """The process resumed from ``latest`` if there was one, else started fresh (if it got that far)."""
    output = process.output()
    expected = Path(latest).name if latest else None
    assert set(RESUMING.findall(output)) <= {expected}, output[-3000:]
    report = run_dir / "restore_report.txt"
    if report.exists() and report.stat().st_mtime >= process.started_wall:  # written by this process
        first_line = report.read_text().splitlines()[0]
        assert first_line.startswith(f"Resuming from {expected} " if latest else "Fresh start:"), first_line
        assert not latest or expected in RESUMING.findall(output), output[-3000:]


def _variables(prefix: str) -> dict[str, bytes]:
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name).tobytes() + str(reader.get_tensor(name).dtype).encode()
            for name in reader.get_variable_to_shape_map()}


@pytest.mark.slow
def test_sigkill_at_20_moments_then_resume_equals_an_uninterrupted_run(demo_cache, tmp_path):
    began = time.monotonic()
    ref = _reference_run(tmp_path / "reference", demo_cache, tmp_path / "reference.log")
    run_dir = tmp_path / "killed"
    state = RunState(run_dir, compose_config([*OVERRIDES, f"paths.cache_dir={demo_cache}"]))
    kills: list[str] = []
    hits = {"save": 0, "export": 0}  # kills that left a half-written checkpoint / export behind
    finished = None
    for number, (kind, u) in enumerate(_schedule(random.Random(SEED)) + [("none", 0.0)]):
        latest = _check_nothing_half_written_is_taken(run_dir, state)
        latest_step = int(latest.rsplit("-", 1)[1]) if latest else 0
        if kind == "save" and latest_step >= STEPS:
            kind = "export"  # no save left to kill
        before = set(_names(run_dir)) | set(_names(run_dir / "checkpoints"))
        process = _start(run_dir, demo_cache, tmp_path / f"process_{number:02d}.log")
        killed = _kill_at(kind, u, process, run_dir, latest_step, ref) if kind != "none" else process.popen.wait() < 0
        _check_start(process, run_dir, latest)
        if not killed:
            finished = process
            break
        kills.append(f"{kind}@{time.monotonic() - process.started:.2f}s")
        hits["save"] += any(SAVING.match(name) for name in set(_names(run_dir / "checkpoints")) - before)
        hits["export"] += any(EXPORTING.match(name) for name in set(_names(run_dir)) - before)
    print(f"reference: {ref}")
    print(f"{len(kills)} kills ({hits['save']} mid-save, {hits['export']} mid-export): {', '.join(kills)}; "
          f"{time.monotonic() - began:.0f} s in all")

    assert finished.popen.returncode == 0, finished.output()[-3000:]
    assert len(kills) == KILLS and hits["save"] >= 2 and hits["export"] >= 2, (kills, hits)
    latest = _check_nothing_half_written_is_taken(run_dir, state)
    assert Path(latest).name == f"model.ckpt-{STEPS}"
    assert _variables(latest) == _variables(str(ref.run_dir / "checkpoints" / f"model.ckpt-{STEPS}"))
    assert (run_dir / "metrics.json").read_bytes() == (ref.run_dir / "metrics.json").read_bytes()
    predictions = "export/val_predictions.json"
    assert (run_dir / predictions).read_bytes() == (ref.run_dir / predictions).read_bytes()
    for name in ("frozen_graph.pb", "optimized_graph.pb"):  # equal graphs (a .pb's map fields have no fixed order)
        assert graphs.load_graph_def(run_dir / "export" / name) == graphs.load_graph_def(ref.run_dir / "export" / name)
    leftovers = [str(path.relative_to(run_dir)) for path in run_dir.rglob("*") if LEFTOVER.search(path.name)]
    assert not leftovers
