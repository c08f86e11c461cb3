"""The input pipeline: a split of a source -> tf.data batches of decoded, resized (and, for training,
augmented) images, decoded in parallel and prefetched so the model never waits on it.

The training sequence depends on the seed alone: the order comes from a seeded shuffle of the split
and each augmentation from stateless draws keyed by the image's position in the sequence. So a resumed
run that skips the ``skip_batches`` batches it already trained on sees exactly what an uninterrupted run
would have seen next. When the decoded split fits in ``data.cache_memory_mb``, it is decoded once and
kept in memory; the shuffle then draws the same permutation over decoded images that it draws over
references otherwise, so caching never changes what is trained on.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from finetune.compat import tf
from finetune.config import DataConfig
from finetune.data.augment import augment_image
from finetune.data.decode import shared_decode_image
from finetune.data.examples import Example, LabelledImages
from finetune.seeding import no_graph_seed

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
MIB = 2**20


def decoded_bytes(examples: int, image_size: int) -> int:
    """Memory the decoded, resized images of ``examples`` take (float32 RGB)."""
    return examples * image_size * image_size * 3 * 4


def fits_in_memory(examples: int, image_size: int, data_cfg: DataConfig) -> bool:
    return decoded_bytes(examples, image_size) <= data_cfg.cache_memory_mb * MIB


def labelled_references(data: LabelledImages, examples: list[Example]) -> tf.data.Dataset:
    """(reference, label, key) per example, in order."""
    labels = tf.data.Dataset.from_tensor_slices(tf.constant(np.array([e.label for e in examples], np.int64)))
    keys = tf.data.Dataset.from_tensor_slices(tf.constant([e.key for e in examples], tf.string))
    return tf.data.Dataset.zip((data.reader.references(examples), labels, keys))


def training_order(dataset: tf.data.Dataset, labels: Sequence[int], data_cfg: DataConfig, seed: tf.Tensor | int,
                   skip_batches: tf.Tensor | int, size: tf.Tensor | int | None = None) -> tf.data.Dataset:
    """The training sequence: ``dataset`` (one ``(item, label)`` element per example, in example order, with
    ``labels`` their labels) drawn as ``data.sampling`` says, numbered by position, and started after the
    ``skip_batches`` batches already trained on. The one definition of the order, for images and cached
    features alike. ``seed``: ``train.seed`` (:func:`finetune.seeding.seed_value` in a run's graph);
    ``size``: the number of examples, a tensor where they are fed (default ``len(labels)``).

    ``natural``: the split shuffled by the seed, epoch after epoch. ``balanced``: each position draws a
    class uniformly (a stateless draw keyed by the seed and the position), then that class's next example
    from its own shuffled, repeated stream, so every class is drawn equally often whatever its size."""
    seed = tf.cast(seed, tf.int64)
    if data_cfg.sampling == "balanced":
        dataset = _balanced(dataset, labels, data_cfg, seed)
    else:
        dataset = _shuffled(dataset, data_cfg.shuffle_buffer or (len(labels) if size is None else size), seed)
        dataset = dataset.repeat()
    return dataset.enumerate().skip(tf.cast(skip_batches, tf.int64) * data_cfg.batch_size)


def _shuffled(dataset: tf.data.Dataset, buffer: tf.Tensor | int, seed: tf.Tensor) -> tf.data.Dataset:
    with no_graph_seed():  # the seed fed, alone: TensorFlow would mix in the graph's seed, a number built in
        return dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)


def _balanced(dataset: tf.data.Dataset, labels: Sequence[int], data_cfg: DataConfig,
              seed: tf.Tensor) -> tf.data.Dataset:
    classes = sorted(set(int(label) for label in labels))
    streams = []
    for label in classes:
        size = sum(int(value) == label for value in labels)
        members = dataset.filter(lambda item, item_label, label=label: tf.equal(item_label, label))
        streams.append(_shuffled(members, data_cfg.shuffle_buffer or size, seed).repeat())
    draws = tf.data.Dataset.counter().map(lambda position: tf.random.stateless_uniform(
        [], tf.stack([seed, position]), maxval=len(classes), dtype=tf.int64))
    return tf.data.Dataset.choose_from_datasets(streams, draws)


def training_dataset(data: LabelledImages, image_size: int, data_cfg: DataConfig, seed: tf.Tensor | int,
                     skip_batches: tf.Tensor | int = 0) -> tf.data.Dataset:
    """(pixels, labels) batches of the training split: shuffled, augmented, repeated, full batches only."""
    examples = data.examples["train"]
    seed = tf.cast(seed, tf.int64)
    dataset = labelled_references(data, examples).map(lambda ref, label, key: (ref, label))
    parallel = data_cfg.num_parallel_calls

    def decode(reference: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return shared_decode_image(data.reader.read(reference), image_size), label

    if fits_in_memory(len(examples), image_size, data_cfg):
        dataset = dataset.map(decode, num_parallel_calls=parallel).cache()
    dataset = training_order(dataset, [e.label for e in examples], data_cfg, seed, skip_batches)  # skips before reading

    def load(position: tf.Tensor, example: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        image, label = example
        if image.dtype == tf.string:  # not cached: a reference still
            image, label = decode(image, label)
        return augment_image(image, data_cfg.augment, tf.stack([seed, position])), label

    dataset = dataset.map(load, num_parallel_calls=parallel)
    return dataset.batch(data_cfg.batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def evaluation_dataset(data: LabelledImages, split: str, image_size: int, data_cfg: DataConfig) -> tf.data.Dataset:
    """(pixels, labels, keys) batches of a held-out split, one pass in order, never augmented; the keys
    name each image in the reports."""
    examples = data.examples[split]
    dataset = labelled_references(data, examples).map(
        lambda ref, label, key: (shared_decode_image(data.reader.read(ref), image_size), label, key),
        num_parallel_calls=data_cfg.num_parallel_calls)
    if fits_in_memory(len(examples), image_size, data_cfg):
        dataset = dataset.cache()
    return dataset.batch(data_cfg.eval_batch_size).prefetch(AUTOTUNE)
