"""The training graph: towers, loss, each phase's optimizer over its var_list only, and the summaries.

Towers share one set of variables: the export tower (``input:0`` -> ``logits:0``), a training tower
per backbone BatchNorm mode reading the shuffled training split, and the evaluation tower reading one
held-out split at a time through a reinitialisable iterator. Nothing is fed from Python while training.

A phase that trains nothing below the cut, keeps the backbone's BatchNorm frozen and augments nothing
trains instead on the *features tower*: the head alone, reading the training split's features at the
cut (the bottleneck cache, :mod:`finetune.data.features`) in the same shuffled order, so it computes
what the image tower would, without running the backbone every step.

The training towers' loss takes train.label_smoothing (evaluation's stays plain cross-entropy). With
train.moving_average_decay, every train op also updates moving averages of the trained weights, which
:func:`evaluation_weights` swaps in for evaluation and export.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from finetune.compat import tf, tf1
from finetune.config import BackboneConfig, DataConfig, HeadConfig, OptimizerConfig, TrainConfig
from finetune.data.decode import decode_image
from finetune.data.features import FeatureExtractor
from finetune.data.input import MIB, evaluation_dataset, training_dataset, training_order
from finetune.data.sources import LabelledImages
from finetune.errors import FinetuneError
from finetune.model.head import build_head
from finetune.model.towers import Tower, build_backbone_to_cut, build_export_tower, build_tower, variables_read_by
from finetune.training.phases import Phase, PhaseOps, build_phases, plan_phases, trainable_selection

log = logging.getLogger(__name__)


@dataclass
class TrainingGraph:
    export: Tower
    eval: Tower
    eval_labels: tf.Tensor
    eval_keys: tf.Tensor  # names each evaluated image (Example.key), beside eval_labels
    global_step: tf.Variable
    train_iterator_initializer: tf.Operation  # run once per session, feeding skip_batches
    skip_batches: tf.Tensor  # batches of the training sequence already trained on (0: from the start)
    phases: list[PhaseOps]  # in order; the loop runs the one the global step falls in
    eval_initializers: dict[str, tf.Operation]  # split -> iterator initializer
    trained: list[str]  # variable names in any phase's var_list
    model_variables: dict[str, tf.Variable]  # every variable the outputs or the train ops read
    weights_finite: tf.Tensor  # scalar bool: every trained variable and moving average is a finite number
    averages: Optional[MovingAverages]  # with train.moving_average_decay; None without
    features: Optional[FeaturesTower] = None  # when any phase trains from cached features

    def uses_features(self, index: int) -> bool:
        return self.features is not None and index in self.features.phases


@dataclass
class FeaturesTower:
    """The head trained from cached features: its input, fed once per phase start, and the extractor
    that computes missing features. ``skip_batches`` is shared with the image tower."""

    features: tf.Tensor  # placeholder [N, *shape]: the training split's features, in example order
    labels: tf.Tensor  # placeholder [N]
    initializer: tf.Operation  # feeds both, and skip_batches
    extractor: FeatureExtractor
    below_cut: list[tf.Variable]  # every variable the features depend on (the model key hashes them)
    graph_sha256: str  # of the graph computing the cut: preprocessing, image size, constants, every op's attributes
    shape: tuple[int, ...]
    phases: set[int]  # the indexes of the phases that train on it


@dataclass
class MovingAverages:
    """The exponential moving averages of the trained variables (train.moving_average_decay), updated
    after every train op, and the ops that put them in the variables' place for evaluation and export.

    The shadows are model variables (saved, resumed). The backups that hold the trained values while the
    averages are swapped in are not: they belong to no collection, and each is written before it is read."""

    shadows: dict[str, tf.Variable]  # trained variable name -> its average
    start: tf.Operation  # every shadow := its variable
    save_trained: tf.Operation  # every backup := its variable
    load_averages: tf.Operation  # every variable := its shadow
    restore_trained: tf.Operation  # every variable := its backup
    swapped_in: bool = False  # inside evaluation_weights (a nested one must not back the averages up)


def build_moving_averages(decay: float, variables: list[tf.Variable], phases: list[PhaseOps]) -> MovingAverages:
    """Shadows of ``variables``, each phase's train op followed by their update (all of them, every step,
    as TF-Slim's --moving_average_decay does), and the swap ops. ``decay`` is used as given (no num_updates
    ramp): :func:`start_averages` starts the shadows from the weights training starts from."""
    # TF's default name: shadows are VARIABLE/ExponentialMovingAverage, as TF-Slim's tools expect.
    ema = tf1.train.ExponentialMovingAverage(decay)
    for ops in phases:
        with tf.name_scope(f"moving_average_{ops.phase.name}"), tf.control_dependencies([ops.train_op]):
            ops.train_op = tf.group(ema.apply(variables), name="train_then_average")
    shadows = {v.op.name: ema.average(v) for v in variables}
    with tf.name_scope("evaluation_weights"):
        backups = {v.op.name: tf1.Variable(tf.zeros(v.shape, v.dtype.base_dtype), trainable=False, collections=[],
                                           name=v.op.name.replace("/", "_")) for v in variables}
        start = tf.group([shadows[v.op.name].assign(v) for v in variables], name="start_averages")
        save_trained = tf.group([backups[v.op.name].assign(v) for v in variables], name="save_trained")
        load_averages = tf.group([v.assign(shadows[v.op.name]) for v in variables], name="load_averages")
        restore_trained = tf.group([v.assign(backups[v.op.name]) for v in variables], name="restore_trained")
    return MovingAverages(shadows, start, save_trained, load_averages, restore_trained)


def start_averages(sess: tf1.Session, graph: TrainingGraph) -> None:
    """Set every moving average to its variable's current value: call it after a fresh start's restore,
    so the averages start from the pretrained weights rather than the initializers. No-op without them."""
    if graph.averages is not None:
        sess.run(graph.averages.start)


@contextlib.contextmanager
def evaluation_weights(sess: tf1.Session, graph: TrainingGraph) -> Iterator[None]:
    """While inside: the model variables hold the weights that evaluation and export use (the moving
    averages of the trained weights when train.moving_average_decay is set); afterwards, the trained ones."""
    averages = graph.averages
    if averages is None or averages.swapped_in:
        yield
        return
    sess.run(averages.save_trained)
    sess.run(averages.load_averages)
    averages.swapped_in = True
    try:
        yield
    finally:
        sess.run(averages.restore_trained)
        averages.swapped_in = False


def objective(logits: tf.Tensor, labels: tf.Tensor, label_smoothing: float = 0.0) -> tuple[tf.Tensor, tf.Tensor]:
    """(cross-entropy loss, accuracy) of a batch of logits; the loss against one-hot targets smoothed by
    ``label_smoothing`` (1 - s on the label, s / classes everywhere) when it is > 0."""
    if label_smoothing > 0:
        targets = tf.one_hot(labels, tf.shape(logits)[1], dtype=logits.dtype)
        loss = tf1.losses.softmax_cross_entropy(targets, logits, label_smoothing=label_smoothing)
    else:
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.float32))
    return loss, accuracy


def _upstream(tensors: list[tf.Tensor]) -> set[str]:
    """Names of the ops that ``tensors`` are computed from."""
    stack, seen = [t.op for t in tensors], set()
    while stack:
        op = stack.pop()
        if op.name not in seen:
            seen.add(op.name)
            stack.extend(t.op for t in op.inputs)
    return seen


def updates_below(logits: tf.Tensor, update_ops: list[tf.Operation]) -> list[tf.Operation]:
    """The moving-average updates of the BatchNorm layers that ``logits`` are computed through. TF-Slim
    builds the whole backbone, and updating the layers above the cut would compute them every step for
    nothing (and move statistics no output reads)."""
    used = _upstream([logits])
    kept = []
    for op in update_ops:
        sources = _batch_norm_ops(op)
        if not sources or sources & used:  # an update whose layer is not found is kept
            kept.append(op)
    return kept


def _batch_norm_ops(update: tf.Operation) -> set[str]:
    """The FusedBatchNorm op(s) whose batch statistics an update op averages in (a few hops up its inputs)."""
    found, frontier = set(), [t.op for t in update.inputs]
    for _ in range(4):
        found |= {op.name for op in frontier if op.type.startswith("FusedBatchNorm")}
        frontier = [t.op for op in frontier if not op.type.startswith("FusedBatchNorm") for t in op.inputs]
    return found


def build_training_graph(data: LabelledImages, backbone_cfg: BackboneConfig, head_cfg: HeadConfig, data_cfg: DataConfig,
                         optimizer_cfg: OptimizerConfig, train_cfg: TrainConfig,
                         allow_unsafe_ops: bool = False) -> TrainingGraph:
    """Build every tower, the loss and each phase's train op in the default graph.

    input -> backbone-to-cut -> head -> objective: one training tower per backbone BatchNorm mode the
    phases ask for (the first phase's under the name scope ``train/``), all reading the same iterator.
    ``allow_unsafe_ops``: config key ``allow_unsafe_ops``, for an imported backbone's graph file."""
    num_classes = len(data.class_names)
    size = backbone_cfg.image_size
    export = build_export_tower(backbone_cfg, head_cfg, num_classes, allow_unsafe_ops)
    phases = plan_phases(train_cfg, optimizer_cfg, backbone_cfg, len(data.examples["train"]), data_cfg.batch_size)

    global_step = tf1.train.get_or_create_global_step()
    # The iterator starts after the batches already trained on (fed when a resumed run initialises it).
    skip_batches = tf1.placeholder_with_default(tf.constant(0, tf.int64), [], name="skip_batches")
    train_data = training_dataset(data, size, data_cfg, train_cfg.seed, skip_batches)
    train_iterator = tf1.data.make_initializable_iterator(train_data)
    pixels, labels = train_iterator.get_next()
    towers: dict[str, tuple[Tower, tf.Tensor, tf.Tensor, list]] = {}  # BatchNorm mode -> tower, loss, accuracy, updates
    for mode in dict.fromkeys(phase.batch_norm for phase in phases):
        scope = "train" if not towers else f"train_batch_norm_{mode}"
        with tf.name_scope(scope):
            tower = build_tower(pixels, backbone_cfg, head_cfg, num_classes, is_training=True,
                                backbone_batch_norm_training=mode == "train", allow_unsafe_ops=allow_unsafe_ops)
            loss, accuracy = objective(tower.logits, labels, train_cfg.label_smoothing)
        # BatchNorm moving averages of this training tower only (eval and export towers make none).
        updates = updates_below(tower.logits, [op for op in tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
                                               if op.name.startswith(f"{scope}/")])
        towers[mode] = (tower, loss, accuracy, updates)

    eval_sets = {split: evaluation_dataset(data, split, size, data_cfg)
                 for split, examples in data.examples.items() if examples and split != "train"}
    first = next(iter(eval_sets.values()))  # val always exists (checked when the source was opened)
    iterator = tf1.data.Iterator.from_structure(tf1.data.get_output_types(first), tf1.data.get_output_shapes(first))
    eval_pixels, eval_labels, eval_keys = iterator.get_next()
    with tf.name_scope("eval"):
        evaluation = build_tower(eval_pixels, backbone_cfg, head_cfg, num_classes, is_training=False,
                                 allow_unsafe_ops=allow_unsafe_ops)

    tower_inputs = {mode: parts[1:] for mode, parts in towers.items()}
    cached = cached_phases(phases, data_cfg, export, {mode: parts[1] for mode, parts in towers.items()},
                           len(data.examples["train"]))
    features = None
    if cached:
        features, tower_inputs["features"] = build_features_tower(export, data, backbone_cfg, head_cfg, data_cfg,
                                                                  train_cfg, skip_batches, allow_unsafe_ops)
        features.phases = set(cached)
    phase_ops = build_phases(phases, tower_inputs, global_step,
                             ["features" if i in cached else phase.batch_norm for i, phase in enumerate(phases)],
                             train_cfg.mixed_precision)
    for index in cached:
        phase_ops[index].input = "features"
    trained = list(dict.fromkeys(name for ops in phase_ops for name in ops.trained))
    variables = {v.op.name: v for v in tf1.trainable_variables()}
    averages = None
    if train_cfg.moving_average_decay is not None:
        averages = build_moving_averages(train_cfg.moving_average_decay, [variables[name] for name in trained],
                                         phase_ops)
    with tf.name_scope("weights_finite"):
        watched = [variables[name] for name in trained] + list(averages.shadows.values() if averages else [])
        weights_finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in watched]))

    read = variables_read_by([ops.train_op for ops in phase_ops] + [export.logits, evaluation.logits])
    model_variables = {v.op.name: v for v in tf1.global_variables() if v.op.name in read}
    return TrainingGraph(
        export=export, eval=evaluation, eval_labels=eval_labels, eval_keys=eval_keys,
        global_step=global_step, train_iterator_initializer=train_iterator.initializer, skip_batches=skip_batches,
        phases=phase_ops,
        eval_initializers={split: iterator.make_initializer(ds) for split, ds in eval_sets.items()},
        trained=trained, model_variables=model_variables, weights_finite=weights_finite, averages=averages,
        features=features,
    )


