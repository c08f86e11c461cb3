"""A deterministic gradient through BatchNorm layers kept frozen while layers below them train.

With op determinism on (``train.deterministic``), TensorFlow has no GPU kernel for the gradient of a
*fused* BatchNorm in inference mode (``FusedBatchNormGradV3`` with ``is_training=False`` stops the first
step with "A deterministic GPU implementation of fused batch-norm backprop, when training is disabled,
is not currently available"). A phase that trains layers below a frozen BatchNorm (the second phase of
``experiment=mobilenet_two_phase``) needs that gradient. In inference mode the layer is an affine map
per channel, ``y = (x - mean) * rsqrt(variance + epsilon) * scale + offset``, whose gradient is a few
elementwise products and sums: :func:`plain_batch_norm_gradient` builds the layers it covers with that
gradient, from plain, deterministic ops. The forward pass is untouched (the same fused op, the same
numbers); a layer in training mode keeps TensorFlow's own gradient.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from finetune.compat import tf, tf1

PLAIN_GRADIENT = "FinetunePlainFusedBatchNormGrad"
FUSED_BATCH_NORMS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")


@tf.RegisterGradient(PLAIN_GRADIENT)
def _plain_fused_batch_norm_gradient(op: tf.Operation, *grads: tf.Tensor) -> list:
    """Gradients of (x, scale, offset, mean, variance); in training mode, TensorFlow's own."""
    if op.get_attr("is_training"):
        from tensorflow.python.ops import nn_grad  # the registered gradient, for layers that train

        version = FUSED_BATCH_NORMS.index(op.type)
        return list(nn_grad._BaseFusedBatchNormGrad(op, version, *grads))
    x, scale, _, mean, variance = op.inputs[:5]
    grad_y = grads[0]
    channels_first = op.get_attr("data_format") in (b"NCHW", b"NCDHW")
    shape = [1, -1] + [1] * (x.shape.rank - 2) if channels_first else [-1]  # broadcasts over the channel axis
    axes = [axis for axis in range(x.shape.rank) if axis != (1 if channels_first else x.shape.rank - 1)]
    inverse = tf.math.rsqrt(tf.cast(variance, tf.float32) + op.get_attr("epsilon"))
    grad_y32, x32 = tf.cast(grad_y, tf.float32), tf.cast(x, tf.float32)
    normalized = (x32 - tf.reshape(tf.cast(mean, tf.float32), shape)) * tf.reshape(inverse, shape)
    grad_x = grad_y32 * tf.reshape(tf.cast(scale, tf.float32) * inverse, shape)
    grad_scale = tf.reduce_sum(grad_y32 * normalized, axis=axes)
    grad_offset = tf.reduce_sum(grad_y32, axis=axes)
    return [tf.cast(grad_x, x.dtype), grad_scale, grad_offset, None, None]


@contextlib.contextmanager
def plain_batch_norm_gradient(enabled: bool = True) -> Iterator[None]:
    """While inside (and ``enabled``), the fused BatchNorm layers built take :data:`PLAIN_GRADIENT`."""
    if not enabled:
        yield
        return
    with tf1.get_default_graph().gradient_override_map(dict.fromkeys(FUSED_BATCH_NORMS, PLAIN_GRADIENT)):
        yield


def inference_batch_norm_gradients(graph: tf.Graph) -> list[str]:
    """The fused BatchNorm gradient ops of ``graph`` in inference mode: what stops a deterministic GPU run."""
    return [op.name for op in graph.get_operations()
            if op.type.startswith("FusedBatchNormGrad") and not op.get_attr("is_training")]
