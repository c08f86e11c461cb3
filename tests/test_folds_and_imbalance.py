"""Repeats, folds and imbalanced data: k-fold cross-validation over the training and validation pool,
per-class loss weights, class-balanced sampling, and what a run records of them (splits.json, run.json,
predictions.jsonl)."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, compose_config, run_pipeline, tiny_config, tiny_overrides

from finetune.compat import tf, tf1
from finetune.config import DataConfig
from finetune.data.datasets import training_order
from finetune.data.examples import Example, LabelledImages
from finetune.data.folds import apply_fold, assign_folds
from finetune.errors import FinetuneError
from finetune.training.objective import class_weights, objective
from finetune.validate import problems

# --- folds ----------------------------------------------------------------------------------------------------


def labelled(counts: dict[int, int], test: int = 5) -> LabelledImages:
    """A data set with ``counts[label]`` training-or-validation examples per class and ``test`` test examples."""
    pool = [Example(f"c{label}/{index:03d}.png", label, f"/x/c{label}/{index}.png", 1)
            for label, count in counts.items() for index in range(count)]
    train, val = pool[::2], pool[1::2]  # how the source split them does not matter to the folds
    tests = [Example(f"test/{index}.png", index % len(counts), f"/x/t{index}.png", 1) for index in range(test)]
    return LabelledImages("image_folder", Path("/x"), [f"c{label}" for label in counts],
                          {"train": train, "val": val, "test": tests})


def folds_cfg(folds, fold) -> DataConfig:
    return compose_config([f"data.folds={folds}", f"data.fold={fold}"]).data


def test_folds_are_disjoint_cover_the_pool_are_stratified_and_leave_the_test_split_alone():
    data = labelled({0: 23, 1: 11, 2: 7})
    pool = {e.key for e in data.examples["train"] + data.examples["val"]}
    vals = []
    for fold in range(5):
        folded = apply_fold(data, folds_cfg(5, fold))
        train, val = {e.key for e in folded.examples["train"]}, {e.key for e in folded.examples["val"]}
        assert not train & val and train | val == pool and folded.fold == (fold, 5)
        assert folded.examples["test"] == data.examples["test"]
        vals.append(val)
        for label, count in {0: 23, 1: 11, 2: 7}.items():  # each class within one example of its share
            in_fold = sum(e.label == label for e in folded.examples["val"])
            assert abs(in_fold - count / 5) < 1, (fold, label, in_fold)
    assert set().union(*vals) == pool and sum(map(len, vals)) == len(pool)  # every example validates once
    sizes = sorted(map(len, vals))
    assert sizes[-1] - sizes[0] <= 3  # within one example per class


def test_an_added_image_moves_at_most_k_minus_1_others_each_to_a_neighbouring_fold():
    before = labelled({0: 40, 1: 17})
    pool = before.examples["train"] + before.examples["val"]
    folds = dict(zip((e.key for e in pool), assign_folds(pool, 5)))
    for added in range(6):  # several draws of where the new key falls in the hash order
        grown = pool + [Example(f"c0/new{added}.png", 0, "/x/new.png", 1)]
        after = dict(zip((e.key for e in grown), assign_folds(grown, 5)))
        moved = {key: (folds[key], after[key]) for key in folds if after[key] != folds[key]}
        assert len(moved) <= 4, moved
        assert all((new - old) % 5 in (1, 4) for old, new in moved.values()), moved
        assert all(key.startswith("c0/") for key in moved)  # the other class is untouched


def test_folds_depend_on_the_examples_not_on_the_order_a_source_lists_them():
    data = labelled({0: 12, 1: 9})
    pool = data.examples["train"] + data.examples["val"]
    first = dict(zip((e.key for e in pool), assign_folds(pool, 3)))
    shuffled = list(reversed(pool))
    assert dict(zip((e.key for e in shuffled), assign_folds(shuffled, 3))) == first


def test_bad_folds_are_one_message():
    assert any("'data.fold' is 5" in p and "range(5)" in p
               for p in problems(compose_config(["data.folds=5", "data.fold=5"])))
    assert any("'data.folds' is 1" in p for p in problems(compose_config(["data.folds=1"])))
    assert any("'data.fold' is 2" in p and "data.folds is null" in p for p in problems(compose_config(["data.fold=2"])))
    with pytest.raises(FinetuneError, match=r"'data.folds' is 5.*fewer than 5 of some class: c1 \(4\).*data.folds=4"):
        apply_fold(labelled({0: 10, 1: 4}), folds_cfg(5, 0))


FOLD_EPOCHS = 2.5  # of the tiny profile's fold of about 43 training images: 4 steps of 32, as the tiny profile


@pytest.mark.slow
def test_a_cross_validation_run_records_its_splits_and_predictions(demo_cache, tiny_data, tmp_path, caplog):
    run_pipeline(tiny_config(demo_cache, tiny_data, "export.enabled=false"), tmp_path / "plain")
    # Its length in epochs of the fold's training part (the other folds of the pool), rounded up to whole steps.
    fold_cfg = tiny_config(demo_cache, tiny_data, "data.folds=3", "data.fold=1", f"train.epochs={FOLD_EPOCHS}")
    metrics = run_pipeline(fold_cfg, tmp_path / "fold")
    # export.enabled is null: a fold's model is one of K estimates, not exported unless asked
    assert "export" not in metrics and not (tmp_path / "fold/export").exists()
    plain_splits = json.loads((tmp_path / "plain/splits.json").read_text())
    splits = json.loads((tmp_path / "fold/splits.json").read_text())
    assert splits["fold"] == {"fold": 1, "folds": 3} and plain_splits["fold"] is None
    assert splits["splits"]["test"] == plain_splits["splits"]["test"]  # the test split is the same in every fold
    assert sorted(splits["splits"]["train"] + splits["splits"]["val"]) == sorted(
        plain_splits["splits"]["train"] + plain_splits["splits"]["val"])
    trained = len(splits["splits"]["train"])
    assert metrics["steps"] == math.ceil(FOLD_EPOCHS * trained / fold_cfg.data.batch_size)
    (phase,) = json.loads((tmp_path / "fold/phases.json").read_text())
    assert (phase["epochs"], phase["last_step"]) == (FOLD_EPOCHS, metrics["steps"])
    with caplog.at_level("INFO", logger="finetune"):  # run again: known finished once the data gives its length
        assert run_pipeline(fold_cfg, tmp_path / "fold")["steps"] == metrics["steps"]
    assert "This run finished already" in caplog.text
    lines = [json.loads(line) for line in (tmp_path / "fold/predictions.jsonl").read_text().splitlines()]
    for split in ("val", "test"):
        rows = [line for line in lines if line["split"] == split]
        assert [row["example"] for row in rows] == splits["splits"][split]
        accuracy = np.mean([row["predicted"] == row["label"] for row in rows])
        assert accuracy == pytest.approx(metrics[split]["accuracy"])
        assert all(abs(sum(row["probabilities"]) - 1) < 1e-5 for row in rows)
        assert all(row["predicted"] == splits["classes"][int(np.argmax(row["probabilities"]))] for row in rows)


# --- class weights ---------------------------------------------------------------------------------------------


def test_balanced_weights_are_scikit_learn_s_and_a_mapping_names_classes():
    utils = pytest.importorskip("sklearn.utils.class_weight")
    labels = [0] * 6 + [1] * 3 + [2]
    expected = utils.compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=np.array(labels))
    assert class_weights("balanced", ["a", "b", "c"], labels) == pytest.approx(tuple(expected))
    assert class_weights({"b": 3.0}, ["a", "b", "c"], labels) == (1.0, 3.0, 1.0)
    assert class_weights(None, ["a", "b"], labels) is None
    with pytest.raises(FinetuneError, match=r"'train.class_weights' names class\(es\) \['bee'\].*Did you mean b\?"):
        class_weights({"bee": 2.0}, ["a", "b", "c"], labels)
    assert any("train.class_weights" in p for p in problems(compose_config(["train.class_weights=heavy"])))
    assert any("train.class_weights" in p for p in problems(compose_config(["+train.class_weights.a=-1"])))


def test_class_weights_weight_each_example_s_loss_term():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, -1.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    labels = np.array([0, 2, 1, 1])
    weights = (1.0, 4.0, 0.5)
    with tf.Graph().as_default(), tf1.Session() as sess:
        plain, _ = objective(tf.constant(logits), tf.constant(labels, tf.int64))
        weighted, _ = objective(tf.constant(logits), tf.constant(labels, tf.int64), weights=weights)
        plain, weighted = sess.run([plain, weighted])
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    terms = -log_probs[np.arange(4), labels]
    assert plain == pytest.approx(terms.mean(), rel=1e-6)
    assert weighted == pytest.approx((terms * np.take(weights, labels)).sum() / 4, rel=1e-6)


# --- balanced sampling -------------------------------------------------------------------------------------------


def _draws(labels: list[int], sampling: str, seed: int, skip: int, count: int) -> list[int]:
    cfg = compose_config([f"data.sampling={sampling}", "data.batch_size=1"]).data
    with tf.Graph().as_default(), tf1.Session() as sess:
        dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(labels)), tf.constant(labels, tf.int64)))
        ordered = training_order(dataset, labels, cfg, seed, skip).take(count)
        element = tf1.data.make_one_shot_iterator(ordered).get_next()
        return [int(sess.run(element)[1][1]) for _ in range(count)]


def test_balanced_sampling_draws_every_class_equally_often_seeded_and_resumable():
    labels = [0] * 45 + [1] * 4 + [2]
    natural, balanced = Counter(_draws(labels, "natural", 3, 0, 600)), Counter(_draws(labels, "balanced", 3, 0, 600))
    assert natural[0] > 500  # as drawn: nine in ten of class 0
    assert all(abs(balanced[label] - 200) < 45 for label in range(3)), balanced  # each about a third
    assert _draws(labels, "balanced", 3, 0, 60) == _draws(labels, "balanced", 3, 0, 60)  # seeded
    assert _draws(labels, "balanced", 4, 0, 60) != _draws(labels, "balanced", 3, 0, 60)
    assert _draws(labels, "balanced", 3, 0, 60)[25:] == _draws(labels, "balanced", 3, 25, 35)  # a resume goes on


@pytest.mark.slow
def test_imbalance_settings_train_and_are_recorded(demo_cache, tiny_data, tmp_path):
    result = cli(["finetune", *tiny_overrides(demo_cache, tiny_data, "export.enabled=false", "data.sampling=balanced",
                                              "train.class_weights=balanced", f"hydra.run.dir={tmp_path}/run")],
                 tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "run/run.json").read_text())["data"]
    assert record["sampling"] == "balanced" and set(record["class_weights"]) == set(record["classes"])
    counts = Counter(key.split("/")[0]
                     for key in json.loads((tmp_path / "run/splits.json").read_text())["splits"]["train"])
    total = sum(counts.values())
    for name, weight in record["class_weights"].items():
        assert weight == pytest.approx(total / (len(counts) * counts[name]))
