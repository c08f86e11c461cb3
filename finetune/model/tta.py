"""Test-time augmentation (``eval.tta``): each image seen through fixed views, the model's probabilities
averaged over them.

A view is deterministic (no draw, no seed): a flip, a half turn, or a central crop resized back to the
input size. :func:`view_batch` stacks the views of a batch [N, S, S, 3] into one batch [V * N, S, S, 3]
(view after view), the tower runs once over it, and :func:`combine_views` folds its logits [V * N, C]
back into one row per image: ``probabilities`` the mean of the views' softmax, ``logits`` the log of that
mean (so softmax(logits) is the mean, and evaluation reads them like any logits). With one view nothing is
averaged: its own logits are the result, so ``eval.tta: [identity]`` evaluates exactly as the plain pass.

The same functions build the evaluation's TTA tower in the training graph
(:func:`finetune.training.training_graph.build_training_graph`) and the exported TTA graph
(:func:`finetune.export.exporter.tta_graph`). The view names live in :mod:`finetune.vocab`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from finetune.compat import tf
from finetune.config import BackboneConfig, HeadConfig
from finetune.model.towers import build_tower
from finetune.vocab import TTA_VIEWS, crop_percent, implementations


def center_crop(images: tf.Tensor, percent: int) -> tf.Tensor:
    """The central ``percent``% of each side of ``images`` [N, S, S, 3], resized back to S x S (bilinear)."""
    size = tf.shape(images)[1:3]
    cropped = tf.image.central_crop(images, percent / 100.0)
    return tf.image.resize(cropped, size, method="bilinear")


VIEWS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = implementations(TTA_VIEWS, {
    "identity": lambda images: images,
    "flip_left_right": lambda images: tf.reverse(images, axis=[2]),  # images [N, H, W, C]
    "flip_up_down": lambda images: tf.reverse(images, axis=[1]),
    "rotate_180": lambda images: tf.reverse(images, axis=[1, 2]),
}, "eval.tta")


def view(images: tf.Tensor, name: str) -> tf.Tensor:
    """``images`` [N, S, S, 3] seen through the view ``name`` (a name of :data:`VIEWS` or ``center_crop_P``)."""
    if name in VIEWS:
        return VIEWS[name](images)
    percent = crop_percent(name)
    if percent is None:
        raise ValueError(f"eval.tta: {name!r} is not a view")  # validation refuses it before
    return center_crop(images, percent)


def view_batch(images: tf.Tensor, views: Sequence[str]) -> tf.Tensor:
    """The views of ``images`` [N, S, S, 3] one after the other: [V * N, S, S, 3] (``images`` itself for
    a single identity view)."""
    seen = [view(images, name) for name in views]
    stacked = seen[0] if len(seen) == 1 else tf.concat(seen, axis=0)
    stacked.set_shape([None, *images.shape[1:]])
    return stacked


def combine_views(logits: tf.Tensor, views: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(logits, probabilities) [N, C] of the view logits [V * N, C] (view after view): probabilities the
    mean of the views' softmax, logits its log (``log mean exp`` of the views' log-probabilities). One view:
    its own logits and softmax, as the plain pass computes them."""
    if views == 1:
        return logits, tf.nn.softmax(logits)
    classes = logits.shape[-1] if logits.shape[-1] is not None else tf.shape(logits)[-1]
    per_view = tf.reshape(logits, [views, -1, classes])
    probabilities = tf.reduce_mean(tf.nn.softmax(per_view), axis=0)
    combined = tf.reduce_logsumexp(tf.nn.log_softmax(per_view), axis=0) - math.log(views)
    return combined, probabilities


@dataclass(frozen=True)
class TtaTower:
    """The evaluation model over the views of a batch of images."""

    views: tuple[str, ...]
    pixels: tf.Tensor  # [N, S, S, 3] float RGB in [0, 255]: the evaluation iterator's images (feedable)
    logits: tf.Tensor  # [N, C]: softmax(logits) is the mean of the views' probabilities
    probabilities: tf.Tensor  # [N, C]: the mean of the views' probabilities


def build_tta_tower(pixels: tf.Tensor, views: Sequence[str], backbone_cfg: BackboneConfig, head_cfg: HeadConfig,
                    num_classes: int, allow_unsafe_ops: bool = False) -> TtaTower:
    """The model in inference mode (variables shared with the other towers) over ``views`` of ``pixels``,
    combined per image (:func:`combine_views`)."""
    views = tuple(views)
    tower = build_tower(view_batch(pixels, views), backbone_cfg, head_cfg, num_classes, is_training=False,
                        allow_unsafe_ops=allow_unsafe_ops)
    logits, probabilities = combine_views(tower.logits, len(views))
    return TtaTower(views, pixels, logits, probabilities)
