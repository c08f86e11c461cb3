"""The listeners of a training run (:class:`finetune.training.loop.Listener`): each does one thing at the
loop's fixed moments. :func:`standard_listeners` lists them in the order the pipeline uses:

- :class:`NanGuard`: a loss that is not a finite number stops the run (its last good checkpoint kept);
- :class:`PhaseInputs` (:mod:`finetune.training.phase_inputs`): starts each phase's input;
- :class:`Summaries`: TensorBoard scalars and histograms of training steps, and of each evaluation;
- :class:`Progress`: the phase block, the bar or log lines, each evaluation's line;
- :class:`TrainingWindow`: the last ``train.log_every`` steps' loss and accuracy (metrics.json's ``train``);
- :class:`Timings`: images per second, in the train op and per whole epoch;
- :class:`EvaluationSchedule`: asks for an evaluation as ``train.eval_every`` says (each epoch, every N
  steps) and at the end;
- :class:`KeepBest`: records each evaluation (metrics.jsonl), saves the best checkpoint, and asks to stop
  when early stopping says so;
- :class:`CheckpointSchedule`: asks for a checkpoint every ``train.checkpoint_every`` steps and at the end
  of each phase;
- :class:`StopOnSignal`: a stop signal received (SIGTERM, SIGUSR1/2, SIGINT) asks the loop to stop with
  a checkpoint.

The run's status.json (:class:`finetune.sweeps.status.StatusListener`) is added by the command line.
"""
from __future__ import annotations

import math
import signal
import time
from typing import Any, Optional

import numpy as np

from finetune.compat import tf1
from finetune.config import TrainConfig
from finetune.errors import ResumableError
from finetune.training.evaluate import EvaluationHistory, SplitResult, eval_summary
from finetune.training.loop import Listener, Loop, StepResult
from finetune.training.optimizers import phase_summary
from finetune.training.phase_inputs import PhaseInputs
from finetune.training.phases import evaluates_at, format_phase_summary
from finetune.training.progress import make_progress
from finetune.training.run_state import RunState
from finetune.training.training_graph import Summaries as SummaryOps


class NanGuard(Listener):
    """A training loss that is not a finite number stops the run before anything else sees the step."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def step_ended(self, loop: Loop, result: StepResult) -> None:
        if not math.isfinite(result.loss):
            raise ResumableError(
                f"The training loss became {result.loss} at step {result.step}; the run stopped there and kept its "
                f"last good checkpoint ({self.state.latest() or 'none yet'}). Likely causes: a learning rate too high "
                "(optimizer.learning_rate, or a phase's), inputs not in the range the backbone expects, or a "
                "batch too small for BatchNorm in training mode (data.batch_size, backbone BatchNorm 'train').")


class StartInputs(Listener):
    """Readies each phase's input (images, or the cached features) as the phase starts."""

    def __init__(self, inputs: PhaseInputs) -> None:
        self.inputs = inputs

    def phase_started(self, loop: Loop, phase: int, step: int) -> None:
        self.inputs.start(loop.sess, phase, step)


class Summaries(Listener):
    """TensorBoard: each phase's scalars every ``train.log_every`` steps, the histograms every
    ``train.histogram_every``, and each evaluation's scalars and confusion images."""

    def __init__(self, ops: SummaryOps, writer: tf1.summary.FileWriter, train_cfg: TrainConfig,
                 class_names: Optional[list[str]] = None) -> None:
        self.ops, self.writer, self.class_names = ops, writer, class_names
        # Read once: asked every step, and a config node's attributes are slow.
        self.log_every, self.histogram_every = int(train_cfg.log_every), int(train_cfg.histogram_every)

    def fetches(self, loop: Loop, step: int, phase: int) -> dict[str, Any]:
        wanted = {}
        if step % self.log_every == 0:
            wanted["scalars"] = self.ops.scalars[phase]
        if step % self.histogram_every == 0:
            wanted["histograms"] = self.ops.histograms
        return wanted

    def step_ended(self, loop: Loop, result: StepResult) -> None:
        for key in ("scalars", "histograms"):
            if key in result.fetched:
                self.writer.add_summary(result.fetched[key], result.step - 1)

    def evaluated(self, loop: Loop, step: int, results: dict[str, SplitResult]) -> None:
        self.writer.add_summary(eval_summary(results, self.class_names), step)


def describe_evaluation(step: int, results: dict[str, SplitResult]) -> str:
    return f"step {step}: " + ", ".join(
        f"{split} accuracy {m.accuracy:.3f}, top-{m.top_k} {m.top_k_accuracy:.3f}, loss {m.loss:.3f}"
        for split, m in results.items())


