"""Backbones without Python code: a .meta graph with its checkpoint, and a frozen .pb.

The test builds its own foreign model (not through our registry), with a fixed batch size of 1 in
its input placeholder, as many published graphs have; the pipeline must finetune a head on it and
freeze a graph that takes any batch size. The runs check mechanics (what is restored, frozen and
exported), not learning: a few steps on the tiny data set (tests/conftest.py), read at 96x96.
"""
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config, run_pipeline

from finetune.data import demo_images
from finetune import graphs
from finetune import freezing
from finetune.compat import slim, tf, tf1
from finetune.errors import FinetuneError

CUT = "Foreign/features:0"


@pytest.fixture(scope="module")
def foreign_model(tmp_path_factory):
    """(meta path, checkpoint prefix, frozen .pb path, checkpoint values)."""
    folder = tmp_path_factory.mktemp("foreign")
    rng = np.random.default_rng(1)
    with tf.Graph().as_default():
        tf1.set_random_seed(1)
        images = tf1.placeholder(tf.float32, [1, 96, 96, 3], name="images")
        norm = {"normalizer_fn": slim.batch_norm, "normalizer_params": {"is_training": False, "scale": True}}
        net = slim.conv2d(images, 16, [3, 3], stride=2, scope="Foreign/conv1", **norm)
        net = slim.separable_conv2d(net, 32, [3, 3], depth_multiplier=1, stride=2, scope="Foreign/conv2", **norm)
        features = tf.identity(net, name="Foreign/features")
        slim.fully_connected(slim.flatten(features), 10, activation_fn=None, scope="Foreign/logits")
        saver = tf1.train.Saver()
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            for variable in tf1.global_variables():
                if variable.op.name.endswith(("moving_variance", "gamma")):
                    variable.load(rng.uniform(0.5, 2.0, variable.shape).astype(np.float32), sess)
                elif variable.op.name.endswith(("moving_mean", "beta")):
                    variable.load(rng.normal(0, 0.3, variable.shape).astype(np.float32), sess)
            values = {v.op.name: sess.run(v) for v in tf1.global_variables()}
            prefix = saver.save(sess, str(folder / "foreign.ckpt"))
            frozen = freezing.freeze_session(sess, ["Foreign/logits/BiasAdd"])
    pb = folder / "foreign.pb"
    pb.write_bytes(frozen.SerializeToString())
    return f"{prefix}.meta", prefix, str(pb), values


def _config(data: Path, cache: Path, backbone: str, *overrides: str):
    return compose_config([
        f"backbone={backbone}", "backbone.image_size=96", f"backbone.cut={CUT}", "backbone.params.input=images:0",
        f"data.root={data}", f"paths.cache_dir={cache}", "restore.checkpoint=null", "train.steps=4",
        "train.log_every=1", "optimizer.learning_rate=0.05", "export.saved_model=false", *overrides,
    ])


def _check_run(run_dir: Path, metrics: dict, values: dict) -> None:
    assert max(metrics["export"]["parity"].values()) < 1e-4
    frozen = graphs.load_graph_def(run_dir / "export/frozen_graph.pb")
    constants = {node.name: node for node in frozen.node if node.op == "Const"}
    # The backbone is carried as constants equal to the source checkpoint: nothing trained it.
    for name in ("Foreign/conv1/weights", "Foreign/conv2/BatchNorm/moving_variance"):
        stored = tf.make_ndarray(constants[f"backbone/{name}"].attr["value"].tensor)
        np.testing.assert_array_equal(stored, values[name])
    batch = np.random.default_rng(0).uniform(0, 255, size=(3, 96, 96, 3)).astype(np.float32)
    (probabilities,) = graphs.run_graph_def(frozen, {"input:0": batch}, ["probabilities:0"])
    assert probabilities.shape == (3, len(demo_images.TARGET_CLASSES))  # the source's batch of 1 does not stick
    assert metrics["restore"]["trained"] > 0 and metrics["restore"]["restored"] == 0


@pytest.mark.slow
def test_meta_graph_backbone_finetunes_and_freezes(foreign_model, tiny_data, tmp_path):
    meta, prefix, _, values = foreign_model
    cfg = _config(tiny_data, tmp_path / "cache", "meta_graph", f"backbone.params.meta={meta}")
    metrics = run_pipeline(cfg, tmp_path / "run")
    _check_run(tmp_path / "run", metrics, values)


@pytest.mark.slow
def test_frozen_graph_backbone_finetunes_and_freezes(foreign_model, tiny_data, tmp_path):
    _, _, pb, values = foreign_model
    metrics = run_pipeline(_config(tiny_data, tmp_path / "cache", "frozen_graph", f"backbone.params.graph={pb}"),
                           tmp_path / "run")
    _check_run(tmp_path / "run", metrics, values)


@pytest.mark.parametrize("override, key", [
    ("backbone.cut=Foreign/featurez:0", "backbone.cut"),
    ("backbone.params.input=image:0", "backbone.params.input"),
    ("backbone.params.graph=/nonexistent/graph.pb", "backbone.params.graph"),
])
def test_bad_imported_backbone_inputs_name_the_key(foreign_model, tiny_data, tmp_path, override, key):
    _, _, pb, _ = foreign_model
    cfg = _config(tiny_data, tmp_path / "cache", "frozen_graph", f"backbone.params.graph={pb}", override)
    with pytest.raises(FinetuneError, match=key.replace(".", r"\.")):
        run_pipeline(cfg, tmp_path / "run")
