"""Where a run trains and what that takes: the session's configuration, train.device, op determinism
(XLA off), the plain gradient through frozen BatchNorm layers that a deterministic GPU run needs, mixed
precision with one step counter, and run.json's device record. This machine has no GPU: what a GPU run
would build is built and run here, on the CPU, and compared with what the CPU run builds."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config, run_pipeline
from tensorflow.core.protobuf import rewriter_config_pb2

from finetune import pipeline
from finetune.compat import slim, tf, tf1
from finetune.errors import FinetuneError
from finetune.resolve import data_root, pretrained_checkpoint
from finetune.training import devices
from finetune.training.batch_norm_gradient import inference_batch_norm_gradients, plain_batch_norm_gradient
from finetune.training.devices import Device, session_config
from finetune.training.loop import Listener
from finetune.training.optimizers import build_phases, phase_summary
from finetune.training.phases import plan_phases
from finetune.training.run_graph import build_run_graph
from finetune.weights.restore import apply_restore

# Phase 2 trains the two blocks below the cut through their frozen BatchNorm (experiment=mobilenet_two_phase).
TWO_PHASES = ["experiment=mobilenet_two_phase", "train.steps=null", "train.phases.0.steps=2",
              "train.phases.1.steps=4", "train.phases.1.learning_rate=0.01", "data.feature_cache=off"]


def test_sessions_place_softly_grow_gpu_memory_keep_xla_off_and_rewrite_only_when_asked():
    plain, mixed = session_config(), session_config(mixed_precision=True)
    for config in (plain, mixed):
        assert config.allow_soft_placement and config.gpu_options.allow_growth
        assert config.graph_options.optimizer_options.global_jit_level == tf1.OptimizerOptions.OFF
    assert plain.graph_options.rewrite_options.auto_mixed_precision != rewriter_config_pb2.RewriterConfig.ON
    assert mixed.graph_options.rewrite_options.auto_mixed_precision == rewriter_config_pb2.RewriterConfig.ON
    assert session_config(Device("cpu")).device_count["GPU"] == 0  # train.device=cpu hides the GPUs
    assert "GPU" not in session_config(Device("gpu", ("/physical_device:GPU:0",))).device_count
    assert session_config(deterministic=False).graph_options.optimizer_options.global_jit_level != \
        tf1.OptimizerOptions.OFF


def test_train_device_gpu_stops_before_anything_is_written_and_says_what_is_missing(demo_cache, tmp_path):
    cfg = compose_config(["experiment=mobilenet_head", "train.device=gpu", f"paths.cache_dir={demo_cache}"])
    with pytest.raises(FinetuneError,
                       match=r"train\.device' is 'gpu', but TensorFlow sees no GPU: .*train\.device=auto"):
        run_pipeline(cfg, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [".lock"]  # no config, no checkpoint, no record


def test_what_keeps_tensorflow_from_a_gpu_is_named(monkeypatch):
    """Each cause gets its own sentence: a build without CUDA, GPUs hidden, no device, libraries not loaded."""
    monkeypatch.setattr(tf.sysconfig, "get_build_info", lambda: {"is_cuda_build": False})
    assert "built without CUDA" in devices.why_no_gpu()
    monkeypatch.setattr(tf.sysconfig, "get_build_info",
                        lambda: {"is_cuda_build": True, "cuda_version": "12.5", "cudnn_version": "9"})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert "CUDA_VISIBLE_DEVICES='-1' hides every GPU" in devices.why_no_gpu()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    monkeypatch.setattr(devices.Path, "glob", lambda self, pattern: iter(()))
    assert "no NVIDIA GPU" in devices.why_no_gpu()
    monkeypatch.setattr(devices.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert "could not load the CUDA libraries" in devices.why_no_gpu() and "CUDA 12.5" in devices.why_no_gpu()


class DeterminismProbe(Listener):
    """Records, while the run trains, whether TensorFlow's op determinism is on."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def phase_started(self, loop, phase: int, step: int) -> None:
        from tensorflow.python.framework import config as tf_config

        self.seen.append(tf_config.is_op_determinism_enabled())