class Progress(Listener):
    """The phase block when a phase starts, a bar (terminal) or log lines, and a line per evaluation."""

    def __init__(self, train_cfg: TrainConfig, batch_size: int) -> None:
        self.train_cfg, self.batch_size = train_cfg, batch_size
        self.progress: Any = None

    def phase_started(self, loop: Loop, phase: int, step: int) -> None:
        if self.progress is None:
            self.progress = make_progress(loop.end, loop.step, self.train_cfg.log_every, self.batch_size)
        ops = loop.model.phases[phase]
        self.progress.write(format_phase_summary(phase_summary(ops, loop.model.model_variables)))

    def step_ended(self, loop: Loop, result: StepResult) -> None:
        self.progress.step(result.step, result.loss, result.accuracy, result.seconds)

    def evaluated(self, loop: Loop, step: int, results: dict[str, SplitResult]) -> None:
        if self.progress is not None:  # during training: the end-of-run table shows the final evaluation
            self.progress.write(describe_evaluation(step, results))

    def closed(self, loop: Loop) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None


class TrainingWindow(Listener):
    """The loss and accuracy of the last ``train.log_every`` steps (dropout on), earlier processes of the
    run included: metrics.json's ``train`` section. Kept beside each checkpoint as ``recent``."""

    def __init__(self, train_cfg: TrainConfig, progress_saved: Optional[dict] = None) -> None:
        self.size = train_cfg.log_every
        self.recent: list[tuple[float, float]] = [tuple(pair) for pair in (progress_saved or {}).get("recent", [])]

    def step_ended(self, loop: Loop, result: StepResult) -> None:
        self.recent = (self.recent + [(result.loss, result.accuracy)])[-self.size:]

    def progress_state(self) -> dict[str, Any]:
        return {"recent": [list(pair) for pair in self.recent]}

    def metrics(self) -> dict[str, Any]:
        """The window's mean loss and accuracy, and how many steps it holds (``last_steps``: the end-of-run
        table's label); None when nothing was trained (a finished run's rerun)."""
        if not self.recent:
            return {"loss": None, "accuracy": None, "last_steps": 0}
        losses, accuracies = zip(*self.recent)
        return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accuracies)), "last_steps": len(self.recent)}


class Timings(Listener):
    """What this process measured: images per second in the train op, the seconds spent in it, the steps
    it trained, and the wall-clock images per second of each whole epoch of ``steps_per_epoch`` steps it
    trained (input pipeline, feature cache, evaluations and checkpoints included)."""

    def __init__(self, batch_size: int, steps_per_epoch: Optional[int]) -> None:
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.train_seconds, self.steps = 0.0, 0
        self.epoch_started, self.epoch_steps = time.perf_counter(), 0
        self.epoch_rates: list[float] = []

    def step_ended(self, loop: Loop, result: StepResult) -> None:
        self.train_seconds += result.seconds
        self.steps += 1
        self.epoch_steps += 1
        if self.steps_per_epoch and self.epoch_steps == self.steps_per_epoch:
            now = time.perf_counter()
            self.epoch_rates.append(self.epoch_steps * self.batch_size / (now - self.epoch_started))
            self.epoch_started, self.epoch_steps = now, 0

    def timings(self) -> dict[str, Any]:
        return {"images_per_second": self.steps * self.batch_size / self.train_seconds if self.train_seconds else None,
                "train_op_seconds": self.train_seconds, "steps_this_process": self.steps,
                "epoch_images_per_second": self.epoch_rates}


class EvaluationSchedule(Listener):
    """Asks for an evaluation where ``train.eval_every`` says (each epoch of ``training_images`` in batches
    of ``batch_size``, or every N steps) and at the last step; none when it is null."""

    def __init__(self, eval_every: Any, training_images: int, batch_size: int) -> None:
        self.eval_every, self.training_images, self.batch_size = eval_every, training_images, batch_size

    def step_ended(self, loop: Loop, result: StepResult) -> None:
        if self.eval_every is None:
            return
        if result.step == loop.end or evaluates_at(result.step, self.eval_every, self.training_images, self.batch_size):
            loop.request_evaluation()


class KeepBest(Listener):
    """Records each evaluation in the run's history (metrics.jsonl), saves the best checkpoint by
    ``train.keep_best``, and asks the loop to stop when ``train.early_stopping`` says so."""

    def __init__(self, history: EvaluationHistory, state: RunState) -> None:
        self.history, self.state = history, state

    def evaluated(self, loop: Loop, step: int, results: dict[str, SplitResult]) -> None:
        if self.history.add(step, results):
            self.state.save_best(loop.sess, step, self.history.best)
        if self.history.stopped:
            loop.request_stop("early stopping")

    def progress_state(self) -> dict[str, Any]:
        return self.history.state()


class CheckpointSchedule(Listener):
    """Asks for a checkpoint every ``train.checkpoint_every`` steps and at the end of each phase."""

    def __init__(self, checkpoint_every: int) -> None:
        self.checkpoint_every = checkpoint_every

    def step_ended(self, loop: Loop, result: StepResult) -> None:
        if result.step % self.checkpoint_every == 0 or result.step in loop.phase_ends:
            loop.request_checkpoint()


class StopOnSignal(Listener):
    """A stop signal caught by :meth:`RunState.stop_on_signals` ends the run after the step under way, with a
    checkpoint (then :class:`~finetune.errors.RunStopped`: the same command resumes)."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def step_ended(self, loop: Loop, result: StepResult) -> None:
        if self.state.stop_signal is not None:
            loop.request_stop("signal", signal=signal.Signals(self.state.stop_signal).name)
