"""MobileNet v1 (Howard et al., 2017) with the variable and end-point names of TF-Slim's model zoo.

Names, shapes and numerics follow the published definition so that the official
``mobilenet_v1_*`` checkpoints restore without renaming: SAME padding, BatchNorm with
epsilon 0.001 and decay 0.9997 (centre and scale), ReLU6, a depthwise 3x3 followed by a
pointwise 1x1 per block, average pooling before a 1x1-convolution classifier.
"""
from __future__ import annotations

import functools
from typing import Any

from finetune.model.backbones.registry import BackboneInfo, register
from finetune.compat import slim, tf, tf1

# (stride, output depth) of the 13 depthwise-separable blocks that follow Conv2d_0 (3x3/2, depth 32).
_SEPARABLE_BLOCKS = (
    (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024),
)
END_POINTS = (
    ("Conv2d_0",)
    + tuple(f"Conv2d_{i}_{part}" for i in range(1, 14) for part in ("depthwise", "pointwise"))
    + ("AvgPool_1a", "Logits", "Predictions")
)


# --- blocks -------------------------------------------------------------------------------------
def mobilenet_arg_scope(is_training: bool, weight_decay: float, batch_norm_decay: float) -> Any:
    """The published MobileNet layer defaults (v1 and v2): truncated-normal(0.09) weights, ReLU6,
    BatchNorm with epsilon 0.001 after every convolution, L2 on full convolutions only (not depthwise)."""
    batch_norm = {"center": True, "scale": True, "decay": batch_norm_decay, "epsilon": 0.001,
                  "is_training": is_training}
    with slim.arg_scope(
        [slim.conv2d, slim.separable_conv2d],
        weights_initializer=tf1.truncated_normal_initializer(stddev=0.09),
        activation_fn=tf.nn.relu6,
        normalizer_fn=slim.batch_norm,
        normalizer_params=batch_norm,
        padding="SAME",
    ):
        with slim.arg_scope([slim.conv2d], weights_regularizer=slim.l2_regularizer(weight_decay)):
            with slim.arg_scope([slim.dropout], is_training=is_training) as scope:
                return scope


def _pool_kernel(net: tf.Tensor, size: int = 7) -> list[int]:
    """A 7x7 average pool, shrunk to the feature map for inputs smaller than 224."""
    height, width = net.shape[1], net.shape[2]
    if height is None or width is None:
        return [size, size]
    return [min(height, size), min(width, size)]


# --- the network --------------------------------------------------------------------------------
def mobilenet_v1_base(images: tf.Tensor, depth_multiplier: float, min_depth: int, scope: Any,
                      blocks: int = len(_SEPARABLE_BLOCKS)) -> tuple[tf.Tensor, dict]:
    """The convolutional trunk, Conv2d_0 .. Conv2d_13_pointwise (the first ``blocks`` separable blocks)."""
    def depth(channels: int) -> int:
        return max(int(channels * depth_multiplier), min_depth)

    end_points: dict[str, tf.Tensor] = {}
    with tf1.variable_scope(scope, "MobilenetV1", [images]):
        net = slim.conv2d(images, depth(32), [3, 3], stride=2, scope="Conv2d_0")
        end_points["Conv2d_0"] = net
        for index, (stride, channels) in enumerate(_SEPARABLE_BLOCKS[:blocks], start=1):
            name = f"Conv2d_{index}_depthwise"
            net = slim.separable_conv2d(net, None, [3, 3], depth_multiplier=1, stride=stride, scope=name)
            end_points[name] = net
            name = f"Conv2d_{index}_pointwise"
            net = slim.conv2d(net, depth(channels), [1, 1], stride=1, scope=name)
            end_points[name] = net
    return net, end_points


def mobilenet_v1(
    images: tf.Tensor,
    num_classes: int = 1001,
    is_training: bool = False,
    depth_multiplier: float = 1.0,
    min_depth: int = 8,
    dropout_keep_prob: float = 0.999,
    weight_decay: float = 0.00004,
    batch_norm_decay: float = 0.9997,
    scope: str = "MobilenetV1",
    blocks: int = len(_SEPARABLE_BLOCKS),
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Logits and end points; ``num_classes=0`` stops after ``AvgPool_1a`` (features only). ``blocks``: how
    many of the 13 separable blocks (fewer only for :data:`TEST_BLOCKS`)."""
    if depth_multiplier <= 0:
        raise ValueError("depth_multiplier must be greater than zero")
    with tf1.variable_scope(scope, "MobilenetV1", [images]) as outer:
        with slim.arg_scope(mobilenet_arg_scope(is_training, weight_decay, batch_norm_decay)):
            net, end_points = mobilenet_v1_base(images, depth_multiplier, min_depth, scope=outer, blocks=blocks)
            with tf1.variable_scope("Logits"):
                net = slim.avg_pool2d(net, _pool_kernel(net), padding="VALID", scope="AvgPool_1a")
                end_points["AvgPool_1a"] = net
                if not num_classes:
                    return net, end_points
                net = slim.dropout(net, keep_prob=dropout_keep_prob, scope="Dropout_1b")
                logits = slim.conv2d(
                    net, num_classes, [1, 1], activation_fn=None, normalizer_fn=None, scope="Conv2d_1c_1x1"
                )
                logits = tf.squeeze(logits, [1, 2], name="SpatialSqueeze")
            end_points["Logits"] = logits
            end_points["Predictions"] = slim.softmax(logits, scope="Predictions")
    return logits, end_points


# --- metadata and registered names --------------------------------------------------------------
register(
    BackboneInfo(
        name="mobilenet_v1",
        build=mobilenet_v1,
        scope="MobilenetV1",
        default_image_size=224,
        preprocessing="inception",
        end_points=END_POINTS,
        classifier_scope="MobilenetV1/Logits",
        default_cut="Conv2d_13_pointwise",
        default_params={"depth_multiplier": 1.0, "min_depth": 8, "dropout_keep_prob": 0.999, "weight_decay": 0.00004,
                        "batch_norm_decay": 0.9997},
    )
)

# For tests of the pipeline's mechanics (resume, listeners, status, sweeps), as timm keeps test_* models: the
# first three separable blocks of MobileNet v1 under its own variable names, so it restores from any MobileNet v1
# checkpoint (the demo backbone's included) and builds and trains several times faster. Not a published model.
TEST_BLOCKS = 3
register(
    BackboneInfo(
        name="test_mobilenet_v1",
        build=functools.partial(mobilenet_v1, blocks=TEST_BLOCKS),
        scope="MobilenetV1",
        default_image_size=96,
        preprocessing="inception",
        end_points=("Conv2d_0",) + tuple(f"Conv2d_{i}_{part}" for i in range(1, TEST_BLOCKS + 1)
                                         for part in ("depthwise", "pointwise"))
                   + ("AvgPool_1a", "Logits", "Predictions"),
        classifier_scope="MobilenetV1/Logits",
        default_cut=f"Conv2d_{TEST_BLOCKS}_pointwise",
        default_params={"depth_multiplier": 1.0, "min_depth": 8, "dropout_keep_prob": 0.999, "weight_decay": 0.00004,
                        "batch_norm_decay": 0.9997},
    )
)
