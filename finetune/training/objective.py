"""The training objective: softmax cross-entropy (optionally label-smoothed and weighted per class) and the
batch's accuracy, and the per-class weights ``train.class_weights`` resolves to."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from finetune.compat import tf, tf1
from finetune.errors import FinetuneError, closest


def class_weights(spec: Any, class_names: Sequence[str], train_labels: Sequence[int]) -> Optional[tuple[float, ...]]:
    """The loss weight of each class (in label order) for ``train.class_weights``: None (no weighting),
    ``balanced`` (``images / (classes x images of the class)`` over the training split, scikit-learn's
    rule; a class without training images gets 1), or a mapping of class names to weights (others: 1)."""
    if spec is None:
        return None
    counts = np.bincount(np.asarray(train_labels, np.int64), minlength=len(class_names))
    if spec == "balanced":
        present = int(np.count_nonzero(counts))
        return tuple(float(counts.sum() / (present * count)) if count else 1.0 for count in counts)
    unknown = [str(name) for name in spec if str(name) not in class_names]
    if unknown:
        raise FinetuneError(
            f"Config key 'train.class_weights' names class(es) {unknown} the data does not have. Did you mean "
            f"{' or '.join(closest(unknown[0], class_names, 3))}? Classes: {', '.join(class_names)}.")
    return tuple(float(spec.get(name, 1.0)) for name in class_names)


def objective(logits: tf.Tensor, labels: tf.Tensor, label_smoothing: float = 0.0,
              weights: Optional[Sequence[float]] = None) -> tuple[tf.Tensor, tf.Tensor]:
    """(cross-entropy loss, accuracy) of a batch of logits; the loss against one-hot targets smoothed by
    ``label_smoothing`` (1 - s on the label, s / classes everywhere) when it is > 0, and each example's term
    weighted by its class's weight when ``weights`` is given (the weighted sum over the batch's size)."""
    extra = {}
    if weights is not None:
        extra["weights"] = tf.gather(tf.constant(weights, tf.float32, name="class_weights"), labels)
    if label_smoothing > 0:
        targets = tf.one_hot(labels, tf.shape(logits)[1], dtype=logits.dtype)
        loss = tf1.losses.softmax_cross_entropy(targets, logits, label_smoothing=label_smoothing, **extra)
    else:
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits, **extra)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.float32))
    return loss, accuracy
