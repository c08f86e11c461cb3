"""The tf-slim batch_norm workaround: slim.batch_norm builds and computes in both modes."""
import numpy as np

from finetune.compat import slim, tf, tf1


def test_slim_batch_norm_training_and_inference_modes():
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 4, 4, 3])
        train_out = slim.batch_norm(x, is_training=True, decay=0.5, scale=True, scope="bn")
        infer_out = slim.batch_norm(x, is_training=False, decay=0.5, scale=True, scope="bn", reuse=True)
        updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        moving_mean = [v for v in tf1.global_variables() if v.op.name == "bn/moving_mean"][0]
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            batch = np.random.default_rng(0).normal(5.0, 2.0, size=(8, 4, 4, 3)).astype(np.float32)
            trained, _ = sess.run([train_out, updates], {x: batch})
            # Training mode normalises with the batch's own statistics.
            np.testing.assert_allclose(trained.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
            np.testing.assert_allclose(trained.std(axis=(0, 1, 2)), 1.0, atol=1e-2)
            # The update ops moved the moving mean halfway (decay 0.5) towards the batch mean.
            np.testing.assert_allclose(sess.run(moving_mean), 0.5 * batch.mean(axis=(0, 1, 2)), rtol=1e-5)
            # Inference mode uses the moving statistics instead of the batch's.
            mean = sess.run(moving_mean)
            variance = sess.run([v for v in tf1.global_variables() if v.op.name == "bn/moving_variance"][0])
            expected = (batch - mean) / np.sqrt(variance + 0.001)
            np.testing.assert_allclose(sess.run(infer_out, {x: batch}), expected, rtol=1e-4, atol=1e-4)
    assert len(updates) == 2


def test_a_dense_layer_with_batch_norm_builds_and_runs_in_both_modes():
    """The non-fused BatchNorm path (a rank-2 input) reaches tf-slim's smart_cond, which needs ops.Tensor."""
    from finetune.config import HeadConfig, LayerConfig
    from finetune.model.head import build_head

    head = HeadConfig(layers=[LayerConfig(type="global_avg_pool"), LayerConfig(type="flatten"),
                              LayerConfig(type="dense", units=4, batch_norm=True, activation="relu"),
                              LayerConfig(type="dense")])
    with tf.Graph().as_default():
        features = tf.constant(np.random.default_rng(0).normal(size=(5, 3, 3, 8)), tf.float32)
        with tf1.variable_scope("model", reuse=tf1.AUTO_REUSE):
            outputs = [build_head(features, head, 3, is_training) for is_training in (True, False)]
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            for value in sess.run(outputs):
                assert value.shape == (5, 3) and np.isfinite(value).all()
