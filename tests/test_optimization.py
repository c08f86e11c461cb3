"""Optimization: learning-rate schedules and warmup, epochs, per-scope multipliers, gradient clipping,
optimizer state kept or reset across phases, label smoothing and the moving averages of the weights.

Most tests build a tiny graph (two variables, a linear loss: constant gradients) and check the numbers
against ones computed by hand; the last ones build or train the tiny profile's model (test_mobilenet_v1 on
the tiny images), one two-phase run of it shared by the tests that read it."""
from __future__ import annotations

import dataclasses

import json
import math

import numpy as np
import pytest
from conftest import SignalAtStep, compose_config, run_pipeline, tiny_config

from finetune import pipeline
from finetune.compat import tf, tf1
from finetune.config import (PHASE_OPTIMIZER_KEYS, BackboneConfig, LearningRateMultiplier, OptimizerConfig,
                             PhaseConfig, TrainConfig)
from finetune.errors import FinetuneError, RunStopped
from finetune.model.towers import variables_read_by
from finetune.training.averages import build_moving_averages, evaluation_weights, start_averages
from finetune.training.objective import objective
from finetune.training.optimizers import build_phases, learning_rate, phase_summary
from finetune.training.phases import evaluates_at, format_phase_summary, phase_at, plan_phases, planned_steps
from finetune.weights.restore import apply_restore
from finetune.weights.readers import read_checkpoint
from finetune.resolve import data_root, pretrained_checkpoint
from finetune.training.run_graph import build_run_graph

A0, B0 = np.array([1.0, 2.0, 3.0]), np.array([-1.0, 0.5])
GA, GB = np.array([1.0, -2.0, 0.5]), np.array([3.0, -0.25])  # d loss / d a, d loss / d b


def _plan(optimizer: dict, phases: list[dict] = (), steps: int | None = 10, images: int = 100, batch: int = 10):
    optimizer = dict(optimizer)
    optimizer["lr_multipliers"] = [LearningRateMultiplier(p, f) for p, f in optimizer.get("lr_multipliers", [])]
    configs = []
    for phase in phases:
        phase = dict(phase)
        if "lr_multipliers" in phase:
            phase["lr_multipliers"] = [LearningRateMultiplier(p, f) for p, f in phase["lr_multipliers"]]
        configs.append(PhaseConfig(**phase))
    return plan_phases(TrainConfig(steps=steps, phases=configs), OptimizerConfig(**{"var_list": ["net/"], **optimizer}),
                       BackboneConfig(), images, batch)


def _rates(phase, steps: list[int]) -> list[float]:
    with tf.Graph().as_default():
        step = tf1.placeholder(tf.int64, [])
        rate = learning_rate(phase, step)
        with tf1.Session() as sess:
            return [float(sess.run(rate, {step: t})) for t in steps]


@pytest.mark.parametrize("optimizer, expected", [
    ({}, {0: 0.1, 9: 0.1}),
    ({"warmup_steps": 4}, {0: 0.025, 1: 0.05, 3: 0.1, 4: 0.1, 9: 0.1}),
    ({"decay": "exponential", "decay_rate": 0.5, "decay_steps": 4}, {0: 0.1, 2: 0.1 * 0.5 ** 0.5, 8: 0.025}),
    ({"decay": "exponential", "decay_rate": 0.5, "decay_steps": 4, "staircase": True},
     {3: 0.1, 4: 0.05, 7: 0.05, 8: 0.025}),
    ({"decay": "exponential", "decay_rate": 0.5}, {5: 0.1 * 0.5 ** 0.5, 9: 0.1 * 0.5 ** 0.9}),  # decay_steps: 10
    ({"decay": "exponential", "decay_rate": 0.5, "warmup_steps": 2},  # decays over the 8 steps after warmup
     {0: 0.05, 1: 0.1, 2: 0.1, 6: 0.1 * 0.5 ** 0.5}),
    ({"decay": "cosine"}, {0: 0.1, 5: 0.05, 9: 0.05 * (1 + math.cos(math.pi * 0.9))}),
    ({"decay": "cosine", "warmup_steps": 2}, {0: 0.05, 1: 0.1, 2: 0.1, 6: 0.05}),
    ({"decay": "polynomial", "end_learning_rate": 0.01, "power": 2.0},  # end_learning_rate at the last step
     {0: 0.1, 3: 0.09 * (6 / 9) ** 2 + 0.01, 9: 0.01}),
    ({"decay": "polynomial"}, {0: 0.1, 3: 0.1 * 6 / 9, 9: 0.0}),
    ({"decay": "piecewise", "boundaries": [3, 6], "factors": [1.0, 0.5, 0.1]},
     {0: 0.1, 2: 0.1, 3: 0.05, 5: 0.05, 6: 0.01, 9: 0.01}),
    ({"decay": "piecewise", "boundaries": [3], "factors": [1.0, 0.5], "warmup_steps": 2},
     {0: 0.05, 1: 0.1, 2: 0.1, 4: 0.1, 5: 0.05}),
], ids=["constant", "warmup", "exponential", "staircase", "exponential-whole-phase", "exponential-warmup", "cosine",
        "cosine-warmup", "polynomial", "polynomial-linear", "piecewise", "piecewise-warmup"])
