"""The run's own state on disk, owned by one object: its checkpoints, the config they were written
under, the lock that keeps a second process out, and the request to stop.

Every way a run can start is decided in :meth:`RunState.start` and explained in one line: fresh (the
pretrained weights are restored as planned), resumed from the run's own latest checkpoint (same config
fingerprint), or refused (another config, ``resume=never`` with progress on disk, ``resume=must`` with
none). Checkpoint state is written with paths relative to the run directory, so a moved or copied run
directory resumes from its own files.

Beside each checkpoint lies its progress (a small JSON file: the last training steps' numbers, the
evaluation history's state), so that a resumed run reports exactly what an uninterrupted one would; the
outcome of the fresh start's restore is kept once for the same reason. With ``train.keep_best``, the best
evaluated checkpoint is kept apart, in ``checkpoints/best/``, with ``best.json`` saying which it is.
"""
from __future__ import annotations

import contextlib
import functools
import fcntl
import json
import logging
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from omegaconf import DictConfig

from finetune.compat import tf, tf1
from finetune.errors import FinetuneError, RunStopped, first_line
from finetune.files import complete_checkpoint, write_json_atomically
# The fingerprint is finetune.fingerprint's (no TensorFlow: a sweep's launcher compares it too); re-exported.
from finetune.fingerprint import (CHECKPOINT_DIR, FINGERPRINT_FILE, UNFINGERPRINTED, changed_keys,  # noqa: F401
                                  differing_keys, fingerprint, fingerprint_config)
from finetune.run_status import LOCK_FILE, ended_lock_text, lock_text, now

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.ckpt"
# A reader asking whether a run died (finetune.run_status.lock_held) holds the lock for a moment: try again.
LOCK_TRIES, LOCK_RETRY_S = 3, 0.05
# SIGUSR1/SIGUSR2: what clusters send before a time limit or preemption (submitit: SIGUSR2).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
PROGRESS_SUFFIX = ".progress.json"  # model.ckpt-STEP.progress.json: the progress of checkpoint STEP
RESTORE_FILE = "restore.json"  # the fresh start's restore outcome, for metrics.json after a resume
BEST_DIR = "best"  # checkpoints/best/: train.keep_best's checkpoint
BEST_FILE = "best.json"  # beside it: metric, value, step, checkpoint


@dataclass(frozen=True)
class Savers:
    """The run's own Savers, built with the rest of the graph: the latest checkpoints (relative paths in the
    checkpoint state, so a moved run resumes its own files) and, with ``train.keep_best``, the best one."""

    latest: tf1.train.Saver
    best: Optional[tf1.train.Saver]


def build_savers(var_list: dict, keep_best: bool, keep: int = 3) -> Savers:
    """The Savers of :class:`Savers`, in the default graph."""
    latest = tf1.train.Saver(var_list=var_list, max_to_keep=keep, save_relative_paths=True)
    best = tf1.train.Saver(var_list=var_list, max_to_keep=1, save_relative_paths=True) if keep_best else None
    return Savers(latest, best)


def checkpoint_step(prefix: str) -> int:
    """The global step in a checkpoint prefix ``.../model.ckpt-STEP``."""
    match = re.search(r"-(\d+)$", prefix)
    return int(match.group(1)) if match else 0


@dataclass
class Start:
    """How the session's variables were set: resumed from the run's own checkpoint, or freshly restored."""

    resumed_from: Optional[str]  # the run checkpoint resumed from; None for a fresh start
    step: int  # the global step training continues from
    why: str  # one line, logged and kept in restore_report.txt
    progress: dict = field(default_factory=dict)  # what RunState.save kept beside the checkpoint resumed

    @property
    def resumed(self) -> bool:
        return self.resumed_from is not None


