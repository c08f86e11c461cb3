"""Evaluation: one pass over a held-out split, what it found (loss, top-1 and top-k accuracy, per-class
precision, recall and F1, the confusion matrix, the misclassified images), its TensorBoard summaries, and
the run's history of evaluations (metrics.jsonl, the best one, early stopping).

The pass runs the evaluation tower over the split's images or, in a run whose every phase trains from
cached features (nothing below the cut ever changes), the head over the split's cached features: the same
model on the same pixels, without running the backbone again at every evaluation.

With ``eval.tta``, the final evaluation also runs the TTA tower (:mod:`finetune.model.tta`) over each
split's images, always images: a view is of the pixels, so no cached feature can stand for it.
:func:`evaluate_tta` measures it like the plain pass, and metrics.json carries it as ``SPLIT.tta``.
"""
from __future__ import annotations

import functools
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from finetune.compat import tf, tf1
from finetune.config import TrainConfig
from finetune.data.examples import Example, LabelledImages
from finetune.files import write_text_atomically
from finetune.training.training_graph import TrainingGraph
from finetune.vocab import EVALUATION_METRICS

log = logging.getLogger(__name__)

# A split's numbers in metrics.jsonl and metrics.json (beside per_class there).
SCALARS = ("loss", "accuracy", "balanced_accuracy", "macro_f1", "images", "top_k_accuracy", "top_k")


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
    # Per example, in the split's order: its key, true label, and the model's probabilities [examples, classes].
    keys: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros([0], np.int64))
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros([0, 0], np.float32))

    def per_class(self) -> list[dict[str, Any]]:
        """Per class (in label order): precision (None when nothing was predicted as it), recall (None when the
        split has none of it), F1 (2 TP / (2 TP + FP + FN); None when it neither occurs nor is predicted) and
        support (its images in the split)."""
        rows = []
        for label in range(len(self.confusion)):
            hits = int(self.confusion[label, label])
            support, predicted = int(self.confusion[label].sum()), int(self.confusion[:, label].sum())
            misses_and_false = support + predicted
            rows.append({"precision": hits / predicted if predicted else None,
                         "recall": hits / support if support else None,
                         "f1": 2 * hits / misses_and_false if misses_and_false else None,
                         "support": support})
        return rows

    @property
    def balanced_accuracy(self) -> float:
        """The mean recall over the classes the split holds (scikit-learn's balanced_accuracy_score)."""
        return float(np.mean([row["recall"] for row in self.per_class() if row["support"]]))

    @property
    def macro_f1(self) -> float:
        """The mean F1 over the classes the split holds (classes it lacks do not count)."""
        return float(np.mean([row["f1"] for row in self.per_class() if row["support"]]))

    def scalars(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in SCALARS}


