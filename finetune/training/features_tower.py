"""The features tower: the head trained from the bottleneck cache instead of images.

A phase that trains nothing below the cut, keeps the backbone's BatchNorm frozen and augments nothing
trains on the *features tower*: the head alone, reading the training split's features at the cut (the
bottleneck cache, :mod:`finetune.data.features`) in the same shuffled order as the image tower, so it
computes what the image tower would, without running the backbone every step. Which phases do is
decided once (:func:`cached_phases`), before any train op exists, and recorded in each phase's ``input``.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from finetune.compat import tf, tf1
from finetune.config import BackboneConfig, DataConfig, HeadConfig, TrainConfig
from finetune.data.datasets import MIB, training_order
from finetune.data.examples import LabelledImages
from finetune.data.features import FeatureExtractor
from finetune.errors import FinetuneError
from finetune.graphs import prune_library
from finetune.model.head import build_head
from finetune.model.towers import Tower, variables_read_by
from finetune.seeding import seed_value
from finetune.training.objective import objective
from finetune.training.optimizers import trainable_selection
from finetune.training.phases import Phase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeaturesTower:
    """The head trained from cached features: its input, fed once per phase start, and the extractor
    that computes missing features. ``skip_batches`` is shared with the image tower."""

    features: tf.Tensor  # placeholder [N, *shape]: the training split's features, in example order
    labels: tf.Tensor  # placeholder [N]
    initializer: tf.Operation  # feeds both, and skip_batches
    extractor: FeatureExtractor
    below_cut: tuple[tf.Variable, ...]  # every variable the features depend on (the model key hashes them)
    graph_sha256: str  # of the graph computing the cut: preprocessing, image size, constants, every op's attributes
    shape: tuple[int, ...]
    held_out: tf.Tensor  # placeholder [batch, *shape]: a batch of a held-out split's features
    held_out_logits: tf.Tensor  # the head in inference mode over them


def features_fit(images: int, cut: tf.Tensor, cache_memory_mb: int) -> bool:
    """Whether the features at ``cut`` of ``images`` images fit in ``data.cache_memory_mb`` (float32)."""
    return images * 4 * (cut.shape[1:].num_elements() or 0) <= cache_memory_mb * MIB


def cached_phases(phases: list[Phase], data_cfg: DataConfig, export: Tower, losses: dict[str, tf.Tensor],
                  training_images: int) -> list[int]:
    """The indexes of the phases that train from cached features (``data.feature_cache``); says once why a
    phase cannot. FinetuneError with ``require`` when none can. ``losses``: each training tower's loss, by
    the backbone BatchNorm mode it was built with."""
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


def graph_to_cut_sha256(cut: tf.Tensor) -> str:
    """The sha256 of the graph that computes ``cut`` (every op, attribute and constant on the way: the
    backbone, its parameters, the cut, the image size, the preprocessing), part of the cache's model key."""
    to_cut = tf1.graph_util.extract_sub_graph(cut.graph.as_graph_def(), [cut.op.name])
    # The graph's library also holds every tf.data function, named by process-wide counters: each job of
    # an in-process sweep would hash other names and miss the entries of the job before it.
    prune_library(to_cut)
    return hashlib.sha256(to_cut.SerializeToString(deterministic=True)).hexdigest()


def build_features_tower(export: Tower, data: LabelledImages, backbone_cfg: BackboneConfig, head_cfg: HeadConfig,
                         data_cfg: DataConfig, train_cfg: TrainConfig, skip_batches: tf.Tensor,
                         weights: Optional[tuple[float, ...]] = None
                         ) -> tuple[FeaturesTower, tuple[tf.Tensor, tf.Tensor, list]]:
    """The features tower (head over fed features) and the extractor, which runs the export tower to its cut;
    returns it with its (loss, accuracy, head BatchNorm updates). The fed features are shuffled with the image
    tower's seed and buffer, so phase steps see the same examples in the same order either way."""
    shape = tuple(export.cut.shape.as_list()[1:])
    with tf.name_scope("features"):
        features = tf1.placeholder(tf.float32, [None, *shape], name="features")
        labels = tf1.placeholder(tf.int64, [None], name="labels")
        # The split's size is read from what is fed: one graph serves every fold (finetune.seeding).
        dataset = training_order(tf.data.Dataset.from_tensor_slices((features, labels)),
                                 [example.label for example in data.examples["train"]],
                                 data_cfg, seed_value(), skip_batches, size=tf.size(labels, out_type=tf.int64))
        # A fixed prefetch and no autotuning: tf.data's autotuner held the re-initialisation of a used iterator
        # (the next phase, the next job on a shared graph) for up to 1.3 s (12 ms without it). The features are
        # in memory: two batches ahead is enough.
        dataset = dataset.map(lambda position, example: example).batch(data_cfg.batch_size, drop_remainder=True)
        options = tf.data.Options()
        options.autotune.enabled = False
        dataset = dataset.prefetch(2).with_options(options)
        iterator = tf1.data.make_initializable_iterator(dataset)
        cut, batch_labels = iterator.get_next()
    with tf.name_scope("train_features"):
        with tf1.variable_scope(tf1.get_variable_scope(), reuse=tf1.AUTO_REUSE):
            logits = build_head(cut, head_cfg, int(export.logits.shape[-1]), is_training=True)
        loss, accuracy = objective(logits, batch_labels, train_cfg.label_smoothing, weights)
    with tf.name_scope("eval_features"):
        # Fed a batch at a time: a pipeline over the whole split would copy it at every evaluation.
        held_out = tf1.placeholder(tf.float32, [None, *shape], name="features")
        with tf1.variable_scope(tf1.get_variable_scope(), reuse=tf1.AUTO_REUSE):
            held_out_logits = build_head(held_out, head_cfg, int(export.logits.shape[-1]), is_training=False)
    updates = [op for op in tf1.get_collection(tf1.GraphKeys.UPDATE_OPS) if op.name.startswith("train_features/")]
    variables = {v.op.name: v for v in tf1.global_variables()}
    tower = FeaturesTower(features, labels, iterator.initializer,
                          FeatureExtractor(export.pixels, export.cut, backbone_cfg.image_size,
                                           data_cfg.eval_batch_size, data_cfg.num_parallel_calls),
                          tuple(variables[name] for name in sorted(variables_read_by([export.cut]))),
                          graph_to_cut_sha256(export.cut), shape,
                          held_out, held_out_logits)
    return tower, (loss, accuracy, updates)