def cached_phases(phases: list[Phase], data_cfg: DataConfig, export: Tower, losses: dict[str, tf.Tensor],
                  training_images: int) -> list[int]:
    """The phases that train from cached features (``data.feature_cache``); says once why a phase cannot.
    FinetuneError with ``require`` when none can."""
    if data_cfg.feature_cache == "off":
        return []
    below = variables_read_by([export.cut])
    shape = export.cut.shape[1:]
    size = training_images * int(np.prod(shape.as_list())) * 4 if shape.is_fully_defined() else None
    cached, reasons = [], []
    for index, phase in enumerate(phases):
        reason = why_not_cached(phase, data_cfg, below, losses[phase.batch_norm], size)
        if reason is None:
            cached.append(index)
        else:
            reasons.append(f"phase {phase.name!r} trains on images: {reason}")
    if reasons:
        log.info("Feature cache: %s.", "; ".join(reasons))
    if not cached and data_cfg.feature_cache == "require":
        raise FinetuneError(f"data.feature_cache=require, but no phase can train from cached features: "
                            f"{'; '.join(reasons)}. Use data.feature_cache=auto (or off) to train on images.")
    return cached


def why_not_cached(phase: Phase, data_cfg: DataConfig, below: set[str], loss: tf.Tensor,
                   features_bytes: Optional[int]) -> Optional[str]:
    """Why ``phase`` cannot train from cached features, or None when it can."""
    if data_cfg.augment:
        return "data.augment is set, so every epoch sees other pixels"
    if phase.batch_norm == "train":
        return "the backbone's BatchNorm trains (batch statistics change the features)"
    trained = trainable_selection(phase.var_list, phase.var_list_key, loss)  # what build_phases will train
    trained_below = sorted({v.op.name for v in trained} & below)
    if trained_below:
        return f"it trains variables below the cut ({trained_below[0]}, ...)"
    if features_bytes is None:
        return "the cut tensor's shape is not fully known"
    if features_bytes > data_cfg.cache_memory_mb * MIB:
        return (f"the training split's features take {features_bytes / MIB:.0f} MiB, over "
                f"data.cache_memory_mb={data_cfg.cache_memory_mb}")
    return None


