"""Evaluation: one pass of the evaluation tower over a held-out split, and its TensorBoard scalars."""
from __future__ import annotations

import numpy as np

from finetune.compat import tf, tf1
from finetune.training.graph import TrainingGraph


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


def evaluate_all(sess: tf1.Session, graph: TrainingGraph) -> dict[str, dict[str, float]]:
    """:func:`evaluate` on every held-out split (val, and test when the data has one)."""
    return {split: evaluate(sess, graph, split) for split in graph.eval_initializers}


def eval_summary(results: dict[str, dict[str, float]]) -> tf1.Summary:
    """``SPLIT/loss`` and ``SPLIT/accuracy`` of every evaluated split."""
    return scalar_summary({f"{split}/{key}": metrics[key] for split, metrics in results.items()
                           for key in ("loss", "accuracy")})


def scalar_summary(values: dict[str, float]) -> tf1.Summary:
    return tf1.Summary(value=[tf1.Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
