"""Evaluation: one pass of the evaluation tower over a held-out split, what it found (loss, top-1 and
top-k accuracy, per-class accuracy, the confusion matrix, the misclassified images), its TensorBoard
summaries, and the run's history of evaluations (metrics.jsonl, the best one, early stopping).
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageDraw

from finetune.compat import tf, tf1
from finetune.config import TrainConfig
from finetune.files import write_text_atomically
from finetune.training.training_graph import TrainingGraph
from finetune.vocab import EVALUATION_METRICS

log = logging.getLogger(__name__)

SCALARS = ("loss", "accuracy", "images", "top_k_accuracy", "top_k")  # a split's numbers in metrics.jsonl


@dataclass
class SplitResult:
    """What one pass over a split found."""

    loss: float  # mean cross-entropy
    accuracy: float  # top-1
    images: int
    top_k: int  # k of top_k_accuracy: train.top_k, capped at the class count
    top_k_accuracy: float
    confusion: np.ndarray  # [true label, predicted label] -> images
    mistakes: list[tuple[str, int, int, float]] = field(default_factory=list)  # key, true, predicted, its probability

    def scalars(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in SCALARS}


def top_k_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row, whether the true label is among the k highest logits: fewer than k classes score
    strictly higher than it (a tie with the k-th counts in, as tf.math.in_top_k does)."""
    true_logits = logits[np.arange(len(labels)), labels][:, None]
    return (logits > true_logits).sum(axis=1) < k


def evaluate(sess: tf1.Session, graph: TrainingGraph, split: str, top_k: int) -> SplitResult:
    """One pass of the eval tower over ``split``."""
    sess.run(graph.eval_initializers[split])
    num_classes = int(graph.eval.logits.shape[-1])
    k = min(top_k, num_classes)
    confusion = np.zeros([num_classes, num_classes], np.int64)
    total_loss, correct, in_top_k, count, mistakes = 0.0, 0, 0, 0, []
    while True:
        try:
            logits, labels, keys = sess.run([graph.eval.logits, graph.eval_labels, graph.eval_keys])
        except tf.errors.OutOfRangeError:
            break
        rows = np.arange(len(labels))
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        total_loss -= float(log_probs[rows, labels].sum())
        predicted = logits.argmax(axis=1)
        correct += int((predicted == labels).sum())
        in_top_k += int(top_k_hits(logits, labels, k).sum())
        np.add.at(confusion, (labels, predicted), 1)
        count += len(labels)
        for row in np.flatnonzero(predicted != labels):
            mistakes.append((keys[row].decode("utf-8"), int(labels[row]), int(predicted[row]),
                             float(np.exp(log_probs[row, predicted[row]]))))
    return SplitResult(loss=total_loss / count, accuracy=correct / count, images=count, top_k=k,
                       top_k_accuracy=in_top_k / count, confusion=confusion, mistakes=mistakes)


def evaluate_all(sess: tf1.Session, graph: TrainingGraph, top_k: int) -> dict[str, SplitResult]:
    """:func:`evaluate` on every held-out split (val, and test when the data has one). Run it inside
    ``graph.evaluation_weights``, so that it measures the weights that are exported."""
    return {split: evaluate(sess, graph, split, top_k) for split in graph.eval_initializers}


def split_metrics(result: SplitResult, class_names: list[str]) -> dict[str, Any]:
    """A split's section of metrics.json: its scalars and, per class, accuracy and image count."""
    per_class = {}
    for label, name in enumerate(class_names):
        images = int(result.confusion[label].sum())
        per_class[name] = {"accuracy": int(result.confusion[label, label]) / images if images else None,
                           "images": images}
    return {**result.scalars(), "per_class": per_class}


def confusion_report(results: dict[str, SplitResult], class_names: list[str]) -> dict[str, Any]:
    """confusion_matrix.json: per split, the class names and the matrix (rows true, columns predicted)."""
    return {split: {"classes": list(class_names), "matrix": result.confusion.tolist()}
            for split, result in results.items()}


