"""Devices: sessions that use a GPU when there is one, and train.mixed_precision. On this CPU-only test
machine the float16 rewrite itself does not act (TensorFlow applies it on GPUs only); what can be checked
here is the configuration and that a mixed-precision run trains, scales its loss and exports in float32."""
from __future__ import annotations

import json
import math

import pytest
from tensorflow.core.protobuf import rewriter_config_pb2

from conftest import compose_config, run_pipeline
from finetune.compat import session_config, tf


def test_sessions_place_softly_grow_gpu_memory_and_rewrite_only_when_asked():
    plain, mixed = session_config(), session_config(mixed_precision=True)
    for config in (plain, mixed):
        assert config.allow_soft_placement and config.gpu_options.allow_growth
    assert plain.graph_options.rewrite_options.auto_mixed_precision != rewriter_config_pb2.RewriterConfig.ON
    assert mixed.graph_options.rewrite_options.auto_mixed_precision == rewriter_config_pb2.RewriterConfig.ON


@pytest.mark.slow
def test_a_mixed_precision_run_scales_its_loss_and_exports_a_float32_graph(demo_cache, tmp_path):
    cfg = compose_config(["experiment=mobilenet_head", "train.steps=6", "train.mixed_precision=true",
                          f"paths.cache_dir={demo_cache}"])
    metrics = run_pipeline(cfg, tmp_path)
    assert math.isfinite(metrics["val"]["loss"])
    stored = tf.train.load_checkpoint(str(tmp_path / metrics["checkpoint"])).get_variable_to_shape_map()
    assert "current_loss_scale" in stored and "good_steps" in stored  # dynamic loss scaling, resumable
    assert max(metrics["export"]["parity"].values()) < 1e-4
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["config"]["train"]["mixed_precision"] is True and record["devices"]