@pytest.mark.parametrize("deterministic", [True, False])
def test_train_deterministic_switches_op_determinism_for_the_run_only(demo_cache, tmp_path, caplog, deterministic):
    from tensorflow.python.framework import config as tf_config

    cfg = compose_config(["experiment=mobilenet_head", "train.steps=1", "export.enabled=false",
                          f"train.deterministic={str(deterministic).lower()}", f"paths.cache_dir={demo_cache}"])
    probe = DeterminismProbe()
    with caplog.at_level("INFO", logger="finetune"):
        run_pipeline(cfg, tmp_path, listeners=[probe])
    assert probe.seen == [deterministic] and not tf_config.is_op_determinism_enabled()
    assert "Training on the CPU: TensorFlow sees no GPU." in caplog.text  # train.device=auto says which
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["gpu"] is None and record["config"]["train"]["deterministic"] is deterministic


def _train_two_phases(cfg, data, checkpoint, gpu: bool) -> tuple[list[float], dict[str, np.ndarray], list[str], dict]:
    """Every step of both phases in one session from the pretrained weights: the losses, the final weights,
    the inference-mode fused BatchNorm gradients in the graph, and the second phase's summary."""
    run = build_run_graph(cfg, data, checkpoint, gpu=gpu)
    losses = []
    with tf1.Session(graph=run.graph) as sess:
        apply_restore(sess, run.restore)
        sess.run(run.model.images.train_iterator_initializer)
        for ops in run.model.phases:
            for _ in range(ops.phase.steps):
                losses.append(float(sess.run([ops.train_op, ops.loss])[1]))
        weights = sess.run(run.model.model_variables)
    return (losses, weights, inference_batch_norm_gradients(run.graph),
            phase_summary(run.model.phases[1], run.model.model_variables))


@pytest.mark.slow
def test_a_gpu_run_trains_through_frozen_batch_norm_with_the_plain_gradient_and_the_same_numbers(demo_cache):
    """What a deterministic GPU run builds has no fused BatchNorm gradient in inference mode (the op that
    stops such a run), and trains to the CPU build's losses and weights within 1e-5."""
    cfg = compose_config([*TWO_PHASES, f"paths.cache_dir={demo_cache}"])
    data = pipeline.load_data(cfg.data, data_root(cfg.data, cfg.paths))
    checkpoint = pretrained_checkpoint(cfg.restore, cfg.paths)
    fused_losses, fused, fused_grads, fused_summary = _train_two_phases(cfg, data, checkpoint, gpu=False)
    plain_losses, plain, plain_grads, plain_summary = _train_two_phases(cfg, data, checkpoint, gpu=True)
    assert fused_grads and not plain_grads
    assert fused_summary["batch_norm_gradient"] == "fused" and plain_summary["batch_norm_gradient"] == "plain"
    np.testing.assert_allclose(plain_losses, fused_losses, rtol=0, atol=1e-5)
    changed = [name for name in fused if name.startswith("MobilenetV1/Conv2d_1")
               and not np.array_equal(fused[name], plain[name])]
    assert changed  # the gradients went another way through the graph...
    for name in fused:  # ...to the same weights
        np.testing.assert_allclose(plain[name], fused[name], rtol=0, atol=1e-5, err_msg=name)
    # Without determinism a GPU run keeps TensorFlow's own (faster) kernel.
    loose = compose_config([*TWO_PHASES, "train.deterministic=false", f"paths.cache_dir={demo_cache}"])
    assert inference_batch_norm_gradients(build_run_graph(loose, data, checkpoint, gpu=True).graph)


