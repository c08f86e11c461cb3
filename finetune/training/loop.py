"""The training graph (towers, loss, optimizer over var_list only, summaries) and the loop.

The loop reads batches from tf.data iterators inside the graph: nothing is fed from Python while
training. Evaluation runs the eval tower over one pass of a split through a reinitialisable iterator.
Progress is a tqdm bar on a terminal and one log line every ``train.log_every`` steps otherwise
(a log file on a cluster), where a bar's redraws would pile up into one enormous line.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from tqdm import tqdm

from finetune.compat import tf, tf1
from finetune.config import BackboneConfig, DataConfig, HeadConfig, OptimizerConfig, TrainConfig
from finetune.data.image_folder import ImageFolder, make_dataset
from finetune.errors import FinetuneError
from finetune.model.towers import Tower, build_export_tower, build_tower, variables_read_by
from finetune.selection import select
from finetune.validate import DECAYS as DECAY_NAMES
from finetune.validate import OPTIMIZERS as OPTIMIZER_NAMES
from finetune.validate import implementations

log = logging.getLogger(__name__)

OPTIMIZERS = implementations(OPTIMIZER_NAMES, {
    "sgd": lambda lr, cfg: tf1.train.GradientDescentOptimizer(lr),
    "momentum": lambda lr, cfg: tf1.train.MomentumOptimizer(lr, cfg.momentum),
    "adam": lambda lr, cfg: tf1.train.AdamOptimizer(lr),
    "rmsprop": lambda lr, cfg: tf1.train.RMSPropOptimizer(lr, momentum=cfg.momentum),
}, "optimizer.name")
# Learning rate at the global step; cosine decays to zero over train.steps.
DECAYS = implementations(DECAY_NAMES, {
    "constant": lambda cfg, step, steps: tf.constant(cfg.learning_rate, name="learning_rate"),
    "cosine": lambda cfg, step, steps: tf1.train.cosine_decay(cfg.learning_rate, step, max(steps, 1)),
}, "optimizer.decay")


@dataclass
class TrainingGraph:
    export: Tower
    train: Tower
    eval: Tower
    labels: tf.Tensor
    eval_labels: tf.Tensor
    loss: tf.Tensor  # cross-entropy of the training batch
    accuracy: tf.Tensor
    learning_rate: tf.Tensor
    global_step: tf.Variable
    train_op: tf.Operation
    eval_initializers: dict[str, tf.Operation]  # split -> iterator initializer
    trained: list[str]  # variable names in the optimizer's var_list
    model_variables: dict[str, tf.Variable]  # every variable the outputs or the train op read


def _trainable_selection(optimizer_cfg: OptimizerConfig, loss: tf.Tensor) -> list[tf.Variable]:
    """The trainable variables ``optimizer.var_list`` selects, among those the loss depends on: TF-Slim
    builds the whole backbone, and its layers above the cut get no gradient, so they are not trained."""
    read = variables_read_by([loss])
    trainable = [v for v in tf1.trainable_variables() if v.op.name in read]
    names = select([v.op.name for v in trainable], optimizer_cfg.var_list, key="optimizer.var_list")
    if not names:
        scopes = sorted({v.op.name.split("/")[0] + "/" for v in trainable})
        raise FinetuneError(
            f"Config key 'optimizer.var_list' ({list(optimizer_cfg.var_list)}) selects no trainable variable "
            f"the loss depends on (layers above backbone.cut do not count). Top-level scopes with such variables: "
            f"{scopes}. Patterns match the start of variable names."
        )
    chosen = set(names)
    return [v for v in trainable if v.op.name in chosen]


def _regularization_for(var_list: list[tf.Variable]) -> list[tf.Tensor]:
    """Weight-decay terms of the trained variables only: terms on frozen weights are constants."""
    trained = {v.op.name for v in var_list}
    return [loss for loss in tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES)
            if variables_read_by([loss]) & trained]


def build_training_graph(data: ImageFolder, backbone_cfg: BackboneConfig, head_cfg: HeadConfig, data_cfg: DataConfig,
                         optimizer_cfg: OptimizerConfig, train_cfg: TrainConfig) -> TrainingGraph:
    """Build every tower, the loss and the train op in the default graph."""
    num_classes = len(data.class_names)
    size = backbone_cfg.image_size
    export = build_export_tower(backbone_cfg, head_cfg, num_classes)

    train_data = make_dataset(data.files["train"], size, data_cfg.batch_size, True, data_cfg, train_cfg.seed)
    pixels, labels = tf1.data.make_one_shot_iterator(train_data).get_next()
    with tf.name_scope("train"):
        train = build_tower(pixels, backbone_cfg, head_cfg, num_classes, is_training=True)
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, train.logits)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(train.logits, 1), labels), tf.float32))

    eval_sets = {split: make_dataset(files, size, data_cfg.eval_batch_size, False, data_cfg, train_cfg.seed)
                 for split, files in data.files.items() if files and split != "train"}
    first = next(iter(eval_sets.values()))  # val always exists (checked when scanning the folder)
    iterator = tf1.data.Iterator.from_structure(tf1.data.get_output_types(first), tf1.data.get_output_shapes(first))
    eval_pixels, eval_labels = iterator.get_next()
    with tf.name_scope("eval"):
        evaluation = build_tower(eval_pixels, backbone_cfg, head_cfg, num_classes, is_training=False)

    global_step = tf1.train.get_or_create_global_step()
    with tf.name_scope("optimizer"):
        var_list = _trainable_selection(optimizer_cfg, loss)
        learning_rate = DECAYS[optimizer_cfg.decay](optimizer_cfg, global_step, train_cfg.steps)
        total_loss = tf.add_n([loss] + _regularization_for(var_list), name="total_loss")
        # BatchNorm moving averages of the training tower only (eval and export towers make none).
        update_ops = [op for op in tf1.get_collection(tf1.GraphKeys.UPDATE_OPS) if op.name.startswith("train/")]
        with tf.control_dependencies(update_ops):
            train_op = OPTIMIZERS[optimizer_cfg.name](learning_rate, optimizer_cfg).minimize(total_loss, global_step, var_list)

    read = variables_read_by([train_op, export.logits, evaluation.logits])
    model_variables = {v.op.name: v for v in tf1.global_variables() if v.op.name in read}
    return TrainingGraph(
        export=export, train=train, eval=evaluation, labels=labels, eval_labels=eval_labels, loss=loss,
        accuracy=accuracy, learning_rate=learning_rate, global_step=global_step, train_op=train_op,
        eval_initializers={split: iterator.make_initializer(ds) for split, ds in eval_sets.items()},
        trained=[v.op.name for v in var_list], model_variables=model_variables,
    )


def build_summaries(graph: TrainingGraph, restored: list[str]) -> tuple[tf.Tensor, tf.Tensor]:
    """(scalar summaries, histogram summaries). Histograms: every trained variable and a few restored,
    untrained backbone weights, whose histograms must stay flat over time when the backbone is frozen.

    Each histogram's tag is its variable's name. ``tf.summary.histogram`` would take the tag from a
    fresh op name, which collides with the variable's own op and comes out as ``NAME_1``.
    """
    scalars = tf1.summary.merge([
        tf1.summary.scalar("train/loss", graph.loss),
        tf1.summary.scalar("train/accuracy", graph.accuracy),
        tf1.summary.scalar("train/learning_rate", graph.learning_rate),
    ])
    frozen_weights = [name for name in restored if name not in set(graph.trained) and name.endswith("weights")]
    watched = graph.trained + frozen_weights[:: max(1, len(frozen_weights) // 3)][:3]
    with tf.name_scope("histograms"):
        histograms = tf1.summary.merge([
            tf.raw_ops.HistogramSummary(tag=name, values=graph.model_variables[name], name=name)
            for name in watched if name in graph.model_variables
        ])
    return scalars, histograms


def evaluate(sess: tf1.Session, graph: TrainingGraph, split: str) -> dict[str, float]:
    """Loss and accuracy of the eval tower over one pass of ``split``."""
    sess.run(graph.eval_initializers[split])
    total_loss, correct, count = 0.0, 0, 0
    while True:
        try:
            logits, labels = sess.run([graph.eval.logits, graph.eval_labels])
        except tf.errors.OutOfRangeError:
            break
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        total_loss -= float(log_probs[np.arange(len(labels)), labels].sum())
        correct += int((logits.argmax(axis=1) == labels).sum())
        count += len(labels)
    return {"loss": total_loss / count, "accuracy": correct / count, "images": count}


def scalar_summary(values: dict[str, float]) -> tf1.Summary:
    return tf1.Summary(value=[tf1.Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])


class LogProgress:
    """Progress as one log line every ``every`` steps, for output that is not a terminal: step/total,
    mean loss and accuracy since the last line, images per second of the training steps themselves
    (as in metrics.json) and the time left at the pace so far (evaluations and checkpoints included)."""

    def __init__(self, total: int, initial: int, every: int, batch_size: int) -> None:
        self.total, self.every, self.batch_size = total, max(1, every), batch_size
        self.started, self.first_step = time.perf_counter(), initial
        self.since_line: list[tuple[float, float, float]] = []  # loss, accuracy, seconds of each step

    def step(self, step: int, loss: float, accuracy: float, seconds: float) -> None:
        self.since_line.append((loss, accuracy, seconds))
        if step % self.every and step != self.total:
            return
        losses, accuracies, durations = zip(*self.since_line)
        elapsed = time.perf_counter() - self.started
        remaining = (self.total - step) * elapsed / max(step - self.first_step, 1)
        log.info("step %d/%d: loss %.3f, accuracy %.3f, %.0f images/s, ETA %s", step, self.total, np.mean(losses),
                 np.mean(accuracies), len(durations) * self.batch_size / max(sum(durations), 1e-9),
                 tqdm.format_interval(remaining))
        self.since_line = []

    def write(self, message: str) -> None:
        log.info(message)

    def close(self) -> None:
        pass


class BarProgress:
    """Progress as a tqdm bar, for a terminal."""

    def __init__(self, total: int, initial: int) -> None:
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def step(self, step: int, loss: float, accuracy: float, seconds: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.2f}")

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()


def make_progress(total: int, initial: int, every: int, batch_size: int,
                  terminal: Optional[bool] = None) -> LogProgress | BarProgress:
    """A bar when stderr is a terminal (or ``terminal`` says so), else log lines every ``every`` steps."""
    if terminal is None:
        terminal = sys.stderr.isatty()
    return BarProgress(total, initial) if terminal else LogProgress(total, initial, every, batch_size)


def evaluate_all(sess: tf1.Session, graph: TrainingGraph) -> dict[str, dict[str, float]]:
    """:func:`evaluate` on every held-out split (val, and test when the data has one)."""
    return {split: evaluate(sess, graph, split) for split in graph.eval_initializers}


def eval_summary(results: dict[str, dict[str, float]]) -> tf1.Summary:
    """``SPLIT/loss`` and ``SPLIT/accuracy`` of every evaluated split."""
    return scalar_summary({f"{split}/{key}": metrics[key] for split, metrics in results.items()
                           for key in ("loss", "accuracy")})


def _run_step(sess: tf1.Session, graph: TrainingGraph, step: int, train_cfg: TrainConfig,
              summaries: tuple[tf.Tensor, tf.Tensor], writer: tf1.summary.FileWriter) -> tuple[float, float, float]:
    """One train op run, with the summaries due at ``step``; returns (loss, accuracy, seconds in the run)."""
    scalars, histograms = summaries
    fetches = {"_": graph.train_op, "loss": graph.loss, "accuracy": graph.accuracy}
    if step % train_cfg.log_every == 0:
        fetches["scalars"] = scalars
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
          summaries: tuple[tf.Tensor, tf.Tensor]) -> dict[str, float]:
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
            if step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps:
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
