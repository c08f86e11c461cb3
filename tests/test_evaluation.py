"""Evaluation people can cite: per-class accuracy, top-k, the confusion matrix and misclassified images
agreeing with the accuracy; metrics.jsonl; train.keep_best exporting the best checkpoint; early stopping.
Mechanics, not what is learnt: the runs are conftest's tiny profile."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from conftest import CrashBeforeStep, run_pipeline, tiny_config
from omegaconf import OmegaConf

from finetune import graphs
from finetune.compat import tf
from finetune.config import TrainConfig
from finetune.training.evaluate import CELL_PIXELS, EvaluationHistory, confusion_image, top_k_hits
from finetune.data import demo_images
from finetune.weights.readers import read_checkpoint

QUICK = ("export.enabled=false", "train.checkpoint_every=1000")


def _config(cache: Path, data: Path, *overrides: str):
    return tiny_config(cache, data, *QUICK, *overrides)


def _json(path: Path):
    return json.loads(path.read_text())


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def test_top_k_hits_counts_ties_in_and_every_class_when_k_covers_them():
    logits = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 1.0, 5.0], [1.0, 2.0, 3.0, 4.0]])
    labels = np.array([2, 1, 0])
    assert top_k_hits(logits, labels, 1).tolist() == [False, False, False]
    assert top_k_hits(logits, labels, 2).tolist() == [False, True, False]  # a tie with the 2nd counts in
    assert top_k_hits(logits, labels, 3).tolist() == [True, True, False]
    assert top_k_hits(logits, labels, 4).tolist() == [True, True, True]
    assert top_k_hits(logits, np.argmax(logits, axis=1), 1).all()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_the_confusion_image_colours_each_cell_by_its_rows_fraction_and_is_kept_per_matrix():
    names = ["cat", "dog", "fox"]
    diagonal = np.diag([4, 5, 6])
    png = confusion_image(diagonal, names)
    assert confusion_image(diagonal.copy(), list(names)) is png  # the same matrix again: the image kept
    pixels = _pixels(png)
    # The cells' corner: the margin carrying the names; sample each cell away from its count and grid lines.
    margin = pixels.shape[0] - 30 - max(3 * CELL_PIXELS, 120)
    def cell(row: int, column: int) -> np.ndarray:
        return pixels[margin + row * CELL_PIXELS + CELL_PIXELS - 6, margin + column * CELL_PIXELS + CELL_PIXELS - 6]
    assert all((cell(i, i) == (8, 48, 107)).all() for i in range(3))  # the whole row: the darkest blue
    assert all((cell(i, j) == 255).all() for i in range(3) for j in range(3) if i != j)  # none: white
    half = np.array([[2, 2, 0], [0, 5, 0], [0, 0, 6]])
    changed = _pixels(confusion_image(half, names))
    assert changed.shape == pixels.shape and (changed != pixels).any()
    row_half = changed[margin + CELL_PIXELS - 6, margin + CELL_PIXELS - 6]
    white, darkest = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    assert (row_half == np.floor(white + 0.5 * (darkest - white))).all(), row_half  # half its row
    # Without names there is no margin: the cells start at the top left corner.
    assert _pixels(confusion_image(diagonal)).shape[0] == pixels.shape[0] - margin


@pytest.mark.slow
def test_per_class_confusion_top_k_and_misclassified_agree_with_the_accuracy(demo_cache, tiny_data, tmp_path):
    metrics = run_pipeline(_config(demo_cache, tiny_data, "train.steps=4", "train.top_k=2", "train.eval_every=null"),
                           tmp_path)
    confusion = _json(tmp_path / "confusion_matrix.json")
    misclassified = _json(tmp_path / "misclassified.json")
    classes = sorted(demo_images.TARGET_CLASSES)
    root = tiny_data
    assert sorted(confusion) == sorted(misclassified) == ["test", "val"]
    for split in ("val", "test"):
        result, matrix = metrics[split], np.array(confusion[split]["matrix"])
        assert confusion[split]["classes"] == classes and matrix.shape == (len(classes), len(classes))
        assert matrix.sum() == result["images"] > 0
        assert np.trace(matrix) / matrix.sum() == result["accuracy"]
        per_class = result["per_class"]
        assert list(per_class) == classes
        assert sum(entry["support"] for entry in per_class.values()) == result["images"]
        for index, name in enumerate(classes):  # a class's row is its support, its column what was predicted as it
            assert per_class[name]["support"] == matrix[index].sum()
            if matrix[index].sum():
                assert per_class[name]["recall"] == matrix[index, index] / matrix[index].sum()
            if matrix[:, index].sum():
                assert per_class[name]["precision"] == matrix[index, index] / matrix[:, index].sum()
        assert result["top_k"] == 2 and 1 >= result["top_k_accuracy"] >= result["accuracy"]
        wrong = misclassified[split]
        assert len(wrong) == result["images"] - np.trace(matrix) > 0
        assert [entry["file"] for entry in wrong] == sorted(entry["file"] for entry in wrong)
        for entry in wrong:
            assert entry["predicted"] != entry["true"] and 0 < entry["probability"] <= 1
            assert (root / entry["file"]).is_file() and entry["file"].split("/")[0] == entry["true"]
        # The same mistakes, counted by the confusion matrix's off-diagonal cells.
        counted = np.zeros_like(matrix)
        for entry in wrong:
            counted[classes.index(entry["true"]), classes.index(entry["predicted"])] += 1
        assert np.array_equal(counted, matrix - np.diag(np.diag(matrix)))
    # eval_every=null: one evaluation, the final one, in metrics.jsonl; scalars only, of validation only (the test
    # split is evaluated once, for metrics.json).
    (line,) = _lines(tmp_path / "metrics.jsonl")
    assert line["step"] == 4 and "test" not in line and metrics["test"]["images"] > 0
    assert line["val"] == {key: metrics["val"][key] for key in ("loss", "accuracy", "balanced_accuracy", "macro_f1",
                                                                "images", "top_k_accuracy", "top_k")}
    assert [phase["name"] for phase in _json(tmp_path / "phases.json")] == ["train"]


@pytest.mark.slow  # tiny_run's
def test_the_default_evaluates_the_validation_split_once_per_epoch(tiny_run):
    run_dir, metrics = tiny_run
    assert TrainConfig().eval_every == "epoch"  # tiny_run sets it, as the tiny profile turns it off
    images = len(_json(run_dir / "splits.json")["splits"]["train"])
    batch, steps = OmegaConf.load(run_dir / "config.yaml").data.batch_size, metrics["steps"]
    # epoch e ends at the first step whose batches reach e * images; the last step is evaluated too
    epoch_ends = {math.ceil(epoch * images / batch) for epoch in range(1, steps * batch // images + 1)}
    lines = _lines(run_dir / "metrics.jsonl")
    assert [line["step"] for line in lines] == sorted(epoch_ends | {steps})
    assert min(epoch_ends) < steps  # an epoch ends before the last step: there is something to see
    assert all(sorted(line) == ["step", "val"] for line in lines)  # no test numbers during training
    assert lines[-1]["val"]["accuracy"] == metrics["val"]["accuracy"]


# Two phases: the second one's learning rate is far too high, so the best evaluation comes before the end.
# Evaluations at 2, 4, 6 and 8; checkpoints at 4 (the end of the first phase), 5 and 8: a crash before step 8
# loses the evaluation at 6.
SPOILED = ("train.steps=null", "train.eval_every=2", "train.checkpoint_every=5",
           "train.phases=[{name: good, steps: 4}, {name: spoiled, steps: 4, learning_rate: 20.0}]",
           "train.keep_best=val.loss", "train.top_k=7", "export.enabled=true", "export.saved_model=false")


@pytest.fixture(scope="module")
def spoiled(demo_cache, tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    """The uninterrupted run of :data:`SPOILED`: its directory and metrics, shared by the module's tests
    (never write into it)."""
    run_dir = tmp_path_factory.mktemp("spoiled")
    return run_dir, run_pipeline(_config(demo_cache, tiny_data, *SPOILED), run_dir)


@pytest.mark.slow
def test_keep_best_exports_the_best_checkpoint(spoiled):
    run_dir, metrics = spoiled
    lines = _lines(run_dir / "metrics.jsonl")
    assert [line["step"] for line in lines] == [2, 4, 6, 8]  # every eval_every steps and the last one
    losses = {line["step"]: line["val"]["loss"] for line in lines}
    best_step = min(losses, key=losses.get)
    assert best_step < 8, losses  # the setup must spoil the last steps for the test to mean anything
    best = _json(run_dir / "checkpoints/best/best.json")
    assert best == metrics["best"] == {"metric": "val.loss", "value": losses[best_step], "step": best_step,
                                       "checkpoint": f"checkpoints/best/model.ckpt-{best_step}"}
    assert metrics["val"]["loss"] == best["value"] and metrics["steps"] == 8
    assert metrics["checkpoint"] == "checkpoints/model.ckpt-8"
    assert metrics["val"]["top_k"] == 5 and metrics["val"]["top_k_accuracy"] == 1.0  # k capped at the classes
    # The exported graph's constants are the best checkpoint's head weights, not the last ones.
    frozen = graphs.load_graph_def(run_dir / "export/frozen_graph.pb")
    constants = {node.name: tf.make_ndarray(node.attr["value"].tensor) for node in frozen.node if node.op == "Const"}
    best_weights, last_weights = (read_checkpoint(str(run_dir / path)) for path in (best["checkpoint"],
                                                                                      metrics["checkpoint"]))
    head = [name for name in best_weights if name.startswith("head/") and name in constants]
    assert head
    for name in head:
        assert np.array_equal(constants[name], best_weights[name]), name
    assert any(not np.array_equal(best_weights[name], last_weights[name]) for name in head)


@pytest.mark.slow
def test_early_stopping_stops_after_patience_evaluations_without_improvement(demo_cache, tiny_data, tmp_path,
                                                                            caplog):
    cfg = _config(demo_cache, tiny_data, "train.steps=40", "train.eval_every=1",
                  "train.early_stopping.metric=val.accuracy", "train.early_stopping.patience=2",
                  "train.early_stopping.min_delta=2")  # accuracy never gains 2
    metrics = run_pipeline(cfg, tmp_path)
    assert metrics["steps"] == 3 and metrics["checkpoint"] == "checkpoints/model.ckpt-3"
    assert (tmp_path / "checkpoints/model.ckpt-3.index").is_file()
    lines = _lines(tmp_path / "metrics.jsonl")
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert metrics["early_stopping"] == {"metric": "val.accuracy", "patience": 2, "min_delta": 2.0,
                                         "stopped_at_step": 3, "best_step": 1,
                                         "best_value": lines[0]["val"]["accuracy"]}
    assert metrics["val"]["accuracy"] == lines[-1]["val"]["accuracy"]  # the final weights: no keep_best
    before = _files(tmp_path)
    with caplog.at_level("INFO", logger="finetune"):
        again = run_pipeline(cfg, tmp_path)
    assert any("finished already" in record.getMessage() for record in caplog.records)
    assert _files(tmp_path) == before and again == _json(tmp_path / "metrics.json")


@pytest.mark.slow
def test_a_crashed_run_redoes_the_evaluations_after_its_checkpoint(demo_cache, tiny_data, tmp_path, spoiled):
    """Evaluations after the last checkpoint are dropped from metrics.jsonl on resume and made again, so
    the history, the best checkpoint, metrics.json and the export end as the uninterrupted run's."""
    cfg = _config(demo_cache, tiny_data, *SPOILED)
    whole, _ = spoiled
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="went away"):
        run_pipeline(cfg, crashed, listeners=[CrashBeforeStep(8)])
    assert [line["step"] for line in _lines(crashed / "metrics.jsonl")] == [2, 4, 6]  # 6: after checkpoint 5
    assert sorted(p.name for p in (crashed / "checkpoints").glob("*.progress.json")) == [
        "model.ckpt-4.progress.json", "model.ckpt-5.progress.json"]
    # Resuming from checkpoint 5 starts from the history up to it (re-made evaluations replacing the same
    # steps would hide a stale line here, so it is checked before they run).
    assert EvaluationHistory(crashed / "metrics.jsonl", cfg.train, 5).steps == [2, 4]
    resumed = run_pipeline(cfg, crashed)
    assert resumed["timings"]["resumed_from_step"] == 5
    for name in ("metrics.json", "metrics.jsonl", "checkpoints/best/best.json", "export/val_predictions.json"):
        assert (whole / name).read_bytes() == (crashed / name).read_bytes(), name
    # The Saver keeps 3 checkpoints (4, 5, 8); their progress files alone are left.
    assert sorted(p.name for p in (crashed / "checkpoints").glob("*.progress.json")) == [
        f"model.ckpt-{step}.progress.json" for step in (4, 5, 8)]
