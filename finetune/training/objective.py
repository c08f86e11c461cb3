"""The training objective: softmax cross-entropy (optionally label-smoothed) and the batch's accuracy."""
from __future__ import annotations

from finetune.compat import tf, tf1


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
