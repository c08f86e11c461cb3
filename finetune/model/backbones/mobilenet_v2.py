"""MobileNet v2 (Sandler et al., 2018) with the variable, end-point and tensor names of TF-Slim's model zoo.

Names, shapes and numerics follow the published definition so that the official
``mobilenet_v2_*`` checkpoints restore without renaming: a 3x3/2 stem ``Conv``, seventeen
inverted-residual blocks ``expanded_conv`` .. ``expanded_conv_16`` (1x1 expansion by 6, 3x3
depthwise, linear 1x1 projection, residual when stride 1 and depth unchanged), a 1x1 ``Conv_1``
and a global average pool before a 1x1-convolution classifier. SAME padding, BatchNorm with
epsilon 0.001 and decay 0.997 (centre and scale), ReLU6; channel counts are rounded to multiples
of 8. The depth multiplier reaches the last convolution (1280) only when it is above 1.

Built at the graph root, the tensors read as in the published frozen graphs, e.g.
``MobilenetV2/expanded_conv_14/output:0``, ``MobilenetV2/Conv_1/Relu6:0``,
``MobilenetV2/Logits/output:0`` and ``MobilenetV2/Predictions/Reshape_1:0``.
"""
from __future__ import annotations


from finetune.model.backbones.mobilenet_v1 import mobilenet_arg_scope
from finetune.model.backbones.registry import BackboneInfo, register
from finetune.compat import slim, tf, tf1

_STEM_DEPTH = 32
_LAST_DEPTH = 1280
# (expansion factor, output depth, stride) of the inverted-residual blocks, in network order.
_BLOCKS = (
    (1, 16, 1),
    (6, 24, 2), (6, 24, 1),
    (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
    (6, 96, 1), (6, 96, 1), (6, 96, 1),
    (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)
_BLOCK_NAMES = tuple("expanded_conv" if i == 0 else f"expanded_conv_{i}" for i in range(len(_BLOCKS)))
END_POINTS = ("Conv",) + _BLOCK_NAMES + ("Conv_1", "global_pool", "Logits", "Predictions")


# --- blocks -------------------------------------------------------------------------------------
def round_depth(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``min_value``), never
    more than 10% below ``value``: the channel rounding of the reference implementation."""
    floor = min_value or divisor
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def inverted_residual(
    net: tf.Tensor, expansion: int, depth: int, stride: int, scope: str, end_points: dict[str, tf.Tensor]
) -> tf.Tensor:
    """expand (1x1, ReLU6) -> depthwise 3x3 (ReLU6) -> project (1x1, linear) [+ input]."""
    inputs = net
    input_depth = net.shape[-1]
    with tf1.variable_scope(scope):
        expanded_depth = round_depth(input_depth * expansion) if expansion > 1 else input_depth
        if expanded_depth > input_depth:
            net = slim.conv2d(net, expanded_depth, [1, 1], scope="expand")
            net = tf.identity(net, name="expansion_output")
            end_points[f"{scope}/expansion_output"] = net
        net = slim.separable_conv2d(net, None, [3, 3], depth_multiplier=1, stride=stride, scope="depthwise")
        net = tf.identity(net, name="depthwise_output")
        end_points[f"{scope}/depthwise_output"] = net
        net = slim.conv2d(net, depth, [1, 1], activation_fn=None, scope="project")
        net = tf.identity(net, name="projection_output")
        if stride == 1 and depth == input_depth:
            net = net + inputs
        net = tf.identity(net, name="output")
    end_points[scope] = net
    return net


# --- the network --------------------------------------------------------------------------------
def mobilenet_v2_base(images: tf.Tensor, depth_multiplier: float, min_depth: int) -> tuple[tf.Tensor, dict]:
    """The convolutional trunk, ``Conv`` .. ``Conv_1``, in the caller's variable scope."""
    def depth(channels: int) -> int:
        return round_depth(channels * depth_multiplier, 8, min_depth)

    end_points: dict[str, tf.Tensor] = {}
    net = slim.conv2d(images, depth(_STEM_DEPTH), [3, 3], stride=2, scope="Conv")
    end_points["Conv"] = net
    for name, (expansion, channels, stride) in zip(_BLOCK_NAMES, _BLOCKS):
        net = inverted_residual(net, expansion, depth(channels), stride, name, end_points)
    last_depth = depth(_LAST_DEPTH) if depth_multiplier > 1 else _LAST_DEPTH
    net = slim.conv2d(net, last_depth, [1, 1], stride=1, scope="Conv_1")
    end_points["Conv_1"] = net
    return net, end_points


def mobilenet_v2(
    images: tf.Tensor,
    num_classes: int = 1001,
    is_training: bool = False,
    depth_multiplier: float = 1.0,
    min_depth: int = 8,
    dropout_keep_prob: float = 0.8,
    weight_decay: float = 0.00004,
    batch_norm_decay: float = 0.997,
    scope: str = "MobilenetV2",
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Logits and end points; ``num_classes=0`` stops after ``global_pool`` (features only)."""
    if depth_multiplier <= 0:
        raise ValueError("depth_multiplier must be greater than zero")
    with tf1.variable_scope(scope, "MobilenetV2", [images]):
        with slim.arg_scope(mobilenet_arg_scope(is_training, weight_decay, batch_norm_decay)):
            net = tf.identity(images, name="input")
            net, end_points = mobilenet_v2_base(net, depth_multiplier, min_depth)
            with tf1.variable_scope("Logits"):
                # Global average pool over whatever spatial size reaches here (7x7 at 224).
                net = tf.reduce_mean(net, [1, 2], keepdims=True, name="AvgPool")
                end_points["global_pool"] = net
                if not num_classes:
                    return net, end_points
                net = slim.dropout(net, keep_prob=dropout_keep_prob, scope="Dropout")
                logits = slim.conv2d(
                    net, num_classes, [1, 1], activation_fn=None, normalizer_fn=None, scope="Conv2d_1c_1x1"
                )
                logits = tf.squeeze(logits, [1, 2])
                logits = tf.identity(logits, name="output")
            end_points["Logits"] = logits
            end_points["Predictions"] = slim.softmax(logits, scope="Predictions")
    return logits, end_points


# --- metadata and registered names --------------------------------------------------------------
register(
    BackboneInfo(
        name="mobilenet_v2",
        build=mobilenet_v2,
        scope="MobilenetV2",
        default_image_size=224,
        preprocessing="inception",
        end_points=END_POINTS,
        classifier_scope="MobilenetV2/Logits",
        default_cut="Conv_1",
        default_params={"depth_multiplier": 1.0, "min_depth": 8, "dropout_keep_prob": 0.8, "weight_decay": 0.00004,
                        "batch_norm_decay": 0.997},
    )
)