def build_features_tower(export: Tower, data: LabelledImages, backbone_cfg: BackboneConfig, head_cfg: HeadConfig,
                         data_cfg: DataConfig, train_cfg: TrainConfig, skip_batches: tf.Tensor,
                         allow_unsafe_ops: bool) -> tuple[FeaturesTower, tuple[tf.Tensor, tf.Tensor, list]]:
    """The features tower (head over fed features) and the extractor; returns it with its (loss, accuracy,
    head BatchNorm updates). The fed features are shuffled with the image tower's seed and buffer, so
    phase steps see the same examples in the same order either way."""
    shape = tuple(export.cut.shape.as_list()[1:])
    with tf.name_scope("features"):
        features = tf1.placeholder(tf.float32, [None, *shape], name="features")
        labels = tf1.placeholder(tf.int64, [None], name="labels")
        dataset = training_order(tf.data.Dataset.from_tensor_slices((features, labels)), len(data.examples["train"]),
                                 data_cfg, train_cfg.seed, skip_batches)
        dataset = dataset.map(lambda position, example: example).batch(data_cfg.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        iterator = tf1.data.make_initializable_iterator(dataset)
        cut, batch_labels = iterator.get_next()
        encoded = tf1.placeholder(tf.string, [None], name="encoded_images")
        images = tf.data.Dataset.from_tensor_slices(encoded).map(
            lambda e: decode_image(e, backbone_cfg.image_size), num_parallel_calls=data_cfg.num_parallel_calls)
        images = images.batch(data_cfg.eval_batch_size).prefetch(tf.data.AUTOTUNE)
        image_iterator = tf1.data.make_initializable_iterator(images)
        with tf1.variable_scope(tf1.get_variable_scope(), reuse=tf1.AUTO_REUSE):
            computed, _ = build_backbone_to_cut(image_iterator.get_next(), backbone_cfg, False, allow_unsafe_ops)
    with tf.name_scope("train_features"):
        with tf1.variable_scope(tf1.get_variable_scope(), reuse=tf1.AUTO_REUSE):
            logits = build_head(cut, head_cfg, int(export.logits.shape[-1]), is_training=True)
        loss, accuracy = objective(logits, batch_labels, train_cfg.label_smoothing)
    updates = [op for op in tf1.get_collection(tf1.GraphKeys.UPDATE_OPS) if op.name.startswith("train_features/")]
    variables = {v.op.name: v for v in tf1.global_variables()}
    to_cut = tf1.graph_util.extract_sub_graph(export.cut.graph.as_graph_def(), [export.cut.op.name])
    tower = FeaturesTower(features, labels, iterator.initializer,
                          FeatureExtractor(encoded, image_iterator.initializer, computed),
                          [variables[name] for name in sorted(variables_read_by([export.cut]))],
                          hashlib.sha256(to_cut.SerializeToString(deterministic=True)).hexdigest(), shape, set())
    return tower, (loss, accuracy, updates)


def build_summaries(graph: TrainingGraph, restored: list[str]) -> tuple[list[tf.Tensor], tf.Tensor]:
    """(scalar summaries of each phase, histogram summaries). Histograms: every trained variable and a few
    restored, untrained backbone weights, whose histograms must stay flat over time when the backbone is frozen.

    Each histogram's tag is its variable's name. ``tf.summary.histogram`` would take the tag from a
    fresh op name, which collides with the variable's own op and comes out as ``NAME_1``.
    """
    scalars = []
    for ops in graph.phases:
        values = [("loss", ops.loss), ("accuracy", ops.accuracy), ("learning_rate", ops.learning_rate)]
        if ops.gradient_norm is not None:  # with optimizer.clip_gradient_norm: the norm before clipping
            values.append(("gradient_norm", ops.gradient_norm))
        with tf.name_scope(f"summaries_{ops.phase.name}"):
            scalars.append(tf1.summary.merge([
                tf.raw_ops.ScalarSummary(tags=f"train/{key}", values=value, name=key) for key, value in values
            ]))
    frozen_weights = [name for name in restored if name not in set(graph.trained) and name.endswith("weights")]
    watched = graph.trained + frozen_weights[:: max(1, len(frozen_weights) // 3)][:3]
    with tf.name_scope("histograms"):
        histograms = tf1.summary.merge([
            tf.raw_ops.HistogramSummary(tag=name, values=graph.model_variables[name], name=name)
            for name in watched if name in graph.model_variables
        ])
    return scalars, histograms
