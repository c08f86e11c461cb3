"""The restore plan: what is restored, what is initialised, what is left, and the errors."""
import numpy as np
import pytest

from finetune.weights.readers import write_checkpoint
from finetune.compat import tf, tf1
from finetune.config import BackboneConfig, HeadConfig, LayerConfig, RestoreConfig
from finetune.errors import FinetuneError
from finetune.model.towers import build_export_tower, variables_read_by
from finetune.weights.restore import apply_restore, build_restore, format_report, plan_restore, verify_restored

RNG = np.random.default_rng(0)
CHECKPOINT_TENSORS = {
    "MobilenetV1/Conv2d_0/weights": RNG.normal(size=(3, 3, 3, 8)).astype(np.float32),
    "MobilenetV1/Conv2d_0/BatchNorm/moving_mean": RNG.normal(size=(8,)).astype(np.float32),
    "MobilenetV1/Conv2d_1/weights": RNG.normal(size=(1, 1, 8, 8)).astype(np.float32),
    "MobilenetV1/Logits/weights": RNG.normal(size=(8, 1001)).astype(np.float32),
}
BACKBONE = ["MobilenetV1/Conv2d_0/weights", "MobilenetV1/Conv2d_0/BatchNorm/moving_mean"]


def _graph_variables():
    variables = {
        name: tf1.get_variable(name, shape=CHECKPOINT_TENSORS[name].shape, trainable="moving" not in name)
        for name in BACKBONE
    }
    variables["head/dense/weights"] = tf1.get_variable("head/dense/weights", shape=(8, 5))
    return variables


def test_round_trip_restores_exact_values_and_initialises_the_rest(tmp_path):
    prefix = write_checkpoint(CHECKPOINT_TENSORS, tmp_path / "model.ckpt")
    with tf.Graph().as_default():
        variables = _graph_variables()
        shapes = {name: v.shape.as_list() for name, v in variables.items()}
        plan = plan_restore(shapes, prefix, set(BACKBONE), RestoreConfig())
        assert list(plan.restore) == BACKBONE
        assert plan.initialise == ["head/dense/weights"]
        assert plan.unused == ["MobilenetV1/Conv2d_1/weights", "MobilenetV1/Logits/weights"]
        with tf1.Session() as sess:
            apply_restore(sess, build_restore(plan, variables))
            for name in BACKBONE:
                np.testing.assert_array_equal(sess.run(variables[name]), CHECKPOINT_TENSORS[name])
            assert np.abs(sess.run(variables["head/dense/weights"])).sum() > 0  # initialised, not restored
            assert verify_restored(sess, plan, variables) == []
    report = format_report(plan, verified=True)
    for section in ("## Restored (2)", "## Initialised (1)", "## Unused checkpoint entries (2)", "[8, 1001]"):
        assert section in report


def test_include_exclude_override_the_default(tmp_path):
    prefix = write_checkpoint(CHECKPOINT_TENSORS, tmp_path / "model.ckpt")
    with tf.Graph().as_default():
        shapes = {name: v.shape.as_list() for name, v in _graph_variables().items()}
    plan = plan_restore(shapes, prefix, set(BACKBONE), RestoreConfig(exclude=[".*/BatchNorm/"]))
    assert list(plan.restore) == ["MobilenetV1/Conv2d_0/weights"]
    plan = plan_restore(shapes, prefix, set(), RestoreConfig(include=["MobilenetV1/"]))
    assert list(plan.restore) == BACKBONE


def test_missing_and_mismatched_variables_are_all_named(tmp_path):
    tensors = dict(CHECKPOINT_TENSORS)
    del tensors["MobilenetV1/Conv2d_0/BatchNorm/moving_mean"]
    tensors["MobilenetV1/Conv2d_0/weights"] = np.zeros((3, 3, 3, 16), np.float32)
    prefix = write_checkpoint(tensors, tmp_path / "model.ckpt")
    with tf.Graph().as_default():
        shapes = {name: v.shape.as_list() for name, v in _graph_variables().items()}
    with pytest.raises(FinetuneError) as error:
        plan_restore(shapes, prefix, set(BACKBONE), RestoreConfig())
    message = str(error.value)
    assert "missing in checkpoint: MobilenetV1/Conv2d_0/BatchNorm/moving_mean [8]" in message
    assert "shape mismatch: MobilenetV1/Conv2d_0/weights graph [3, 3, 3, 8] vs checkpoint [3, 3, 3, 16]" in message


def test_nothing_selected_and_unreadable_checkpoint_fail(tmp_path):
    prefix = write_checkpoint(CHECKPOINT_TENSORS, tmp_path / "model.ckpt")
    shapes = {"head/dense/weights": [8, 5]}
    with pytest.raises(FinetuneError, match="Nothing to restore"):
        plan_restore(shapes, prefix, set(), RestoreConfig())
    (tmp_path / "broken.ckpt.index").write_bytes(b"not a checkpoint")
    with pytest.raises(FinetuneError, match="restore.checkpoint"):
        plan_restore(shapes, str(tmp_path / "broken.ckpt"), set(), RestoreConfig())


def test_default_restore_set_is_what_the_cut_reads_moving_statistics_included():
    """test_mobilenet_v1 (MobileNet v1's first three blocks, under its names), cut inside at the second block."""
    backbone = BackboneConfig(name="test_mobilenet_v1", image_size=32, cut="Conv2d_2_pointwise",
                              params={"depth_multiplier": 0.25})
    head = HeadConfig(layers=[LayerConfig(type="global_avg_pool"), LayerConfig(type="dense")])
    with tf.Graph().as_default():
        tower = build_export_tower(backbone, head, num_classes=3)
        assert any(v.op.name.startswith("MobilenetV1/Conv2d_3_") for v in tf1.global_variables())  # built, not read
        needed = variables_read_by([tower.cut])
    assert "MobilenetV1/Conv2d_0/BatchNorm/moving_mean" in needed
    assert "MobilenetV1/Conv2d_2_pointwise/BatchNorm/moving_variance" in needed
    assert not any(name.startswith(("MobilenetV1/Conv2d_3", "head/")) for name in needed)
    assert len(needed) == 5 * 5  # Conv2d_0 and 2 depthwise/pointwise pairs, 5 variables each


def test_single_file_v1_checkpoint_restores(tmp_path):
    """The 2016/2017 TF-Slim zoo tarballs hold old-format checkpoints: one file, no .index."""
    with tf.Graph().as_default():
        saved = {name: tf1.get_variable(name, initializer=value) for name, value in CHECKPOINT_TENSORS.items()}
        saver = tf1.train.Saver(var_list=saved, write_version=tf1.train.SaverDef.V1)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            prefix = saver.save(sess, str(tmp_path / "inception_v3.ckpt"), write_meta_graph=False)
    assert not (tmp_path / "inception_v3.ckpt.index").exists()
    with tf.Graph().as_default():
        variables = _graph_variables()
        plan = plan_restore({n: v.shape.as_list() for n, v in variables.items()}, prefix, set(BACKBONE),
                            RestoreConfig())
        with tf1.Session() as sess:
            apply_restore(sess, build_restore(plan, variables))
            assert verify_restored(sess, plan, variables) == []
            np.testing.assert_array_equal(sess.run(variables[BACKBONE[0]]), CHECKPOINT_TENSORS[BACKBONE[0]])
