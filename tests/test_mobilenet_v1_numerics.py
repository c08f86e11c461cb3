"""MobileNet v1 computes what the published definition computes, not only with the right names.

A reference forward pass is written here with plain ``tf.nn`` ops and the published constants
(SAME padding, BatchNorm epsilon 0.001, ReLU6, average pool over the final map, 1x1 classifier),
fed with the backbone's own variable values (random, with non-trivial moving statistics).
"""
import numpy as np
import pytest

from finetune.model.backbones import get_network_fn
from finetune.compat import tf, tf1

STRIDES = [2] + [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]  # Conv2d_0, then the 13 separable blocks
EPSILON = 0.001


def _reference(images, values):
    def batch_norm_relu6(net, scope):
        mean, variance = values[f"{scope}/BatchNorm/moving_mean"], values[f"{scope}/BatchNorm/moving_variance"]
        gamma, beta = values[f"{scope}/BatchNorm/gamma"], values[f"{scope}/BatchNorm/beta"]
        return tf.clip_by_value((net - mean) / tf.sqrt(variance + EPSILON) * gamma + beta, 0.0, 6.0)

    net = tf.nn.conv2d(images, values["MobilenetV1/Conv2d_0/weights"], [1, 2, 2, 1], "SAME")
    net = batch_norm_relu6(net, "MobilenetV1/Conv2d_0")
    for i in range(1, 14):
        stride = STRIDES[i]
        scope = f"MobilenetV1/Conv2d_{i}_depthwise"
        net = tf.nn.depthwise_conv2d(net, values[f"{scope}/depthwise_weights"], [1, stride, stride, 1], "SAME")
        net = batch_norm_relu6(net, scope)
        scope = f"MobilenetV1/Conv2d_{i}_pointwise"
        net = batch_norm_relu6(tf.nn.conv2d(net, values[f"{scope}/weights"], [1, 1, 1, 1], "SAME"), scope)
    net = tf.reduce_mean(net, axis=[1, 2], keepdims=True)  # the 7x7 pool shrinks to the whole final map
    logits = tf.nn.conv2d(net, values["MobilenetV1/Logits/Conv2d_1c_1x1/weights"], [1, 1, 1, 1], "VALID")
    return tf.squeeze(logits + values["MobilenetV1/Logits/Conv2d_1c_1x1/biases"], [1, 2])


@pytest.mark.slow
def test_mobilenet_v1_matches_an_independent_reference():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(2, 64, 64, 3)).astype(np.float32)
    with tf.Graph().as_default():
        tf1.set_random_seed(0)
        inputs = tf1.placeholder(tf.float32, [None, 64, 64, 3])
        logits, end_points = get_network_fn("mobilenet_v1", 11, depth_multiplier=0.25)(inputs)
        assert end_points["AvgPool_1a"].shape.as_list() == [None, 1, 1, 256]
        variables = tf1.global_variables()
        initial = {}  # statistics and affine terms away from 0/1, fed to the initialisers (one session call)
        for variable in variables:
            name = variable.op.name
            if name.endswith(("moving_variance", "gamma")):
                initial[variable.initializer.inputs[1]] = rng.uniform(0.5, 2.0, variable.shape).astype(np.float32)
            elif name.endswith(("moving_mean", "beta", "biases")):
                initial[variable.initializer.inputs[1]] = rng.normal(0, 0.2, variable.shape).astype(np.float32)
        assert len(initial) == 27 * 4 + 1  # 27 BatchNorm layers and the classifier's biases
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer(), initial)
            values = sess.run({v.op.name: v for v in variables})
            assert not [n for n, value in values.items() if n.endswith("moving_variance") and np.allclose(value, 1)]
            got = sess.run(logits, {inputs: images})
            expected = sess.run(_reference(tf.constant(images), values))
    assert np.abs(expected).max() > 1e-2  # the comparison is not between two vanishing outputs
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