def test_each_schedule_gives_the_hand_computed_rate(optimizer, expected):
    phase, = _plan({"learning_rate": 0.1, **optimizer})
    assert _rates(phase, list(expected)) == pytest.approx(list(expected.values()), rel=1e-5, abs=1e-9)


def test_a_phase_s_schedule_counts_from_its_own_first_step():
    first, second = _plan({"learning_rate": 0.1}, [{"name": "a", "steps": 5},
                                                   {"name": "b", "steps": 4, "warmup_steps": 2, "decay": "cosine"}],
                          steps=None)
    with tf.Graph().as_default():
        loss, global_step = _tiny_loss()
        ops = build_phases([first, second], {"frozen": (loss, tf.constant(0.0), [])}, global_step)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            rates = []
            for step in (0, 5, 6, 7):
                global_step.load(step, sess)
                rates.append(float(sess.run(ops[phase_at([first, second], step)].learning_rate)))
    # a: constant 0.1; b (steps 5-8): warmup 0.05, 0.1, then cosine over its 2 remaining steps, from 0.1
    assert rates == pytest.approx([0.1, 0.05, 0.1, 0.1], rel=1e-6)


def test_epochs_become_whole_steps_and_the_run_is_their_sum():
    phases = _plan({}, [{"name": "a", "epochs": 2.0}, {"name": "b", "steps": 5}, {"name": "c", "epochs": 0.3},
                        {"name": "d", "epochs": 0.31}], steps=None, images=105, batch=10)
    # 2 * 10.5 = 21 steps; 0.3 * 10.5 = 3.15 -> 4; 0.31 * 10.5 = 3.255 -> 4
    assert [(p.start, p.end) for p in phases] == [(0, 21), (21, 26), (26, 30), (30, 34)]
    assert [p.epochs for p in phases] == [2.0, None, 0.3, 0.31]
    # 0.3 epochs of 100 images in batches of 10 is 3 steps, whatever 0.3 * 10 is in floating point
    assert _plan({}, [{"name": "a", "epochs": 0.3}], steps=None, images=100, batch=10)[-1].end == 3
    assert _plan({}, [{"name": "a", "epochs": 2.0}], steps=21, images=105, batch=10)[-1].end == 21


def test_train_steps_that_disagree_with_the_epochs_name_both_and_the_fix():
    with pytest.raises(FinetuneError) as raised:
        _plan({}, [{"name": "a", "epochs": 2.0}, {"name": "b", "steps": 5}], steps=20, images=105, batch=10)
    message = str(raised.value)
    assert "'train.steps' is 20" in message and "add up to 26 steps" in message and "a: 21 (2 epochs)" in message
    assert "b: 5" in message and "train.steps=null" in message and "an epoch is 105 training images" in message
    assert "\n" not in message


def test_without_phases_the_run_is_one_phase_of_train_steps():
    phase, = _plan({"learning_rate": 0.3, "decay": "cosine"}, steps=7)
    assert (phase.name, phase.start, phase.end, phase.named) == ("train", 0, 7, False)
    assert (phase.learning_rate, phase.decay, phase.optimizer_state) == (0.3, "cosine", "reset")


