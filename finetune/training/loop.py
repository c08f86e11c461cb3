"""The training loop: run the train op up to ``train.steps`` with summaries, checkpoints, progress
and, with ``train.eval_every``, evaluations along the way."""
from __future__ import annotations

import time

import numpy as np

from finetune.compat import tf, tf1
from finetune.config import TrainConfig
from finetune.training.evaluate import eval_summary, evaluate_all
from finetune.training.graph import TrainingGraph
from finetune.training.phases import phase_at
from finetune.training.progress import BarProgress, LogProgress, make_progress


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


def train(sess: tf1.Session, graph: TrainingGraph, train_cfg: TrainConfig, batch_size: int,
          writer: tf1.summary.FileWriter, saver: tf1.train.Saver, checkpoint_prefix: str,
          summaries: tuple[list[tf.Tensor], tf.Tensor]) -> dict[str, float]:
    """Run the train op up to ``train_cfg.steps``, with summaries, checkpoints and progress reports.

    With ``train.eval_every`` set, every held-out split is evaluated every that many steps (the
    last evaluation, at the final step, is the caller's). Returns the mean training loss/accuracy
    of the last steps (dropout on) and images per second.
    """
    step = int(sess.run(graph.global_step))
    recent: list[tuple[float, float]] = []
    train_seconds, trained_steps = 0.0, 0
    progress = make_progress(train_cfg.steps, step, train_cfg.log_every, batch_size)
    try:
        while step < train_cfg.steps:
            loss, accuracy, seconds = _run_step(sess, graph, step, train_cfg, summaries, writer)
            train_seconds += seconds
            trained_steps += 1
            step += 1
            recent = (recent + [(loss, accuracy)])[-train_cfg.log_every:]
            progress.step(step, loss, accuracy, seconds)
            phase_ended = any(step == ops.phase.end for ops in graph.phases)
            if step % train_cfg.checkpoint_every == 0 or phase_ended:  # the last phase ends the run
                saver.save(sess, checkpoint_prefix, global_step=step)
            if train_cfg.eval_every and step % train_cfg.eval_every == 0 and step < train_cfg.steps:
                _evaluate_now(sess, graph, step, writer, progress)
    finally:
        progress.close()
    losses, accuracies = zip(*recent) if recent else ((float("nan"),), (float("nan"),))
    return {
        "loss": float(np.mean(losses)),
        "accuracy": float(np.mean(accuracies)),
        "images_per_second": trained_steps * batch_size / train_seconds if train_seconds else 0.0,
        "steps": step,
    }
