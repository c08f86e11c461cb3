"""The training graph: towers, loss, the optimizer over the var_list only, and the summaries.

Three towers share one set of variables: the export tower (``input:0`` -> ``logits:0``), the training
tower reading the shuffled training split, and the evaluation tower reading one held-out split at a time
through a reinitialisable iterator. Nothing is fed from Python while training.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

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