def test_train_epochs_make_a_run_without_phases_whole_steps_and_win_over_train_steps(caplog):
    def plan(train: TrainConfig, images: int = 105, batch: int = 10):
        return plan_phases(train, OptimizerConfig(), BackboneConfig(), images, batch)

    with caplog.at_level("INFO", logger="finetune.training.phases"):
        phase, = plan(TrainConfig(steps=300, epochs=2.0))
    # 2 * 105 / 10 = 21 steps; train.steps is set (as an experiment file sets it) but not used, and the log says so
    assert (phase.name, phase.start, phase.end, phase.epochs, phase.named) == ("train", 0, 21, 2.0, False)
    assert "train.epochs=2 of 105 training images / data.batch_size 10 = 21 steps" in caplog.text
    assert "train.steps (300) is not used" in caplog.text
    assert plan(TrainConfig(steps=None, epochs=0.3))[-1].end == 4  # 3.15 steps, rounded up
    assert plan(TrainConfig(steps=None, epochs=0.3), images=100)[-1].end == 3  # 3 exactly, floating point or not
    assert plan(TrainConfig(epochs=0.01))[-1].end == 1  # at least one step
    assert plan(TrainConfig(steps=7))[-1].end == 7 and plan(TrainConfig(steps=7))[-1].epochs is None
    assert planned_steps(TrainConfig(steps=300, epochs=2.0), 105, 10) == 21  # a finished run is known by it
    assert planned_steps(TrainConfig(steps=None, phases=[PhaseConfig(name="a", epochs=1.0)]), 105, 10) is None