def top_k_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row, whether the true label is among the k highest logits: fewer than k classes score
    strictly higher than it (a tie with the k-th counts in, as tf.math.in_top_k does)."""
    true_logits = logits[np.arange(len(labels)), labels][:, None]
    return (logits > true_logits).sum(axis=1) < k


Batch = tuple[np.ndarray, np.ndarray, Sequence[bytes]]  # logits [n, classes], labels [n], keys [n]
HeldOutFeatures = Callable[[tf1.Session, str], np.ndarray]  # (session, split) -> its features at the cut


def image_batches(sess: tf1.Session, graph: TrainingGraph, split: str,
                  logits: Optional[tf.Tensor] = None) -> Iterator[Batch]:
    """The evaluation tower (or another model over the evaluation iterator's images, ``logits``) over
    ``split``'s images, batch by batch."""
    images = graph.images
    sess.run(images.eval_initializers[split])
    fetches = [images.eval.logits if logits is None else logits, images.eval_labels, images.eval_keys]
    while True:
        try:
            yield tuple(sess.run(fetches))
        except tf.errors.OutOfRangeError:
            return


def feature_batches(sess: tf1.Session, graph: TrainingGraph, examples: Sequence[Example],
                    features: np.ndarray, batch_size: int) -> Iterator[Batch]:
    """The head over the cached features of ``examples`` (in order), ``batch_size`` at a time: what the
    evaluation tower computes when nothing below the cut has changed, without the backbone."""
    tower = graph.features
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        logits = sess.run(tower.held_out_logits, {tower.held_out: features[start:start + batch_size]})
        yield (logits, np.array([example.label for example in batch], np.int64),
               [example.key.encode("utf-8") for example in batch])


def evaluate(batches: Iterable[Batch], num_classes: int, top_k: int) -> SplitResult:
    """What one pass over a split's batches found."""
    k = min(top_k, num_classes)
    confusion = np.zeros([num_classes, num_classes], np.int64)
    total_loss, correct, in_top_k, count, mistakes = 0.0, 0, 0, 0, []
    keys_seen, labels_seen, probabilities = [], [], []
    for logits, labels, keys in batches:
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
        keys_seen += [key.decode("utf-8") for key in keys]
        labels_seen.append(labels)
        probabilities.append(np.exp(log_probs))
    return SplitResult(loss=total_loss / count, accuracy=correct / count, images=count, top_k=k,
                       top_k_accuracy=in_top_k / count, confusion=confusion, mistakes=mistakes, keys=keys_seen,
                       labels=np.concatenate(labels_seen), probabilities=np.concatenate(probabilities))


def evaluate_all(sess: tf1.Session, splits: Sequence[str], graph: TrainingGraph, top_k: int, data: LabelledImages,
                 held_out_features: HeldOutFeatures, batch_size: int) -> dict[str, SplitResult]:
    """The held-out ``splits`` (val, test), each through the evaluation tower, or with
    ``graph.evaluates_features`` the head over ``held_out_features``, ``batch_size`` (``data.eval_batch_size``)
    at a time. Run it inside ``evaluation_weights``, so that it measures the weights that are exported."""
    num_classes = graph.num_classes
    results = {}
    for split in splits:
        if graph.evaluates_features:
            batches = feature_batches(sess, graph, data.examples[split], held_out_features(sess, split),
                                      batch_size)
        else:
            batches = image_batches(sess, graph, split)
        results[split] = evaluate(batches, num_classes, top_k)
    return results


def evaluate_tta(sess: tf1.Session, splits: Sequence[str], graph: TrainingGraph, top_k: int) -> dict[str, SplitResult]:
    """The held-out ``splits`` through the TTA tower (``graph.tta``), over their images. Run it inside
    ``evaluation_weights``, as :func:`evaluate_all`."""
    num_classes = graph.num_classes
    return {split: evaluate(image_batches(sess, graph, split, graph.tta.logits), num_classes, top_k)
            for split in splits}


def split_metrics(result: SplitResult, class_names: list[str], tta: Optional[SplitResult] = None,
                  views: Sequence[str] = ()) -> dict[str, Any]:
    """A split's section of metrics.json: its scalars and, per class, precision, recall, F1 and support; with
    ``tta`` (the split through the TTA ``views``) the same of it under ``tta``, beside the plain numbers."""
    section = {**result.scalars(), "per_class": dict(zip(class_names, result.per_class()))}
    if tta is not None:
        section["tta"] = {"views": list(views), **split_metrics(tta, class_names)}
    return section


def prediction_lines(results: dict[str, SplitResult], class_names: list[str],
                     tta: Optional[dict[str, SplitResult]] = None) -> str:
    """predictions.jsonl: one line per evaluated example (split, example key, true and predicted class, the
    probability of each class in class order), so any statistic can be computed again from the run directory.
    With ``tta`` (the same splits through the TTA tower): its prediction and probabilities too
    (``tta_predicted``, ``tta_probabilities``)."""
    lines = []
    for split, result in results.items():
        augmented = tta.get(split) if tta else None
        if augmented is not None and augmented.keys != result.keys:
            raise RuntimeError(f"the TTA pass over {split} saw other examples than the plain one")
        for index, (key, label, row) in enumerate(zip(result.keys, result.labels, result.probabilities)):
            line = {"split": split, "example": key, "label": class_names[int(label)],
                    "predicted": class_names[int(np.argmax(row))], "probabilities": [float(p) for p in row]}
            if augmented is not None:
                averaged = augmented.probabilities[index]
                line.update(tta_predicted=class_names[int(np.argmax(averaged))],
                            tta_probabilities=[float(p) for p in averaged])
            lines.append(json.dumps(line, allow_nan=False))
    return "".join(line + "\n" for line in lines)


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


def confusion_image(confusion: np.ndarray, class_names: Optional[Sequence[str]] = None) -> bytes:
    """A PNG heatmap of a confusion matrix: rows are true classes, columns predicted ones, each cell
    coloured by the fraction of its row (its true class's images) and, when there is room, showing its
    count; a labelled colour scale from 0 to 1 on the right; with ``class_names``, each row's name on the
    left and each column's above it (when the cells are tall enough to carry one). Made at every evaluation,
    where the matrix often repeats the last one: the image of a matrix is kept (:func:`_confusion_png`), and
    all but the cells is drawn once per class list (:func:`_frame`)."""
    counts = np.asarray(confusion, np.int64)
    return _confusion_png(counts.tobytes(), len(counts), None if class_names is None else tuple(class_names))


@functools.lru_cache(maxsize=4)  # the last few matrices (a 1000-class one is 8 MB)
def _confusion_png(counts: bytes, classes: int, class_names: Optional[tuple[str, ...]]) -> bytes:
    confusion = np.frombuffer(counts, np.int64).reshape(classes, classes)
    cell = max(2, min(CELL_PIXELS, 480 // max(classes, 1)))
    names = class_names if cell >= NAME_MIN_CELL else None
    frame, (left, top) = _frame(classes, cell, names)
    totals = confusion.sum(axis=1, keepdims=True)
    fractions = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    side = classes * cell
    canvas = frame.copy()
    canvas[top:top + side, left:left + side] = np.kron(_colour(fractions), np.ones([cell, cell, 1], np.uint8))
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for line in range(classes + 1 if cell >= 6 else 0):  # grid lines between cells, when they leave room
        draw.line([(left, top + line * cell), (left + side, top + line * cell)], fill=(200, 200, 200))
        draw.line([(left + line * cell, top), (left + line * cell, top + side)], fill=(200, 200, 200))
    if cell >= 24:
        for (row, column), count in np.ndenumerate(confusion):
            ink = (255, 255, 255) if fractions[row, column] > 0.5 else (0, 0, 0)
            draw.text((left + column * cell + 3, top + row * cell + cell // 2 - 5), str(count), fill=ink)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # made at every evaluation: fast beats small
    return buffer.getvalue()


@functools.lru_cache(maxsize=8)
def _frame(classes: int, cell: int, names: Optional[tuple[str, ...]]) -> tuple[np.ndarray, tuple[int, int]]:
    """The confusion image without its cells (the colour scale, the caption, the class names), and where the
    cells' top left corner is in it."""
    side = classes * cell
    height = max(side, 120)
    caption_width = 6 * max(len(line) for line in CAPTION) + 4  # the default bitmap font: 6 pixels a character
    canvas = np.full([height + 30, max(side + SCALE_WIDTH, caption_width), 3], 255, np.uint8)
    bar_top, bar_height = 5, height - 10
    canvas[bar_top:bar_top + bar_height, side + 10:side + 25] = _colour(np.linspace(1, 0, bar_height))[:, None, :]
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    draw.rectangle([side + 10, bar_top, side + 25, bar_top + bar_height - 1], outline=(0, 0, 0))
    for fraction in (1.0, 0.5, 0.0):
        y = bar_top + round((1 - fraction) * (bar_height - 1))
        draw.line([(side + 25, y), (side + 29, y)], fill=(0, 0, 0))
        draw.text((side + 31, y - 5), f"{fraction:g}", fill=(0, 0, 0))
    for index, line in enumerate(CAPTION):
        draw.text((2, height + 3 + 13 * index), line, fill=(0, 0, 0))
    if names is None:
        return np.asarray(image), (0, 0)
    image, margin = _with_class_names(image, cell, list(names))
    return np.asarray(image), (margin, margin)


NAME_MIN_CELL = 11  # cells shorter than a line of the bitmap font get no names
NAME_CHARS = 16  # longer class names are cut (with "~") in the image; the JSON reports have them whole


def _with_class_names(body: Image.Image, cell: int, names: list[str]) -> tuple[Image.Image, int]:
    """``body`` (the matrix at its top left) with the row names in a left margin and the column names,
    turned upright, in a top margin; and the margins' width."""
    shown = [name if len(name) <= NAME_CHARS else name[:NAME_CHARS - 1] + "~" for name in names]
    margin = 6 * max(len(name) for name in shown) + 8  # the bitmap font: 6 pixels a character
    image = Image.new("RGB", (body.width + margin, body.height + margin), (255, 255, 255))
    image.paste(body, (margin, margin))
    draw = ImageDraw.Draw(image)
    for index, name in enumerate(shown):
        draw.text((margin - 6 * len(name) - 4, margin + index * cell + cell // 2 - 5), name, fill=(0, 0, 0))
        label = Image.new("RGB", (margin - 4, 11), (255, 255, 255))
        ImageDraw.Draw(label).text((0, 0), name, fill=(0, 0, 0))
        image.paste(label.rotate(90, expand=True), (margin + index * cell + cell // 2 - 5, 2))
    return image, margin


def eval_summary(results: dict[str, SplitResult], class_names: Optional[Sequence[str]] = None) -> tf1.Summary:
    """Every evaluated split's ``SPLIT/loss``, ``SPLIT/accuracy`` and ``SPLIT/top_k_accuracy`` scalars
    and its ``SPLIT/confusion_matrix`` image."""
    values = [tf1.Summary.Value(tag=f"{split}/{key}", simple_value=getattr(result, key))
              for split, result in results.items() for key in ("loss", "accuracy", "top_k_accuracy")]
    for split, result in results.items():
        png = confusion_image(result.confusion, class_names)
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
