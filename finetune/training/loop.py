"""The training loop: run each phase's train op to the end of the last phase with summaries,
checkpoints, progress and, with ``train.eval_every``, evaluations along the way (keeping the best
checkpoint, stopping early when they stop improving); stop cleanly when asked to."""
from __future__ import annotations

import math
import signal
import time
from typing import Optional

import numpy as np

from finetune.compat import tf, tf1
from finetune.config import TrainConfig
from finetune.errors import FinetuneError, RunStopped
from finetune.training.evaluate import EvaluationHistory, SplitResult, eval_summary, evaluate_all
from finetune.training.graph import TrainingGraph, evaluation_weights
from finetune.training.phases import format_phase_summary, phase_at, phase_summary
from finetune.training.inputs import PhaseInputs
from finetune.training.progress import make_progress
from finetune.training.run_state import RunState
from finetune.sweeps.status import read_status, update_status


def _run_step(sess: tf1.Session, graph: TrainingGraph, step: int, train_cfg: TrainConfig,
              summaries: tuple[list[tf.Tensor], tf.Tensor], writer: tf1.summary.FileWriter) -> tuple[float, float, float]:
    """One train op run, with the summaries due at ``step``; returns (loss, accuracy, seconds in the run)."""
    scalars, histograms = summaries
    index = phase_at([ops.phase for ops in graph.phases], step)
    ops = graph.phases[index]
    fetches = {"_": ops.train_op, "loss": ops.loss, "accuracy": ops.accuracy}
    if step % train_cfg.log_every == 0:
        fetches["scalars"] = scalars[index]
    if step % train_cfg.histogram_every == 0:
        fetches["histograms"] = histograms
    started = time.perf_counter()
    out = sess.run(fetches)
    seconds = time.perf_counter() - started
    for key in ("scalars", "histograms"):
        if key in out:
            writer.add_summary(out[key], step)
    return float(out["loss"]), float(out["accuracy"]), seconds


def evaluate_and_record(sess: tf1.Session, graph: TrainingGraph, step: int, top_k: int,
                        writer: tf1.summary.FileWriter, history: EvaluationHistory,
                        state: RunState) -> dict[str, SplitResult]:
    """Evaluate every held-out split with the evaluation weights; write its TensorBoard summaries at
    ``step`` and its line of metrics.jsonl; save the session as the best checkpoint when it is the best
    by ``train.keep_best`` so far."""
    _check_weights(sess, graph, step, state)  # non-finite weights would evaluate to numbers JSON cannot hold
    with evaluation_weights(sess, graph):
        results = evaluate_all(sess, graph, top_k)
    writer.add_summary(eval_summary(results), step)
    if history.add(step, results):
        state.save_best(sess, step, history.best)
    return results


def _describe(step: int, results: dict[str, SplitResult]) -> str:
    return f"step {step}: " + ", ".join(
        f"{split} accuracy {m.accuracy:.3f}, top-{m.top_k} {m.top_k_accuracy:.3f}, loss {m.loss:.3f}"
        for split, m in results.items())


def _check_weights(sess: tf1.Session, graph: TrainingGraph, step: int, state: RunState) -> None:
    """Before a checkpoint: a weight that is not a finite number stops the run, keeping the last good one."""
    if not sess.run(graph.weights_finite):
        raise FinetuneError(
            f"A weight became NaN or infinite by step {step}; the run stopped there without saving it and kept its "
            f"last good checkpoint ({state.latest() or 'none yet'}). Likely causes: a learning rate too high "
            "(optimizer.learning_rate, or a phase's) or no gradient clipping (optimizer.clip_gradient_norm).")


def _progress(recent: list[tuple[float, float]], history: EvaluationHistory) -> dict:
    """What a checkpoint keeps beside it for an exact resume."""
    return {"recent": [list(pair) for pair in recent], **history.state()}