class RunState:
    """A run directory's checkpoints, fingerprint, lock and stop request."""

    def __init__(self, run_dir: Path, cfg: DictConfig) -> None:
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / CHECKPOINT_DIR
        self.config = fingerprint_config(cfg)
        self.fingerprint = fingerprint(self.config)
        self.resume_policy: str = cfg.resume
        self.savers: Optional[Savers] = None  # the graph's, from start() on
        self.stop_signal: Optional[int] = None
        self._lock_file = None
        self._locked_since = ""

    # --- the lock: one process per run directory -----------------------------------------------------
    def lock(self) -> None:
        """Take the run directory for this process; FinetuneError naming the process that holds it."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.run_dir / LOCK_FILE, "a+")
        except OSError as error:
            raise FinetuneError(
                f"The run directory {self.run_dir} cannot be written ({error.filename or self.run_dir}: "
                f"{error.strerror or error}). Choose a folder you can write (hydra.run.dir=...).") from None
        for attempt in range(LOCK_TRIES):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt + 1 < LOCK_TRIES:
                    time.sleep(LOCK_RETRY_S)
        else:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FinetuneError(
                f"The run directory {self.run_dir} is in use by {holder}. Two runs in one directory would "
                "overwrite each other's checkpoints: wait for it, stop it, or choose another directory "
                "(hydra.run.dir=...).") from None
        self._locked_since = now()
        self._rewrite_lock(handle, lock_text(self._locked_since))
        self._lock_file = handle  # held until release() or the process ends (the kernel drops it then)

    def release(self, ended: str = "finished") -> None:
        """Let the run directory go, its ``.lock`` first rewritten to say that nothing runs there and how the run
        ``ended`` (one of ``finished``, ``stopped``, ``failed``). A process killed outright cannot: its lock keeps
        naming it, and readers go by whether the process is gone (:func:`finetune.run_status.died`)."""
        if self._lock_file is None:
            return
        try:
            self._rewrite_lock(self._lock_file, ended_lock_text(ended, self._locked_since))
        except OSError as error:  # a full disk: the run's own outcome matters more than this note
            log.warning("Could not record in %s that the run %s: %s", self.run_dir / LOCK_FILE, ended, error)
        finally:
            with contextlib.suppress(OSError):  # (closing flushes what a full disk refused once more)
                self._lock_file.close()
            self._lock_file = None

    @staticmethod
    def _rewrite_lock(handle, text: str) -> None:
        """The lock file's text replaced in place (the file itself is the lock: never renamed)."""
        handle.seek(0)
        handle.truncate()
        handle.write(text)
        handle.flush()

    # --- checkpoints ---------------------------------------------------------------------------------
    def latest(self) -> Optional[str]:
        """The newest complete checkpoint of this run, looked up inside this run directory."""
        state = tf1.train.get_checkpoint_state(str(self.checkpoint_dir))
        if not state or not state.model_checkpoint_path:
            return None
        # Resolved by name inside our own folder: a state file written by an older version held
        # absolute paths, which point into the original directory after a move or copy.
        prefix = str(self.checkpoint_dir / Path(state.model_checkpoint_path).name)
        return prefix if complete_checkpoint(prefix) else None

    def saved_fingerprint(self) -> Optional[dict[str, Any]]:
        path = self.checkpoint_dir / FINGERPRINT_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def save(self, sess: tf1.Session, step: int, progress: Optional[dict] = None) -> str:
        """Write a checkpoint of ``step``, its ``progress`` beside it, and the fingerprint of the config
        it belongs to; the progress of checkpoints the Saver deleted goes with them."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        fingerprint_path = self.checkpoint_dir / FINGERPRINT_FILE
        if not fingerprint_path.is_file():
            write_json_atomically(fingerprint_path, {"fingerprint": self.fingerprint, "config": self.config})
        prefix = str(self.checkpoint_dir / f"{CHECKPOINT_NAME}-{step}")
        # Progress first: a checkpoint is never without its progress (a progress file without its
        # checkpoint is never read, and the next save of that step replaces it).
        write_json_atomically(Path(prefix + PROGRESS_SUFFIX), progress or {})
        saved = self.savers.latest.save(sess, str(self.checkpoint_dir / CHECKPOINT_NAME), global_step=step,
                                        write_meta_graph=False)
        kept = {Path(path).name for path in self.savers.latest.last_checkpoints}
        for path in self.checkpoint_dir.glob(f"{CHECKPOINT_NAME}-*{PROGRESS_SUFFIX}"):
            if path.name[:-len(PROGRESS_SUFFIX)] not in kept:
                path.unlink(missing_ok=True)
        return saved

    def progress(self, prefix: str) -> dict:
        """What :meth:`save` kept beside checkpoint ``prefix`` ({} for a checkpoint without it)."""
        path = Path(prefix + PROGRESS_SUFFIX)
        return json.loads(path.read_text()) if path.is_file() else {}

    # --- the fresh start's restore outcome ---------------------------------------------------------------
    def save_restore_outcome(self, outcome: dict) -> None:
        """Keep what the fresh start's restore did (counts, verified bit-identical) for later resumes."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.checkpoint_dir / RESTORE_FILE, outcome)

    def saved_restore_outcome(self) -> Optional[dict]:
        path = self.checkpoint_dir / RESTORE_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    # --- the best checkpoint (train.keep_best) -----------------------------------------------------------
    @property
    def best_dir(self) -> Path:
        return self.checkpoint_dir / BEST_DIR

    def save_best(self, sess: tf1.Session, step: int, record: dict) -> dict:
        """Save the session as the best checkpoint (replacing the previous best) and ``record`` (metric,
        value, step) with its path relative to the run directory in best.json; returns that record."""
        self.best_dir.mkdir(parents=True, exist_ok=True)
        prefix = self.savers.best.save(sess, str(self.best_dir / CHECKPOINT_NAME), global_step=step,
                                       write_meta_graph=False)
        record = {**record, "checkpoint": Path(prefix).relative_to(self.run_dir).as_posix()}
        write_json_atomically(self.best_dir / BEST_FILE, record)
        return record

    def best(self) -> Optional[dict]:
        """best.json: the best checkpoint's metric, value, step and path (None before the first)."""
        path = self.best_dir / BEST_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def restore_best(self, sess: tf1.Session) -> dict:
        """Load the best checkpoint into the session; returns its record."""
        record = self.best()
        self.savers.best.restore(sess, str(self.run_dir / record["checkpoint"]))
        return record

    # --- starting ------------------------------------------------------------------------------------
    def check_resumable(self) -> Optional[str]:
        """The checkpoint a start would resume from (None: a fresh start), or FinetuneError saying why not."""
        latest = self.latest()
        if self.resume_policy == "must" and latest is None:
            raise FinetuneError(f"resume=must, but {self.checkpoint_dir} holds no checkpoint of this run to resume "
                                "from. Check the run directory (hydra.run.dir=...) or use resume=auto.")
        if latest is None:
            return None
        if self.resume_policy == "never":
            raise FinetuneError(
                f"resume=never, but {self.checkpoint_dir} already holds this run's checkpoint {Path(latest).name}. "
                "Nothing was changed. Start in a new run directory (hydra.run.dir=...), or use resume=auto.")
        saved = self.saved_fingerprint()
        changes = None if saved is None else changed_keys(saved, self.config)
        if changes is not None:
            raise FinetuneError(
                f"The run directory {self.run_dir} holds checkpoints written under another config, so they cannot "
                f"be resumed: {changes}. Nothing was changed. "
                "Start in a new run directory (hydra.run.dir=...), or put those keys back to resume.")
        return latest

    def start(self, sess: tf1.Session, savers: Savers, restore: Callable[[], None], pretrained: Optional[str]) -> Start:
        """Resume from the run's own latest checkpoint when there is one, else call ``restore`` (the
        planned restore of the pretrained weights); say in one line which won and why. ``savers``: the
        graph's, which the run's checkpoints are written and read with from now on."""
        self.savers = savers
        for saver in (savers.latest, savers.best):  # a Saver shared with an earlier job would delete its files
            if saver is not None:
                saver.set_last_checkpoints_with_time([])
        latest = self.check_resumable()
        if latest is None:
            restore()
            return Start(None, 0, f"Fresh start: no checkpoint of this run yet; weights from restore.checkpoint="
                                  f"{pretrained}.")
        try:
            savers.latest.restore(sess, latest)
        except tf.errors.OpError as error:  # a damaged .data that passed the completeness check
            raise FinetuneError(
                f"This run's own checkpoint {latest} cannot be read ({type(error).__name__}: "
                f"{first_line(error)}). Delete its files ({Path(latest).name}.index and .data-*) to resume from "
                "the one before, or start in a new run directory (hydra.run.dir=...).") from None
        savers.latest.recover_last_checkpoints(
            tf1.train.get_checkpoint_state(str(self.checkpoint_dir)).all_model_checkpoint_paths)
        best = tf1.train.get_checkpoint_state(str(self.best_dir))
        if savers.best is not None and best is not None:  # so that the next best replaces it
            savers.best.recover_last_checkpoints(best.all_model_checkpoint_paths)
        step = checkpoint_step(latest)
        why = (f"Resuming from {Path(latest).name} (step {step}) in {self.checkpoint_dir}: this run's own checkpoint, "
               f"written under the same config, wins over restore.checkpoint={pretrained} because it holds the "
               "trained weights and optimizer state.")
        log.info(why)
        return Start(latest, step, why, self.progress(latest))

    # --- stopping ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """While training: SIGTERM, SIGUSR1/SIGUSR2 (a cluster's warning before a time limit or preemption)
        and SIGINT ask the loop to finish its step, checkpoint and stop; the previous handlers come back
        afterwards.

        The loop's :class:`RunStopped` leaves with ``hand_over`` set when the signal had a handler of its own
        before (a launcher's: submitit requeues the job from its handler): calling it passes the signal on,
        now that the checkpoint is written. The requeued job runs in the same run directory and resumes."""
        def request_stop(signum: int, frame: Any) -> None:
            self.stop_signal = signum

        previous = {}
        for signum in STOP_SIGNALS:
            try:
                previous[signum] = signal.signal(signum, request_stop)
            except ValueError:  # not the main thread: signals cannot be caught here
                break
        try:
            yield
        except RunStopped as stopped:
            handler = previous.get(self.stop_signal)
            if callable(handler):
                stopped.hand_over = functools.partial(handler, self.stop_signal, None)
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

