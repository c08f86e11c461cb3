"""The training loop: run each phase's train op up to ``train.steps`` with summaries, checkpoints,
progress and, with ``train.eval_every``, evaluations along the way; stop cleanly when asked to."""
from __future__ import annotations

import math
import signal
import time

import numpy as np

from finetune.compat import tf, tf1
from finetune.config import TrainConfig
from finetune.errors import FinetuneError, RunStopped
from finetune.training.evaluate import eval_summary, evaluate_all
from finetune.training.graph import TrainingGraph
from finetune.training.phases import PhaseOps, phase_at
from finetune.training.progress import BarProgress, LogProgress, make_progress
from finetune.training.run_state import RunState


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


def _evaluate_now(sess: tf1.Session, graph: TrainingGraph, step: int, writer: tf1.summary.FileWriter,
                  progress: LogProgress | BarProgress) -> None:
    """Every held-out split, as TensorBoard scalars at ``step`` (so val and test are both curves) and one line."""
    results = evaluate_all(sess, graph)
    writer.add_summary(eval_summary(results), step)
    progress.write(f"step {step}: " + ", ".join(
        f"{split} accuracy {m['accuracy']:.3f}, loss {m['loss']:.3f}" for split, m in results.items()))


def describe_phase(graph: TrainingGraph, ops: PhaseOps) -> str:
    """One line on what a phase trains and how, logged when it starts."""
    phase = ops.phase
    parameters = sum(int(np.prod(graph.model_variables[name].shape.as_list())) for name in ops.trained)
    return (f"Phase {phase.name!r} (steps {phase.start + 1}-{phase.end}): trains {len(ops.trained)} variables "
            f"({parameters:,} parameters) matching {list(phase.var_list)}; {phase.optimizer}, learning rate "
            f"{phase.learning_rate:g} ({phase.decay}); backbone BatchNorm {phase.batch_norm}.")


def train(sess: tf1.Session, graph: TrainingGraph, train_cfg: TrainConfig, batch_size: int,
          writer: tf1.summary.FileWriter, state: RunState,
          summaries: tuple[list[tf.Tensor], tf.Tensor]) -> tuple[dict, dict]:
    """Run the phases' train ops up to ``train_cfg.steps``, with summaries, checkpoints and progress.

    A checkpoint is written every ``train.checkpoint_every`` steps and at the end of each phase. With
    ``train.eval_every`` set, every held-out split is evaluated every that many steps (the last
    evaluation, at the final step, is the caller's). A stop requested by a signal (``state.stop_signal``)
    ends the step under way, writes a checkpoint and raises :class:`RunStopped`; a loss that is not a
    finite number stops the run without a checkpoint, keeping the last good one.

    Returns (the mean training loss and accuracy of the last steps, dropout on, or None when this call
    trained nothing; the timings: images per second and seconds spent in the train op).
    """
    step = int(sess.run(graph.global_step))
    phases = [ops.phase for ops in graph.phases]
    recent: list[tuple[float, float]] = []
    train_seconds, trained_steps = 0.0, 0
    progress = make_progress(train_cfg.steps, step, train_cfg.log_every, batch_size)
    try:
        while step < train_cfg.steps:
            ops = graph.phases[phase_at(phases, step)]
            if step == ops.phase.start or not trained_steps:
                progress.write(describe_phase(graph, ops))
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
            if step % train_cfg.checkpoint_every == 0 or step in {phase.end for phase in phases}:
                state.save(sess, step)
            if state.stop_signal is not None:
                raise RunStopped(signal.Signals(state.stop_signal).name, step, state.save(sess, step))
            if train_cfg.eval_every and step % train_cfg.eval_every == 0 and step < train_cfg.steps:
                _evaluate_now(sess, graph, step, writer, progress)
    finally:
        progress.close()
    losses, accuracies = zip(*recent) if recent else ((None,), (None,))
    metrics = {"loss": None if not recent else float(np.mean(losses)),
               "accuracy": None if not recent else float(np.mean(accuracies))}
    timings = {"images_per_second": trained_steps * batch_size / train_seconds if train_seconds else None,
               "train_op_seconds": train_seconds, "steps_this_process": trained_steps}
    return metrics, timings