def test_the_plain_gradient_equals_tensorflow_s_in_inference_and_leaves_training_mode_alone():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 3, 5)).astype(np.float32)
    # Moving statistics other than 0 and 1, so the inference-mode formula is really exercised.
    statistics = rng.uniform(0.5, 2.0, size=(4, 5)).astype(np.float32)
    results = {}
    for plain in (False, True):
        with tf.Graph().as_default():
            inputs = tf.constant(x)
            with plain_batch_norm_gradient(plain):
                frozen = slim.batch_norm(inputs, is_training=False, scale=True, fused=True, scope="frozen")
                trained = slim.batch_norm(inputs, is_training=True, scale=True, fused=True, scope="trained")
            variables = tf1.trainable_variables()
            loss = tf.reduce_sum(tf.square(frozen) * tf.range(5, dtype=tf.float32)) + tf.reduce_sum(trained ** 3)
            gradients = tf.gradients(loss, [inputs] + variables)
            with tf1.Session() as sess:
                sess.run(tf1.global_variables_initializer())
                moving = [v for v in tf1.global_variables() if "moving" in v.op.name]
                for variable, values in zip(moving, statistics):
                    variable.load(values, sess)
                results[plain] = sess.run(gradients)
            grad_ops = inference_batch_norm_gradients(tf1.get_default_graph())
            assert bool(grad_ops) is not plain
    for got, want in zip(results[True], results[False]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mixed_precision_counts_a_step_the_loss_scale_skips():
    """A step whose scaled gradients overflow changes no weight and halves the loss scale, but the global
    step (schedule, phases, checkpoints, resume) counts it: one counter, however many steps are skipped."""
    cfg = compose_config(["optimizer.name=sgd", "optimizer.learning_rate=0.1", "optimizer.var_list=[net/]",
                          "train.steps=3"])
    planned = plan_phases(cfg.train, cfg.optimizer, cfg.backbone, 10, 10)
    with tf.Graph().as_default():
        with tf1.variable_scope("net"):
            weight = tf1.get_variable("w", initializer=tf.constant([1.0, 2.0]))
        coefficients = tf1.placeholder_with_default(tf.constant([3.0, 4.0]), [2])
        loss = tf.reduce_sum(weight * coefficients)
        global_step = tf1.train.get_or_create_global_step()
        (ops,) = build_phases(planned, {"frozen": (loss, tf.constant(0.0), [])}, global_step, mixed_precision=True)
        (scale,) = [v for v in tf1.global_variables() if v.op.name.endswith("current_loss_scale")]
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            before = sess.run(scale)
            sess.run(ops.train_op, {coefficients: [np.inf, 4.0]})  # an overflowed gradient, as float16 makes them
            assert sess.run(global_step) == 1 and np.array_equal(sess.run(weight), [1.0, 2.0])
            assert sess.run(scale) == before / 2
            sess.run(ops.train_op)  # a normal step: applied, counted
            assert sess.run(global_step) == 2
            np.testing.assert_allclose(sess.run(weight), [1.0 - 0.3, 2.0 - 0.4], rtol=1e-6)


@pytest.mark.slow
def test_a_mixed_precision_run_scales_its_loss_counts_its_steps_and_exports_in_float32(demo_cache, tmp_path):
    cfg = compose_config(["experiment=mobilenet_head", "train.steps=6", "train.mixed_precision=true",
                          "train.checkpoint_every=3", f"paths.cache_dir={demo_cache}"])
    metrics = run_pipeline(cfg, tmp_path)
    assert metrics["steps"] == 6 and metrics["checkpoint"] == "checkpoints/model.ckpt-6"
    assert math.isfinite(metrics["val"]["loss"])
    stored = tf.train.load_checkpoint(str(tmp_path / metrics["checkpoint"]))
    assert stored.get_tensor("global_step") == 6  # the checkpoint's name and its global step agree
    assert "current_loss_scale" in stored.get_variable_to_shape_map()  # dynamic loss scaling, resumable
    assert max(metrics["export"]["parity"].values()) < 1e-4  # evaluated and exported in float32
    record = json.loads(Path(tmp_path / "run.json").read_text())
    assert record["config"]["train"]["mixed_precision"] is True and record["devices"]
