"""The training graph, built in one pass: towers, loss, each phase's train op over its var_list only,
moving averages, the features tower, the summaries. It returns immutable values; nothing edits it after.

Towers share one set of variables: the export tower (``input:0`` -> ``logits:0``), a training tower
per backbone BatchNorm mode reading the shuffled training split, and the evaluation tower reading one
held-out split at a time through a reinitialisable iterator. Nothing is fed from Python while training.
A phase that can trains on the features tower instead (:mod:`finetune.training.features_tower`). With
eval.tta, last of all, the TTA tower reads the evaluation iterator's images too (:mod:`finetune.model.tta`).

The training towers' loss takes train.label_smoothing (evaluation's stays plain cross-entropy). With
train.moving_average_decay, every train op also updates moving averages of the trained weights
(:mod:`finetune.training.averages`), swapped in for evaluation and export.

Every random draw reads train.seed from the graph (:mod:`finetune.seeding`): a variable's initial value is
keyed by the seed and its name, not by the ops made before it, so adding ops moves no number.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional

from finetune.compat import tf, tf1
from finetune.config import BackboneConfig, DataConfig, EvalConfig, HeadConfig, OptimizerConfig, TrainConfig
from finetune.data.datasets import evaluation_dataset, training_dataset
from finetune.data.examples import LabelledImages
from finetune.model.towers import Tower, build_export_tower, build_tower, variables_read_by
from finetune.model.tta import TtaTower, build_tta_tower
from finetune.selection import select
from finetune.seeding import seed_value
from finetune.training.averages import MovingAverages, build_moving_averages
from finetune.training.batch_norm_gradient import plain_batch_norm_gradient
from finetune.training.features_tower import FeaturesTower, build_features_tower, cached_phases, features_fit
from finetune.training.objective import class_weights, objective
from finetune.training.optimizers import PhaseOps, build_phases
from finetune.training.phases import Phase, plan_phases
from finetune.vocab import tta_views

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageTowers:
    """The towers that read images through tf.data: the training split's iterator and the evaluation tower
    over one held-out split at a time (a reinitialisable iterator)."""

    eval: Tower
    eval_labels: tf.Tensor
    eval_keys: tf.Tensor  # names each evaluated image (Example.key), beside eval_labels
    train_iterator_initializer: tf.Operation  # run at each phase start on images, feeding skip_batches
    eval_initializers: dict[str, tf.Operation]  # split -> iterator initializer


@dataclass(frozen=True)
class TrainingGraph:
    export: Tower
    global_step: tf.Variable
    skip_batches: tf.Tensor  # batches of the training sequence already trained on (0: from the start)
    phases: tuple[PhaseOps, ...]  # in order; the loop runs the one the global step falls in
    held_out_splits: tuple[str, ...]  # the splits evaluated (val, and test when it has examples)
    trained: tuple[str, ...]  # variable names in any phase's var_list
    model_variables: dict[str, tf.Variable]  # every variable the outputs or the train ops read
    weights_finite: tf.Tensor  # scalar bool: every trained variable and moving average is a finite number
    averages: Optional[MovingAverages]  # with train.moving_average_decay; None without
    # The image towers; None when nothing reads images after the cache is filled (``evaluates_features``).
    images: Optional[ImageTowers] = None
    features: Optional[FeaturesTower] = None  # when any phase trains from cached features
    class_weights: Optional[tuple[float, ...]] = None  # the training loss's weight per class (train.class_weights)
    # Every phase trains from cached features, so nothing below the cut ever changes: evaluation runs the head
    # over the held-out splits' cached features too (:func:`finetune.training.evaluate.evaluate_all`).
    evaluates_features: bool = False
    # With eval.tta: the evaluation model over the views of the evaluation iterator's images (always images,
    # also where the plain pass reads cached features).
    tta: Optional[TtaTower] = None

    @property
    def num_classes(self) -> int:
        return int(self.export.logits.shape[-1])

    def uses_features(self, index: int) -> bool:
        """Whether phase ``index`` trains from the cached features (its ``input``, decided once)."""
        return self.phases[index].phase.input == "features"


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


def trains_below_the_cut(phase: Phase, export: Tower) -> bool:
    """Whether ``phase``'s var_list selects a backbone variable below the cut (read from the export tower,
    whose variables every tower shares; a var_list that selects nothing fails later, with its message)."""
    readable = variables_read_by([export.logits])
    trainable = [v.op.name for v in tf1.trainable_variables() if v.op.name in readable]
    return bool(set(select(trainable, list(phase.var_list), key=phase.var_list_key)) & variables_read_by([export.cut]))


def build_training_graph(data: LabelledImages, backbone_cfg: BackboneConfig, head_cfg: HeadConfig, data_cfg: DataConfig,
                         optimizer_cfg: OptimizerConfig, train_cfg: TrainConfig,
                         allow_unsafe_ops: bool = False, gpu: bool = False,
                         eval_cfg: Optional[EvalConfig] = None) -> TrainingGraph:
    """Build every tower, the loss and each phase's train op in the default graph.

    input -> backbone-to-cut -> head -> objective: one training tower per backbone BatchNorm mode the
    phases ask for (the first phase's under the name scope ``train/``), all reading the same iterator.
    ``allow_unsafe_ops``: config key ``allow_unsafe_ops``, for an imported backbone's graph file. ``gpu``:
    the session trains on a GPU; with train.deterministic, a tower whose frozen BatchNorm layers a phase
    trains through gets their plain gradient (:mod:`finetune.training.batch_norm_gradient`). ``eval_cfg``:
    with ``eval.tta``, the TTA tower (:mod:`finetune.model.tta`) over the evaluation tower's images, built last.

    When every phase trains from cached features and the held-out splits' features fit in memory too, no
    image reaches the backbone after the cache is filled: the image towers and pipelines are not built
    (a graph about half the size, built in half the time for each job of a sweep)."""
    num_classes = len(data.class_names)
    export = build_export_tower(backbone_cfg, head_cfg, num_classes, allow_unsafe_ops)
    phases = plan_phases(train_cfg, optimizer_cfg, backbone_cfg, len(data.examples["train"]), data_cfg.batch_size)
    if gpu and train_cfg.deterministic:
        phases = [dataclasses.replace(phase, batch_norm_gradient="plain")
                  if phase.batch_norm == "frozen" and trains_below_the_cut(phase, export) else phase
                  for phase in phases]
    weights = class_weights(train_cfg.class_weights, data.class_names, [e.label for e in data.examples["train"]])
    held_out_splits = tuple(split for split, examples in data.examples.items() if examples and split != "train")

    # Which phases train from the cached features: decided once (no op made), recorded in each phase's input.
    # Every tower reads the export tower's variables, so its logits stand for each training tower's loss.
    cached = cached_phases(phases, data_cfg, export, {phase.batch_norm: export.logits for phase in phases},
                           len(data.examples["train"]))
    held_out = sum(len(data.examples[split]) for split in held_out_splits)
    evaluates_features = len(cached) == len(phases) and features_fit(held_out, export.cut, data_cfg.cache_memory_mb)

    global_step = tf1.train.get_or_create_global_step()
    # The iterator starts after the batches already trained on (fed when a resumed run initialises it).
    skip_batches = tf1.placeholder_with_default(tf.constant(0, tf.int64), [], name="skip_batches")
    towers: dict[str, tuple[tf.Tensor, tf.Tensor, list]] = {}  # BatchNorm mode -> loss, accuracy, updates
    views = tta_views(eval_cfg.tta) if eval_cfg is not None else ()
    images = None
    if not evaluates_features or views:  # (TTA views are of images, also where the plain pass reads features)
        images = _image_towers(data, phases, backbone_cfg, head_cfg, data_cfg, train_cfg, skip_batches, weights,
                               held_out_splits, allow_unsafe_ops, towers)
    phases = [dataclasses.replace(phase, input="features") if index in cached else phase
              for index, phase in enumerate(phases)]
    features = None
    if cached:
        features, towers["features"] = build_features_tower(export, data, backbone_cfg, head_cfg, data_cfg,
                                                            train_cfg, skip_batches, weights)
    phase_ops = build_phases(phases, towers, global_step, train_cfg.mixed_precision)
    trained = tuple(dict.fromkeys(name for ops in phase_ops for name in ops.trained))
    variables = {v.op.name: v for v in tf1.trainable_variables()}
    averages = None
    if train_cfg.moving_average_decay is not None:
        averages, train_ops = build_moving_averages(train_cfg.moving_average_decay,
                                                    [variables[name] for name in trained],
                                                    [ops.train_op for ops in phase_ops],
                                                    [ops.phase.name for ops in phase_ops])
        phase_ops = [dataclasses.replace(ops, train_op=op) for ops, op in zip(phase_ops, train_ops)]
    with tf.name_scope("weights_finite"):
        watched = [variables[name] for name in trained] + list(averages.shadows.values() if averages else [])
        weights_finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in watched]))

    read = variables_read_by([ops.train_op for ops in phase_ops] + [export.logits]
                             + ([images.eval.logits] if images else []))
    model_variables = {v.op.name: v for v in tf1.global_variables() if v.op.name in read}
    tta = None
    if views:
        with tf.name_scope("eval_tta"):
            tta = build_tta_tower(images.eval.pixels, views, backbone_cfg, head_cfg, num_classes, allow_unsafe_ops)
    return TrainingGraph(
        export=export, global_step=global_step, skip_batches=skip_batches, phases=tuple(phase_ops),
        held_out_splits=held_out_splits, images=images,
        trained=trained, model_variables=model_variables, weights_finite=weights_finite, averages=averages,
        features=features, class_weights=weights, evaluates_features=evaluates_features, tta=tta,
    )


def _image_towers(data: LabelledImages, phases: list[Phase], backbone_cfg: BackboneConfig, head_cfg: HeadConfig,
                  data_cfg: DataConfig, train_cfg: TrainConfig, skip_batches: tf.Tensor,
                  weights: Optional[tuple[float, ...]], held_out_splits: tuple[str, ...], allow_unsafe_ops: bool,
                  towers: dict[str, tuple[tf.Tensor, tf.Tensor, list]]) -> ImageTowers:
    """The towers that read images: one training tower per backbone BatchNorm mode (added to ``towers``),
    reading the shuffled training split, and the evaluation tower over the held-out splits."""
    num_classes = len(data.class_names)
    size = backbone_cfg.image_size
    plain = {phase.batch_norm for phase in phases if phase.batch_norm_gradient == "plain"}
    train_data = training_dataset(data, size, data_cfg, seed_value(), skip_batches)
    train_iterator = tf1.data.make_initializable_iterator(train_data)
    pixels, labels = train_iterator.get_next()
    for mode in dict.fromkeys(phase.batch_norm for phase in phases):
        scope = "train" if not towers else f"train_batch_norm_{mode}"
        with tf.name_scope(scope), plain_batch_norm_gradient(mode in plain):
            tower = build_tower(pixels, backbone_cfg, head_cfg, num_classes, is_training=True,
                                backbone_batch_norm_training=mode == "train", allow_unsafe_ops=allow_unsafe_ops)
            loss, accuracy = objective(tower.logits, labels, train_cfg.label_smoothing, weights)
        # BatchNorm moving averages of this training tower only (eval and export towers make none).
        updates = updates_below(tower.logits, [op for op in tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
                                               if op.name.startswith(f"{scope}/")])
        towers[mode] = (loss, accuracy, updates)

    eval_sets = {split: evaluation_dataset(data, split, size, data_cfg) for split in held_out_splits}
    first = next(iter(eval_sets.values()))  # val always exists (checked when the source was opened)
    iterator = tf1.data.Iterator.from_structure(tf1.data.get_output_types(first), tf1.data.get_output_shapes(first))
    eval_pixels, eval_labels, eval_keys = iterator.get_next()
    with tf.name_scope("eval"):
        evaluation = build_tower(eval_pixels, backbone_cfg, head_cfg, num_classes, is_training=False,
                                 allow_unsafe_ops=allow_unsafe_ops)
    return ImageTowers(eval=evaluation, eval_labels=eval_labels, eval_keys=eval_keys,
                       train_iterator_initializer=train_iterator.initializer,
                       eval_initializers={split: iterator.make_initializer(ds) for split, ds in eval_sets.items()})


@dataclass(frozen=True)
class Summaries:
    """The TensorBoard summaries a training step may fetch: each phase's scalars, and the histograms."""

    scalars: tuple[tf.Tensor, ...]  # by phase index: train/loss, train/accuracy, train/learning_rate (...)
    histograms: tf.Tensor


def build_summaries(graph: TrainingGraph, restored: list[str]) -> Summaries:
    """Scalar summaries of each phase and the histogram summaries. Histograms: every trained variable and a
    few restored, untrained backbone weights, whose histograms must stay flat over time when the backbone is
    frozen.

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
    watched = list(graph.trained) + frozen_weights[:: max(1, len(frozen_weights) // 3)][:3]
    with tf.name_scope("histograms"):
        histograms = tf1.summary.merge([
            tf.raw_ops.HistogramSummary(tag=name, values=graph.model_variables[name], name=name)
            for name in watched if name in graph.model_variables
        ])
    return Summaries(tuple(scalars), histograms)