def train(sess: tf1.Session, graph: TrainingGraph, train_cfg: TrainConfig, batch_size: int,
          writer: tf1.summary.FileWriter, state: RunState, summaries: tuple[list[tf.Tensor], tf.Tensor],
          history: EvaluationHistory, inputs: PhaseInputs, progress_saved: Optional[dict] = None,
          steps_per_epoch: Optional[int] = None) -> tuple[dict, dict]:
    """Run the phases' train ops to the end of the last phase, with summaries, checkpoints and progress.

    A checkpoint is written every ``train.checkpoint_every`` steps and at the end of each phase, with
    its progress (``progress_saved`` is that of the checkpoint resumed from). With ``train.eval_every``
    set, every held-out split is evaluated every that many steps and at the last step (recorded in
    ``history``), the best checkpoint kept (``train.keep_best``) and the run stopped, with a checkpoint,
    once ``train.early_stopping`` says so. A stop requested by a signal (``state.stop_signal``) ends the
    step under way, writes a checkpoint and raises :class:`RunStopped`; a loss or weight that is not a
    finite number stops the run without a checkpoint, keeping the last good one.

    Returns (the mean training loss and accuracy of the last ``log_every`` steps, dropout on, those of
    earlier processes of the run included, or None when none was trained; the timings: images per second
    in the train op, seconds spent in it, the steps this process trained, and the wall-clock images per
    second of each whole epoch of ``steps_per_epoch`` steps this process trained, everything in between
    included: input pipeline, feature cache, evaluations and checkpoints).
    """
    step = int(sess.run(graph.global_step))
    phases = [ops.phase for ops in graph.phases]
    end = phases[-1].end
    recent: list[tuple[float, float]] = [tuple(pair) for pair in (progress_saved or {}).get("recent", [])]
    train_seconds, trained_steps = 0.0, 0
    progress = make_progress(end, step, train_cfg.log_every, batch_size)
    epochs = EpochClock(steps_per_epoch, batch_size)
    try:
        while step < end and not history.stopped:
            index = phase_at(phases, step)
            ops = graph.phases[index]
            if step == ops.phase.start or not trained_steps:  # a phase starts, or this process does
                progress.write(format_phase_summary(phase_summary(ops, graph.model_variables)))
                inputs.start(sess, index, step)
            loss, accuracy, seconds = _run_step(sess, graph, step, train_cfg, summaries, writer)
            if not math.isfinite(loss):
                raise FinetuneError(
                    f"The training loss became {loss} at step {step + 1}; the run stopped there and kept its last good "
                    f"checkpoint ({state.latest() or 'none yet'}). Likely causes: a learning rate too high "
                    "(optimizer.learning_rate, or a phase's), inputs not in the range the backbone expects, or a "
                    "batch too small for BatchNorm in training mode (data.batch_size, backbone BatchNorm 'train').")
            train_seconds += seconds
            trained_steps += 1
            step += 1
            recent = (recent + [(loss, accuracy)])[-train_cfg.log_every:]
            progress.step(step, loss, accuracy, seconds)
            epochs.step()
            # Evaluate before checkpointing, so that the checkpoint's progress includes this evaluation.
            if train_cfg.eval_every and (step % train_cfg.eval_every == 0 or step == end):
                progress.write(_describe(step, evaluate_and_record(sess, graph, step, train_cfg.top_k, writer,
                                                                   history, state)))
            saved = None
            if (step % train_cfg.checkpoint_every == 0 or step in {phase.end for phase in phases}
                    or history.stopped or state.stop_signal is not None):
                _check_weights(sess, graph, step, state)
                saved = state.save(sess, step, _progress(recent, history))
                if read_status(state.run_dir) is not None:  # started by the command line: say how far it got
                    update_status(state.run_dir, "running", step=step)
            if state.stop_signal is not None:
                raise RunStopped(signal.Signals(state.stop_signal).name, step, saved)
    finally:
        progress.close()
    losses, accuracies = zip(*recent) if recent else ((None,), (None,))
    metrics = {"loss": None if not recent else float(np.mean(losses)),
               "accuracy": None if not recent else float(np.mean(accuracies))}
    timings = {"images_per_second": trained_steps * batch_size / train_seconds if train_seconds else None,
               "train_op_seconds": train_seconds, "steps_this_process": trained_steps,
               "epoch_images_per_second": epochs.rates}
    return metrics, timings


class EpochClock:
    """Wall-clock images per second of each whole epoch (``steps_per_epoch`` steps) a process trains."""

    def __init__(self, steps_per_epoch: Optional[int], batch_size: int) -> None:
        self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
        self.started, self.steps = time.perf_counter(), 0
        self.rates: list[float] = []

    def step(self) -> None:
        self.steps += 1
        if self.steps_per_epoch and self.steps == self.steps_per_epoch:
            now = time.perf_counter()
            self.rates.append(self.steps * self.batch_size / (now - self.started))
            self.started, self.steps = now, 0