@pytest.mark.parametrize("images, batch", [(105, 10), (64, 32), (48, 32), (7, 32), (1000, 3)])
def test_evaluating_each_epoch_lands_where_each_epoch_of_steps_ends(images, batch):
    steps = 40
    every_epoch = [step for step in range(1, steps + 1) if evaluates_at(step, "epoch", images, batch)]
    # epoch e ends where e epochs rounded up to whole steps (a phase's or train.epochs' length) end; a step that
    # ends several (a split smaller than a batch) is evaluated once
    ends = {planned_steps(TrainConfig(epochs=float(e)), images, batch) for e in range(1, steps * batch // images + 1)}
    assert every_epoch == sorted(ends)
    assert [step for step in range(1, 13) if evaluates_at(step, 4, images, batch)] == [4, 8, 12]
    assert not any(evaluates_at(step, None, images, batch) for step in range(1, steps + 1))


def test_the_first_phase_has_no_state_to_keep():
    first, second = _plan({}, [{"name": "a", "steps": 2, "optimizer_state": "keep"},
                               {"name": "b", "steps": 2, "optimizer_state": "keep"}], steps=None)
    assert (first.optimizer_state, second.optimizer_state) == ("reset", "keep")


def test_every_optimizer_key_a_phase_leaves_null_comes_from_the_optimizer():
    cfg = compose_config(["experiment=mobilenet_head", "train.steps=null", "optimizer.clip_gradient_norm=3",
                          "optimizer.lr_multipliers=[{pattern: 'MobilenetV1/', factor: 0.1}]",
                          "train.phases=[{name: a, steps: 2}, {name: b, epochs: 1, momentum: 0.5, warmup_steps: 1, "
                          "var_list: ['head/', 'MobilenetV1/'], lr_multipliers: []}]"])
    a, b = plan_phases(cfg.train, cfg.optimizer, cfg.backbone, 20, 8)
    for key in PHASE_OPTIMIZER_KEYS:
        expected = cfg.optimizer[key]
        assert a.key(key) == f"optimizer.{key}"
        if key == "lr_multipliers":
            assert a.lr_multipliers == (("MobilenetV1/", 0.1),) and b.lr_multipliers == ()
        elif key in ("momentum", "warmup_steps", "var_list"):
            assert b.key(key) == f"train.phases[1].{key}"
        else:
            assert getattr(a, key) == getattr(b, key) == (tuple(expected) if key in ("boundaries", "factors")
                                                            else expected), key
    assert (b.momentum, b.warmup_steps, b.var_list) == (0.5, 1, ("head/", "MobilenetV1/"))
    assert (a.clip_gradient_norm, b.start, b.end) == (3.0, 2, 5)  # 1 epoch: 20 images / 8 -> 3 steps


def _tiny_loss() -> tuple[tf.Tensor, tf.Variable]:
    """A linear loss of net/a and net/b (constant gradients GA, GB), and the global step."""
    with tf1.variable_scope("net"):
        a = tf1.get_variable("a", initializer=tf.constant(A0, tf.float32))
        b = tf1.get_variable("b", initializer=tf.constant(B0, tf.float32))
    loss = tf.reduce_sum(a * tf.constant(GA, tf.float32)) + tf.reduce_sum(b * tf.constant(GB, tf.float32))
    return loss, tf1.train.get_or_create_global_step()


def _train(optimizer: dict, phases: list[dict] = (), steps: int | None = None, average: float | None = None
           ) -> dict[str, np.ndarray]:
    """Train the tiny graph through every phase; every global variable's value at the end, and at each phase's end
    (``PHASE_NAME:VARIABLE``)."""
    planned = _plan(optimizer, phases, steps=steps if phases else steps or 3)
    with tf.Graph().as_default():
        loss, global_step = _tiny_loss()
        ops = build_phases(planned, {"frozen": (loss, tf.constant(0.0), [])}, global_step)
        if average is not None:
            net = [v for v in tf1.trainable_variables() if v.op.name.startswith("net/")]
            _, train_ops = build_moving_averages(average, net, [o.train_op for o in ops], [o.phase.name for o in ops])
            ops = [dataclasses.replace(o, train_op=train_op) for o, train_op in zip(ops, train_ops)]
        values = {}
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            for step in range(planned[-1].end):
                sess.run(ops[phase_at(planned, step)].train_op)
                phase = planned[phase_at(planned, step)]
                if step + 1 == phase.end:
                    values.update({f"{phase.name}:{v.op.name}": sess.run(v) for v in tf1.global_variables()})
            values.update({v.op.name: sess.run(v) for v in tf1.global_variables()})
    return values


def test_multipliers_scale_adam_s_steps_not_its_gradients():
    """Adam's first steps move each weight by about the learning rate whatever its gradient's scale: a
    multiplier applied to the gradients would leave net/a's steps at the full rate."""
    out = _train({"name": "adam", "learning_rate": 0.01, "lr_multipliers": [("net/a", 0.1)]}, steps=3)
    assert out["net/a"] - A0 == pytest.approx(-3 * 0.001 * np.sign(GA), rel=1e-4)
    assert out["net/b"] - B0 == pytest.approx(-3 * 0.01 * np.sign(GB), rel=1e-4)
    # One optimizer per distinct factor; the unmultiplied one keeps TF's names (a run without multipliers' slots).
    assert {"net/a/Adam_x0.1", "net/a/Adam_x0.1_1", "net/b/Adam", "net/b/Adam_1"} <= set(out)
    plain = _train({"name": "adam", "learning_rate": 0.01}, steps=3)
    assert {"net/a/Adam", "net/a/Adam_1", "net/b/Adam", "net/b/Adam_1"} <= set(plain)
    assert not any("_x" in name for name in plain)
    assert plain["net/a"] - A0 == pytest.approx(-3 * 0.01 * np.sign(GA), rel=1e-4)
    assert np.array_equal(plain["net/b"], out["net/b"])


def test_a_phase_s_own_multipliers_apply_to_its_momentum_steps():
    out = _train({"learning_rate": 0.1}, [{"name": "p", "steps": 2, "lr_multipliers": [("net/b", 2.0)]}])
    # momentum 0.9, two steps: the accumulator is g, then 1.9 g: 2.9 g in all
    assert out["net/a"] - A0 == pytest.approx(-0.1 * 2.9 * GA, rel=1e-5)
    assert out["net/b"] - B0 == pytest.approx(-0.2 * 2.9 * GB, rel=1e-5)
    assert "net/b/momentum_p_x2" in out and "net/a/momentum_p" in out


def test_clipping_bounds_the_update_by_the_learning_rate_times_the_norm():
    gradient_norm = np.sqrt(np.sum(GA ** 2) + np.sum(GB ** 2))
    clipped = _train({"name": "sgd", "learning_rate": 100.0, "clip_gradient_norm": 0.5}, steps=1)
    update = np.concatenate([clipped["net/a"] - A0, clipped["net/b"] - B0])
    assert np.linalg.norm(update) == pytest.approx(100.0 * 0.5, rel=1e-5)
    assert update == pytest.approx(-100.0 * 0.5 / gradient_norm * np.concatenate([GA, GB]), rel=1e-5)
    free = _train({"name": "sgd", "learning_rate": 100.0}, steps=1)
    assert np.linalg.norm(np.concatenate([free["net/a"] - A0, free["net/b"] - B0])) == pytest.approx(
        100.0 * gradient_norm, rel=1e-5)


def _momentum(settings: list[tuple[float, float, bool]], gradient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(total update, accumulator) of TF's momentum optimizer over steps of (learning rate, momentum, reset first)."""
    accumulator, update = np.zeros_like(gradient), np.zeros_like(gradient)
    for rate, momentum, reset in settings:
        accumulator = (0 if reset else momentum * accumulator) + gradient
        update -= rate * accumulator
    return update, accumulator


@pytest.mark.parametrize("state", ["keep", "reset"])
def test_keep_continues_the_previous_phase_s_momentum_and_reset_starts_afresh(state):
    phases = [{"name": "p1", "steps": 3, "learning_rate": 0.1},
              {"name": "p2", "steps": 3, "learning_rate": 0.01, "momentum": 0.5, "optimizer_state": state}]
    out = _train({}, phases)
    settings = [(0.1, 0.9, step == 0) for step in range(3)] + [(0.01, 0.5, state == "reset" and step == 0)
                                                              for step in range(3)]
    update, accumulator = _momentum(settings, GA)
    assert out["net/a"] - A0 == pytest.approx(update, rel=1e-5)
    if state == "keep":  # the same slot all along, continued from phase 1's value
        assert "net/a/momentum_p2" not in out
        assert out["net/a/momentum_p1"] == pytest.approx(accumulator, rel=1e-6)
        assert not np.array_equal(out["p1:net/a/momentum_p1"], out["net/a/momentum_p1"])
    else:  # phase 2's own slot, and phase 1's left as phase 1 ended
        assert out["net/a/momentum_p2"] == pytest.approx(accumulator, rel=1e-6)
        assert np.array_equal(out["p1:net/a/momentum_p1"], out["net/a/momentum_p1"])


@pytest.mark.parametrize("state, powers", [("keep", [0.9 ** 7]), ("reset", [0.9 ** 4, 0.9 ** 4])])
def test_keep_continues_adam_s_step_count(state, powers):
    out = _train({"name": "adam"}, [{"name": "p1", "steps": 3}, {"name": "p2", "steps": 3, "optimizer_state": state}])
    assert sorted(float(value) for name, value in out.items()
                  if ":" not in name and "beta1_power" in name) == pytest.approx(powers, rel=1e-6)


def test_keep_with_a_new_multiplier_keeps_each_variable_s_slots():
    phases = [{"name": "p1", "steps": 2},
              {"name": "p2", "steps": 2, "optimizer_state": "keep", "lr_multipliers": [("net/a", 0.5)]}]
    out = _train({"learning_rate": 0.1}, phases)
    # net/a trained at 1x then 0.5x through one optimizer (its slot continues); net/b at 1x throughout
    update, accumulator = _momentum([(0.1, 0.9, True), (0.1, 0.9, False), (0.05, 0.9, False), (0.05, 0.9, False)], GA)
    assert out["net/a"] - A0 == pytest.approx(update, rel=1e-5)
    assert out["net/a/momentum_p1_x1_0.5"] == pytest.approx(accumulator, rel=1e-6)
    assert out["net/b"] - B0 == pytest.approx(_momentum([(0.1, 0.9, i == 0) for i in range(4)], GB)[0], rel=1e-5)


def test_label_smoothing_mixes_the_one_hot_targets_with_the_uniform_distribution():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], np.float32)
    labels = np.array([0, 2])
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    targets = 0.9 * np.eye(3)[labels] + 0.1 / 3
    with tf.Graph().as_default(), tf1.Session() as sess:
        smoothed, _ = objective(tf.constant(logits), tf.constant(labels, tf.int64), 0.1)
        plain, _ = objective(tf.constant(logits), tf.constant(labels, tf.int64))
        reference = tf1.losses.sparse_softmax_cross_entropy(tf.constant(labels, tf.int64), tf.constant(logits))
        smoothed, plain, reference = sess.run([smoothed, plain, reference])
    assert smoothed == pytest.approx(-(targets * log_probs).sum(axis=1).mean(), rel=1e-6)
    assert plain == reference == pytest.approx(-log_probs[[0, 1], labels].mean(), rel=1e-6)


def test_averages_start_from_the_restored_weights_follow_training_and_swap_in_exactly():
    decay = 0.5
    planned = _plan({"name": "sgd", "learning_rate": 0.1}, steps=2)
    with tf.Graph().as_default():
        loss, global_step = _tiny_loss()
        ops = build_phases(planned, {"frozen": (loss, tf.constant(0.0), [])}, global_step)
        net = [v for v in tf1.trainable_variables() if v.op.name.startswith("net/")]
        averages, (train_op,) = build_moving_averages(decay, net, [ops[0].train_op], [ops[0].phase.name])
        a, shadow = net[0], averages.shadows["net/a"]
        # The Saver's var_list (graph.model_variables) is what the train ops read: the shadows, not the backups.
        read = variables_read_by([train_op])
        assert {"net/a/ExponentialMovingAverage", "net/b/ExponentialMovingAverage"} <= read
        assert not any("evaluation_weights" in name for name in read)
        assert not any("evaluation_weights" in v.op.name for v in tf1.global_variables())
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            restored = np.array([10.0, 20.0, 30.0], np.float32)
            a.load(restored, sess)  # as the pretrained restore does, after the initializers
            start_averages(sess, averages)
            assert np.array_equal(sess.run(shadow), restored)
            expected = restored.astype(np.float64)
            for step in range(2):
                sess.run(train_op)
                expected = decay * expected + (1 - decay) * (restored - 0.1 * (step + 1) * GA)
            trained, averaged = sess.run([a, shadow])
            assert averaged == pytest.approx(expected, rel=1e-6) and not np.array_equal(trained, averaged)
            with evaluation_weights(sess, averages):
                assert np.array_equal(sess.run(a), averaged)
                with evaluation_weights(sess, averages):  # export inside an evaluation, say
                    assert np.array_equal(sess.run(a), averaged)
                assert np.array_equal(sess.run(a), averaged)
            assert np.array_equal(sess.run(a), trained)
            with pytest.raises(RuntimeError), evaluation_weights(sess, averages):
                raise RuntimeError("an evaluation that fails")
            assert np.array_equal(sess.run(a), trained) and np.array_equal(sess.run(shadow), averaged)


def test_the_phase_summary_says_what_is_trained_and_how():
    planned = _plan({"learning_rate": 0.1, "decay": "exponential", "decay_rate": 0.5, "warmup_steps": 2,
                     "clip_gradient_norm": 1.0, "lr_multipliers": [("net/b", 0.1), ("net/", 2.0)]}, steps=None,
                    phases=[{"name": "p", "epochs": 1.5}])
    with tf.Graph().as_default():
        loss, global_step = _tiny_loss()
        ops, = build_phases(planned, {"frozen": (loss, tf.constant(0.0), [])}, global_step)
        variables = {v.op.name: v for v in tf1.global_variables()}
    summary = phase_summary(ops, variables)
    json.dumps(summary)
    assert summary["trainable_variables"] == ["net/a", "net/b"] and summary["trainable_parameters"] == 5
    assert (summary["first_step"], summary["last_step"], summary["steps"], summary["epochs"]) == (1, 15, 15, 1.5)
    assert summary["learning_rate_schedule"] == {"learning_rate": 0.1, "decay": "exponential", "warmup_steps": 2,
                                                 "decay_rate": 0.5, "decay_steps": 13, "staircase": False}
    assert summary["lr_multipliers"] == [{"pattern": "net/b", "factor": 0.1, "variables": 1},
                                         {"pattern": "net/", "factor": 2.0, "variables": 1}]
    assert summary["optimizer"]["variables"] == ["momentum_p_x2", "momentum_p_x0.1"]
    text = format_phase_summary(summary)
    assert "steps 1-15 (15 steps, 1.5 epochs)" in text and "net/ 2 variables (5 parameters)" in text
    assert "exponential (decay_rate 0.5, decay_steps 13, staircase False) after 2 warmup steps" in text
    assert "'net/b' x0.1 (1 variables)" in text and "global norm 1" in text and "BatchNorm frozen" in text


# --- the tiny profile's model, end to end ---------------------------------------------------------------------
QUICK = ("train.log_every=1", "train.checkpoint_every=1000")
TOP = "MobilenetV1/Conv2d_3_"  # the top block below the tiny profile's cut, Conv2d_3_pointwise
# A head phase with warmup and clipping, then half an epoch of the tiny training split (64 images: 4 steps)
# that keeps the head's optimizer state and trains the top block at a tenth of the rate, with label smoothing
# and averages.
COMBINED = ("train.steps=null", "train.label_smoothing=0.1", "train.moving_average_decay=0.9",
            "optimizer.warmup_steps=2", "optimizer.clip_gradient_norm=5", "data.batch_size=8",
            "train.phases=[{name: head, steps: 4, var_list: [head/]}, {name: top, epochs: 0.5, decay: cosine, "
            f"optimizer_state: keep, var_list: [head/, '{TOP}'], "
            f"lr_multipliers: [{{pattern: '{TOP}', factor: 0.1}}]}}]")


@pytest.fixture(scope="module")
def combined_run(demo_cache, tiny_data, tmp_path_factory) -> dict:
    """The COMBINED run, whole, with its frozen graph exported (no SavedModel): its config, folder and metrics."""
    cfg = tiny_config(demo_cache, tiny_data, *QUICK, *COMBINED, "export.saved_model=false")
    run_dir = tmp_path_factory.mktemp("combined")
    return {"cfg": cfg, "dir": run_dir, "metrics": run_pipeline(cfg, run_dir)}


@pytest.mark.slow
def test_the_new_keys_together_train_resume_exactly_and_save_their_state(combined_run, demo_cache, tiny_data,
                                                                         tmp_path):
    cfg, whole = combined_run["cfg"], combined_run["dir"]
    data = pipeline.load_data(cfg.data, data_root(cfg.data, cfg.paths))
    top_steps = math.ceil(0.5 * len(data.examples["train"]) / 8)
    end = 4 + top_steps
    metrics = combined_run["metrics"]
    assert top_steps >= 2 and metrics["steps"] == end and math.isfinite(metrics["val"]["loss"])
    head_end = read_checkpoint(str(whole / "checkpoints/model.ckpt-4"))
    final = read_checkpoint(str(whole / f"checkpoints/model.ckpt-{end}"))
    pretrained = read_checkpoint(pretrained_checkpoint(cfg.restore, cfg.paths))
    head = [name for name in final if name.startswith("head/") and name.endswith(("weights", "biases"))]
    top = [name for name in final if name.startswith(TOP) and name.endswith("weights")]
    assert head and top
    # keep: the top phase updates the head through the head phase's optimizer, continuing its slots
    assert not any(name.endswith("momentum_top") or "momentum_top_" in name for name in final)
    for name in head:
        assert head_end[f"{name}/momentum_head"].any()
        assert not np.array_equal(head_end[f"{name}/momentum_head"], final[f"{name}/momentum_head"])
        assert f"{name}/momentum_head_x0.1" not in final
    for name in top:  # its own multiple of the rate: an optimizer of the chain with its factor
        assert not head_end[f"{name}/momentum_head_x0.1"].any() and final[f"{name}/momentum_head_x0.1"].any()
    # Averages are saved for every trained variable; the top block's started from the pretrained weights
    # and stayed there while the head phase left it alone.
    for name in head + top:
        assert f"{name}/ExponentialMovingAverage" in final
    assert not any("evaluation_weights" in name for name in final)
    for name in top:
        assert np.array_equal(head_end[f"{name}/ExponentialMovingAverage"], pretrained[name])
        assert not np.array_equal(final[f"{name}/ExponentialMovingAverage"], final[name])

    # Stopped at the phase boundary and resumed: the same final checkpoint, bit for bit (the export, left
    # out here, comes after training).
    stopped = tiny_config(demo_cache, tiny_data, *QUICK, *COMBINED, "export.enabled=false")
    with pytest.raises(RunStopped):
        run_pipeline(stopped, tmp_path / "stopped", listeners=[SignalAtStep(4)])
    resumed = run_pipeline(stopped, tmp_path / "stopped")
    parts = read_checkpoint(str(tmp_path / "stopped" / resumed["checkpoint"]))
    assert sorted(parts) == sorted(final)
    assert [name for name in final if not np.array_equal(final[name], parts[name])] == []


@pytest.mark.slow
def test_label_smoothing_changes_the_training_loss_and_not_the_evaluation(demo_cache, tiny_data):
    losses, logits = [], []
    for smoothing in (0.0, 0.2):
        cfg = tiny_config(demo_cache, tiny_data, f"train.label_smoothing={smoothing}",
                          "data.feature_cache=off")  # the training tower reads images
        data = pipeline.load_data(cfg.data, data_root(cfg.data, cfg.paths))
        run = build_run_graph(cfg, data, pretrained_checkpoint(cfg.restore, cfg.paths))
        with tf1.Session(graph=run.graph) as sess:
            apply_restore(sess, run.restore)
            sess.run(run.model.images.train_iterator_initializer)
            sess.run(run.model.images.eval_initializers["val"])
            logits.append(sess.run(run.model.images.eval.logits))
            losses.append(sess.run(run.model.phases[0].loss))
    assert np.array_equal(logits[0], logits[1])  # the same weights and evaluation tower
    assert losses[1] != losses[0]  # the same batch through the same weights: the targets differ


@pytest.mark.slow
def test_restore_include_never_selects_optimizer_slots_or_moving_averages(demo_cache, tiny_data):
    """A pretrained checkpoint holds none of this run's training state: an explicit restore.include that
    matches the backbone scope must still leave its slots and averages to their initialisers."""
    cfg = tiny_config(demo_cache, tiny_data, "restore.include=[MobilenetV1/]", f"optimizer.var_list=[head/,{TOP}]",
                      "train.moving_average_decay=0.9")
    data = pipeline.load_data(cfg.data, data_root(cfg.data, cfg.paths))
    run = build_run_graph(cfg, data, pretrained_checkpoint(cfg.restore, cfg.paths))
    state = [name for name in run.plan.graph_shapes
             if name.startswith(TOP) and name.endswith(("/Momentum", "/ExponentialMovingAverage"))]
    assert state and not set(state) & set(run.plan.restore) and set(state) <= set(run.plan.initialise)
    assert f"{TOP}pointwise/weights" in run.plan.restore


@pytest.mark.slow
def test_with_moving_averages_the_export_holds_the_averages_not_the_trained_weights(combined_run):
    from finetune import graphs

    run_dir = combined_run["dir"]
    saved = read_checkpoint(str(run_dir / combined_run["metrics"]["checkpoint"]))
    frozen = graphs.load_graph_def(run_dir / "export/frozen_graph.pb")
    constants = {node.name: tf.make_ndarray(node.attr["value"].tensor) for node in frozen.node if node.op == "Const"}
    # The trained variables, the head's and the top block's (BatchNorm moving statistics are not trained, so
    # not averaged).
    averaged = [name for name in saved if name in constants and f"{name}/ExponentialMovingAverage" in saved]
    assert {name.split("/")[0] for name in averaged} == {"head", "MobilenetV1"}
    assert any(name.startswith(TOP) for name in averaged) and len(averaged) >= 4
    for name in averaged:
        average = saved[f"{name}/ExponentialMovingAverage"]
        assert np.array_equal(constants[name], average), name
        assert not np.array_equal(average, saved[name]), name  # so the check above tells the two apart


@pytest.mark.slow
def test_tools_freeze_of_a_run_with_moving_averages_freezes_the_averages(combined_run, tmp_path):
    """`tools freeze --checkpoint RUN` rebuilds the graph from the run's config (its checkpoints have no .meta) and
    restores what the export froze: the averages, where the run kept them. Its constants are the export's."""
    from conftest import cli

    from finetune import graphs

    run_dir = combined_run["dir"]
    result = cli(["finetune.tools", "freeze", "--checkpoint", str(run_dir), "--output", "model.pb"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"from {run_dir / combined_run['metrics']['checkpoint']}; outputs logits, probabilities" in result.stdout

    def constants(path) -> dict:
        return {node.name: tf.make_ndarray(node.attr["value"].tensor)
                for node in graphs.load_graph_def(path).node if node.op == "Const"}

    ours, export = constants(tmp_path / "model.pb"), constants(run_dir / "export/frozen_graph.pb")
    assert sorted(ours) == sorted(export)
    assert [name for name in ours if not np.array_equal(ours[name], export[name])] == []
