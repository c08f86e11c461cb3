"""Figures of grouped runs (matplotlib; each as PNG and PDF): learning curves with a band over repeats,
per-class F1 with intervals, and each group's confusion matrix with the class names.

- ``curves_<metric>``: the validation metric at every evaluation (metrics.jsonl) and the training loss and
  accuracy (the runs' TensorBoard scalars), per group: the mean over its repeats, with a band from the
  lowest to the highest repeat;
- ``per_class_f1_<split>``: each class's F1 per group, mean over repeats with its 95% interval;
- ``confusion_<group>``: the test (else validation) confusion matrix of a group's first finished run.

Reading TensorBoard's event files loads TensorFlow, so these are drawn only when asked for.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from finetune.analysis import statistics
from finetune.analysis.groups import Group

CURVE_METRICS = ("val.accuracy", "val.loss")
TRAIN_TAGS = ("train/loss", "train/accuracy")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt

    return plt


def _save(figure, folder: Path, name: str) -> list[Path]:
    from finetune.files import write_bytes_atomically
    import io

    written = []
    for suffix in ("png", "pdf"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=suffix, bbox_inches="tight", dpi=150, metadata={"CreationDate": None}
                       if suffix == "pdf" else None)
        path = folder / f"{name}.{suffix}"
        write_bytes_atomically(path, buffer.getvalue())
        written.append(path)
    return written


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:80] or "group"


def _band(series: Sequence[dict[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps every series has, and the mean, lowest and highest value there."""
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    values = np.array([[s[step] for step in steps] for s in series], np.float64)
    return np.array(steps), values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def evaluation_curve(job, metric: str) -> dict[int, float]:
    split, key = metric.split(".", 1)
    return {int(line["step"]): float(line[split][key]) for line in job.history()
            if isinstance(line.get(split), dict) and line[split].get(key) is not None}


def training_curve(job, tag: str) -> dict[int, float]:
    """A training scalar from the run's TensorBoard events: step -> value (the last written at a step)."""
    from tensorboard.backend.event_processing import event_accumulator

    folder = job.path / "tensorboard"
    if not folder.is_dir():
        return {}
    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    if tag not in accumulator.Tags().get("scalars", []):
        return {}
    return {int(event.step): float(event.value) for event in accumulator.Scalars(tag)}


def draw_curves(groups: Sequence[Group], folder: Path) -> list[Path]:
    plt = _pyplot()
    written = []
    panels = [(metric, evaluation_curve) for metric in CURVE_METRICS] + [(tag, training_curve) for tag in TRAIN_TAGS]
    for name, read in panels:
        figure, axes = plt.subplots(figsize=(6, 4))
        drawn = False
        for group in groups:
            series = [curve for curve in (read(job, name) for job in group.finished) if curve]
            if not series:
                continue
            steps, mean, low, high = _band(series)
            if not len(steps):
                continue
            axes.plot(steps, mean, label=f"{group.label} (n={len(series)})")
            axes.fill_between(steps, low, high, alpha=0.2)
            drawn = True
        if drawn:
            axes.set_xlabel("step")
            axes.set_ylabel(name)
            axes.set_title(f"{name}: mean over repeats, band from lowest to highest")
            axes.legend(fontsize="small")
            written += _save(figure, folder, f"curves_{_slug(name)}")
        plt.close(figure)
    return written


def draw_per_class_f1(groups: Sequence[Group], folder: Path, split: str) -> list[Path]:
    plt = _pyplot()
    classes: list[str] = []
    for group in groups:
        for job in group.finished:
            classes += [name for name in ((job.metrics or {}).get(split) or {}).get("per_class", {})
                        if name not in classes]
    if not classes:
        return []
    figure, axes = plt.subplots(figsize=(max(6, len(classes) * 0.6 * max(1, len(groups))), 4))
    width = 0.8 / max(1, len(groups))
    for index, group in enumerate(groups):
        means, errors = [], []
        for name in classes:
            values = [job.metrics[split]["per_class"][name]["f1"] for job in group.finished
                      if ((job.metrics.get(split) or {}).get("per_class") or {}).get(name, {}).get("f1") is not None]
            estimate = statistics.estimate(values, folds=group.folds()) if values else None
            means.append(np.nan if estimate is None else estimate.mean)
            errors.append(0.0 if estimate is None or estimate.half_width is None else estimate.half_width)
        positions = np.arange(len(classes)) + index * width
        axes.bar(positions, means, width, yerr=errors, capsize=3, label=f"{group.label} (n={len(group.finished)})")
    axes.set_xticks(np.arange(len(classes)) + width * (len(groups) - 1) / 2)
    axes.set_xticklabels(classes, rotation=45, ha="right")
    axes.set_ylim(0, 1)
    axes.set_ylabel(f"{split} F1")
    axes.set_title(f"Per-class F1 ({split}): mean over repeats, 95% interval")
    axes.legend(fontsize="small")
    written = _save(figure, folder, f"per_class_f1_{split}")
    plt.close(figure)
    return written


def draw_confusion(job, folder: Path, name: str) -> list[Path]:
    """The confusion matrix of one run (test split, else validation), class names on both axes."""
    path = job.path / "confusion_matrix.json"
    if not path.is_file():
        return []
    report = json.loads(path.read_text())
    split = "test" if "test" in report else "val"
    matrix, classes = np.array(report[split]["matrix"]), report[split]["classes"]
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(max(4, len(classes) * 0.6), max(4, len(classes) * 0.6)))
    totals = matrix.sum(axis=1, keepdims=True)
    fractions = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    image = axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(classes)))
    axes.set_xticklabels(classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)))
    axes.set_yticklabels(classes)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if len(classes) <= 20:
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(count), ha="center", va="center",
                      color="white" if fractions[row, column] > 0.5 else "black", fontsize="small")
    figure.colorbar(image, ax=axes, label="fraction of the true class's images")
    axes.set_title(f"{split} confusion matrix: {job.label}")
    written = _save(figure, folder, f"confusion_{_slug(name)}")
    plt.close(figure)
    return written


def draw_figures(groups: Sequence[Group], folder: Path, splits: Sequence[str] = ("val", "test")) -> list[Path]:
    """Every figure of the module docstring into ``folder``; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = draw_curves(groups, folder)
    for split in splits:
        written += draw_per_class_f1(groups, folder, split)
    for group in groups:
        if group.finished:
            written += draw_confusion(group.finished[0], folder, group.label)
    return written