def misclassified_report(results: dict[str, SplitResult], class_names: list[str]) -> dict[str, Any]:
    """misclassified.json: per split, each wrongly classified image (its key: the file relative to data.root,
    or SHARD:INDEX of a TFRecord example;
    true and predicted class, the predicted class's probability), sorted by file."""
    report = {}
    for split, result in results.items():
        entries = [{"file": key, "true": class_names[true],
                    "predicted": class_names[predicted], "probability": probability}
                   for key, true, predicted, probability in result.mistakes]
        report[split] = sorted(entries, key=lambda entry: entry["file"])
    return report


# --- TensorBoard ---------------------------------------------------------------------------------------
CELL_PIXELS = 48  # a class's row and column in the confusion image (smaller for many classes)
SCALE_WIDTH = 60  # the colour scale on the right, with its labels
CAPTION = ("rows: true class, columns: predicted", "colour: fraction of the row's images")


def _colour(fractions: np.ndarray) -> np.ndarray:
    """Fractions in [0, 1] -> RGB, white (none) through blue to dark blue (all)."""
    low, high = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    return (low + np.clip(fractions, 0, 1)[..., None] * (high - low)).astype(np.uint8)


def confusion_image(confusion: np.ndarray) -> bytes:
    """A PNG heatmap of a confusion matrix: rows are true classes, columns predicted ones, each cell
    coloured by the fraction of its row (its true class's images) and, when there is room, showing its
    count; a labelled colour scale from 0 to 1 on the right."""
    classes = len(confusion)
    cell = max(2, min(CELL_PIXELS, 480 // max(classes, 1)))
    totals = confusion.sum(axis=1, keepdims=True)
    fractions = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    side = classes * cell
    height = max(side, 120)
    caption_width = 6 * max(len(line) for line in CAPTION) + 4  # the default bitmap font: 6 pixels a character
    canvas = np.full([height + 30, max(side + SCALE_WIDTH, caption_width), 3], 255, np.uint8)
    canvas[:side, :side] = np.kron(_colour(fractions), np.ones([cell, cell, 1], np.uint8))
    bar_top, bar_height = 5, height - 10
    canvas[bar_top:bar_top + bar_height, side + 10:side + 25] = _colour(np.linspace(1, 0, bar_height))[:, None, :]
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for line in range(classes + 1 if cell >= 6 else 0):  # grid lines between cells, when they leave room
        draw.line([(0, line * cell), (side, line * cell)], fill=(200, 200, 200))
        draw.line([(line * cell, 0), (line * cell, side)], fill=(200, 200, 200))
    if cell >= 24:
        for (row, column), count in np.ndenumerate(confusion):
            ink = (255, 255, 255) if fractions[row, column] > 0.5 else (0, 0, 0)
            draw.text((column * cell + 3, row * cell + cell // 2 - 5), str(count), fill=ink)
    draw.rectangle([side + 10, bar_top, side + 25, bar_top + bar_height - 1], outline=(0, 0, 0))
    for fraction in (1.0, 0.5, 0.0):
        y = bar_top + round((1 - fraction) * (bar_height - 1))
        draw.line([(side + 25, y), (side + 29, y)], fill=(0, 0, 0))
        draw.text((side + 31, y - 5), f"{fraction:g}", fill=(0, 0, 0))
    for index, line in enumerate(CAPTION):
        draw.text((2, height + 3 + 13 * index), line, fill=(0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def eval_summary(results: dict[str, SplitResult]) -> tf1.Summary:
    """Every evaluated split's ``SPLIT/loss``, ``SPLIT/accuracy`` and ``SPLIT/top_k_accuracy`` scalars
    and its ``SPLIT/confusion_matrix`` image."""
    values = [tf1.Summary.Value(tag=f"{split}/{key}", simple_value=getattr(result, key))
              for split, result in results.items() for key in ("loss", "accuracy", "top_k_accuracy")]
    for split, result in results.items():
        png = confusion_image(result.confusion)
        width, height = Image.open(io.BytesIO(png)).size
        values.append(tf1.Summary.Value(tag=f"{split}/confusion_matrix", image=tf1.Summary.Image(
            height=height, width=width, colorspace=3, encoded_image_string=png)))
    return tf1.Summary(value=values)


# --- the run's evaluations -----------------------------------------------------------------------------
def metric_value(metric: str, results: dict[str, SplitResult]) -> float:
    """``val.accuracy`` (a key of vocab.EVALUATION_METRICS) read from an evaluation."""
    split, key = metric.split(".")
    return float(getattr(results[split], key))


def improves(metric: str, value: float, best: Optional[float], min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta``, in the direction ``metric`` is better."""
    if best is None:
        return True
    return value > best + min_delta if EVALUATION_METRICS[metric] == "max" else value < best - min_delta


class EvaluationHistory:
    """The run's evaluations so far: the lines of metrics.jsonl (one per evaluation, scalars only), the
    best value of ``train.keep_best``'s metric, and early stopping's count of evaluations without an
    improvement. Its :meth:`state` goes into each checkpoint's progress, so a resumed run carries on
    exactly where the checkpoint left off."""

    def __init__(self, path: Path, train_cfg: TrainConfig, start_step: int = 0, state: Optional[dict] = None) -> None:
        """``start_step``: the step training starts from (0, or the checkpoint resumed); the lines of an
        earlier process after it are dropped (those evaluations are made again). ``state``: what
        :meth:`state` returned when that checkpoint was saved."""
        self.path = Path(path)
        self.keep_best = train_cfg.keep_best
        self.stopping = train_cfg.early_stopping
        self.lines: list[dict] = []
        if self.path.is_file():
            lines = [json.loads(text) for text in self.path.read_text().splitlines() if text.strip()]
            self.lines = [line for line in lines if line["step"] <= start_step]
        state = state or {}
        best = state.get("best")
        self.best: Optional[dict] = best if best and best["metric"] == self.keep_best else None
        early = state.get("early_stopping")
        self.early: Optional[dict] = None
        if self.stopping.metric is not None:
            fresh = {"metric": self.stopping.metric, "best_value": None, "best_step": None,
                     "evaluations_without_improvement": 0, "stopped_at_step": None}
            self.early = early if early and early["metric"] == self.stopping.metric else fresh
        self.last: Optional[tuple[int, dict[str, SplitResult]]] = None  # this process's latest evaluation

    @property
    def steps(self) -> list[int]:
        return [line["step"] for line in self.lines]

    @property
    def stopped(self) -> bool:
        """Whether early stopping ended the run."""
        return self.early is not None and self.early["stopped_at_step"] is not None

    def add(self, step: int, results: dict[str, SplitResult]) -> bool:
        """Record an evaluation at ``step`` (metrics.jsonl rewritten); True when it is the best so far
        by ``train.keep_best`` (the caller saves it)."""
        self.last = (step, results)
        self.lines = [line for line in self.lines if line["step"] != step]
        self.lines.append({"step": step, **{split: result.scalars() for split, result in results.items()}})
        write_text_atomically(self.path, "".join(json.dumps(line, allow_nan=False) + "\n" for line in self.lines))
        if self.early is not None:
            value = metric_value(self.early["metric"], results)
            if improves(self.early["metric"], value, self.early["best_value"], self.stopping.min_delta):
                self.early.update(best_value=value, best_step=step, evaluations_without_improvement=0)
            else:
                self.early["evaluations_without_improvement"] += 1
                if self.early["evaluations_without_improvement"] >= self.stopping.patience:
                    self.early["stopped_at_step"] = step
                    log.info("Early stopping at step %d: %s has not improved on %.4g (step %d) by more than %g "
                             "for %d evaluations.", step, self.early["metric"], self.early["best_value"],
                             self.early["best_step"], self.stopping.min_delta, self.stopping.patience)
        if self.keep_best is None:
            return False
        value = metric_value(self.keep_best, results)
        if not improves(self.keep_best, value, self.best["value"] if self.best else None):
            return False
        self.best = {"metric": self.keep_best, "value": value, "step": step}
        return True

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the history (metrics.jsonl itself stays on disk)."""
        return {"best": self.best, "early_stopping": self.early}

    def early_stopping_metrics(self) -> Optional[dict[str, Any]]:
        """metrics.json's ``early_stopping`` section (None when it is off)."""
        if self.early is None:
            return None
        return {"metric": self.early["metric"], "patience": self.stopping.patience,
                "min_delta": self.stopping.min_delta, "stopped_at_step": self.early["stopped_at_step"],
                "best_step": self.early["best_step"], "best_value": self.early["best_value"]}
