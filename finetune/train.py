"""The training graph (towers, loss, optimizer over var_list only, summaries) and the loop.

The loop reads batches from tf.data iterators inside the graph: nothing is fed from Python while
training. Evaluation runs the eval tower over one pass of a split through a reinitialisable iterator.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from finetune.compat import tf, tf1
from finetune.config import BackboneConfig, DataConfig, HeadConfig, OptimizerConfig, TrainConfig
from finetune.data import ImageFolder, make_dataset
from finetune.errors import FinetuneError
from finetune.model import Tower, build_export_tower, build_tower, variables_read_by
from finetune.selection import select

log = logging.getLogger(__name__)

OPTIMIZERS = {
    "sgd": lambda lr, cfg: tf1.train.GradientDescentOptimizer(lr),
    "momentum": lambda lr, cfg: tf1.train.MomentumOptimizer(lr, cfg.momentum),
    "adam": lambda lr, cfg: tf1.train.AdamOptimizer(lr),
    "rmsprop": lambda lr, cfg: tf1.train.RMSPropOptimizer(lr, momentum=cfg.momentum),
}


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


def _learning_rate(optimizer_cfg: OptimizerConfig, global_step: tf.Variable, steps: int) -> tf.Tensor:
    if optimizer_cfg.decay == "cosine":
        return tf1.train.cosine_decay(optimizer_cfg.learning_rate, global_step, max(steps, 1))
    if optimizer_cfg.decay == "constant":
        return tf.constant(optimizer_cfg.learning_rate, name="learning_rate")
    raise FinetuneError(f"Config key 'optimizer.decay' is {optimizer_cfg.decay!r}; use constant or cosine.")


def _make_optimizer(optimizer_cfg: OptimizerConfig, learning_rate: tf.Tensor) -> tf1.train.Optimizer:
    try:
        return OPTIMIZERS[optimizer_cfg.name](learning_rate, optimizer_cfg)
    except KeyError:
        raise FinetuneError(
            f"Config key 'optimizer.name' is {optimizer_cfg.name!r}; valid optimizers: {sorted(OPTIMIZERS)}."
        ) from None


def _trainable_selection(optimizer_cfg: OptimizerConfig) -> list[tf.Variable]:
    trainable = tf1.trainable_variables()
    names = select([v.op.name for v in trainable], optimizer_cfg.var_list, key="optimizer.var_list")
    if not names:
        scopes = sorted({v.op.name.split("/")[0] + "/" for v in trainable})
        raise FinetuneError(
            f"Config key 'optimizer.var_list' ({list(optimizer_cfg.var_list)}) selects no trainable variable. "
            f"Top-level scopes with trainable variables: {scopes}. Patterns match the start of variable names."
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
        var_list = _trainable_selection(optimizer_cfg)
        learning_rate = _learning_rate(optimizer_cfg, global_step, train_cfg.steps)
        total_loss = tf.add_n([loss] + _regularization_for(var_list), name="total_loss")
        # BatchNorm moving averages of the training tower only (eval and export towers make none).
        update_ops = [op for op in tf1.get_collection(tf1.GraphKeys.UPDATE_OPS) if op.name.startswith("train/")]
        with tf.control_dependencies(update_ops):
            train_op = _make_optimizer(optimizer_cfg, learning_rate).minimize(total_loss, global_step, var_list)

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
    untrained backbone weights, whose histograms must stay flat over time when the backbone is frozen."""
    scalars = tf1.summary.merge([
        tf1.summary.scalar("train/loss", graph.loss),
        tf1.summary.scalar("train/accuracy", graph.accuracy),
        tf1.summary.scalar("train/learning_rate", graph.learning_rate),
    ])
    frozen_weights = [name for name in restored if name not in set(graph.trained) and name.endswith("weights")]
    watched = graph.trained + frozen_weights[:: max(1, len(frozen_weights) // 3)][:3]
    histograms = tf1.summary.merge(
        [tf1.summary.histogram(name, graph.model_variables[name]) for name in watched if name in graph.model_variables]
    )
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


def train(sess: tf1.Session, graph: TrainingGraph, train_cfg: TrainConfig, batch_size: int,
          writer: tf1.summary.FileWriter, saver: tf1.train.Saver, checkpoint_prefix: str,
          summaries: tuple[tf.Tensor, tf.Tensor]) -> dict[str, float]:
    """Run the train op up to ``train_cfg.steps``, with summaries, checkpoints and a progress bar.

    Returns the mean training loss/accuracy of the last steps (dropout on) and images per second.
    """
    scalars, histograms = summaries
    step = int(sess.run(graph.global_step))
    recent: list[tuple[float, float]] = []
    train_seconds, trained_steps = 0.0, 0
    with tqdm(total=train_cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True) as progress:
        while step < train_cfg.steps:
            fetches = {"_": graph.train_op, "loss": graph.loss, "accuracy": graph.accuracy}
            if step % train_cfg.log_every == 0:
                fetches["scalars"] = scalars
            if step % train_cfg.histogram_every == 0:
                fetches["histograms"] = histograms
            started = time.perf_counter()
            out = sess.run(fetches)
            train_seconds += time.perf_counter() - started
            trained_steps += 1
            for key in ("scalars", "histograms"):
                if key in out:
                    writer.add_summary(out[key], step)
            step += 1
            recent = (recent + [(out["loss"], out["accuracy"])])[-train_cfg.log_every:]
            progress.update(1)
            progress.set_postfix(loss=f"{out['loss']:.3f}", acc=f"{out['accuracy']:.2f}")
            if step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps:
                saver.save(sess, checkpoint_prefix, global_step=step)
            if train_cfg.eval_every and step % train_cfg.eval_every == 0 and step < train_cfg.steps:
                val = evaluate(sess, graph, "val")
                writer.add_summary(scalar_summary({"val/loss": val["loss"], "val/accuracy": val["accuracy"]}), step)
                progress.write(f"step {step}: val accuracy {val['accuracy']:.3f}, loss {val['loss']:.3f}")
    losses, accuracies = zip(*recent) if recent else ((float("nan"),), (float("nan"),))
    return {
        "loss": float(np.mean(losses)),
        "accuracy": float(np.mean(accuracies)),
        "images_per_second": trained_steps * batch_size / train_seconds if train_seconds else 0.0,
        "steps": step,
    }
