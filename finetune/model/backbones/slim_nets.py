"""The classification nets that ``tf_slim.nets`` ships: Inception v1-v3, ResNet v1/v2 (50/101/152), VGG 16/19.

The networks are TF-Slim's own code, built under their own arg scopes, so variable names,
shapes and numerics are those of the model-zoo checkpoints. This module only adds what the
pipeline needs on top, one small builder per family:

- ``num_classes=0`` returns pooled features and creates no classifier variables. TF-Slim's
  ResNets support that (``num_classes=None``); its Inceptions and VGGs always build a classifier,
  so their trunk is built here and pooled exactly as the full net pools it.
- logits are always ``[batch, classes]`` (TF-Slim's ResNets return them ``[batch, 1, 1, classes]``).
- ResNet v2 gains a ``<scope>/postnorm`` end point: the final BatchNorm + ReLU, the last feature
  map before pooling, which TF-Slim computes but does not list.

Zoo class counts differ: 1001 (background + 1000) for Inception and ResNet v2, 1000 for VGG and
ResNet v1. Preprocessing: "inception" ([-1, 1]) for Inception and ResNet v2; "vgg" (RGB minus the
ImageNet RGB mean) for VGG and ResNet v1. The VGG and ResNet v1 checkpoints were converted from
Caffe, but TF-Slim's ``vgg_preprocessing`` feeds them RGB, and so do we: do not swap to BGR.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from tf_slim.nets import inception_v1, inception_v2, inception_v3, resnet_utils, resnet_v1, resnet_v2, vgg

from finetune.model.backbones.registry import BackboneInfo, register
from finetune.compat import slim, tf, tf1

Endpoints = dict[str, tf.Tensor]


# --- blocks: what each family adds to TF-Slim's net ---------------------------------------------
def _pool_kernel(net: tf.Tensor, size: int) -> list[int]:
    """``size`` x ``size``, shrunk to a smaller feature map as TF-Slim's Inception v2/v3 do."""
    height, width = net.shape[1], net.shape[2]
    if height is None or width is None:
        return [size, size]
    return [min(height, size), min(width, size)]


def _build_inception(
    images: tf.Tensor,
    num_classes: int,
    is_training: bool,
    *,
    net_fn: Callable,
    base_fn: Callable,
    arg_scope_fn: Callable,
    scope: str,
    pool: tuple[int, int, str],
    dropout_keep_prob: float,
    weight_decay: float,
    **net_params: Any,
) -> tuple[tf.Tensor, Endpoints]:
    """TF-Slim's Inception; without classes its trunk and the ``Logits/<pool>`` average pool only.

    ``pool`` is (size, stride, scope pattern) as in TF-Slim's net. The kernel shrinks to feature maps
    smaller than ``size`` (TF-Slim's Inception v1 would fail there instead).
    """
    with slim.arg_scope(arg_scope_fn(weight_decay=weight_decay)):
        if num_classes:
            return net_fn(images, num_classes=num_classes, is_training=is_training,
                          dropout_keep_prob=dropout_keep_prob, scope=scope, **net_params)
        size, stride, name = pool
        with tf1.variable_scope(scope, scope, [images]) as outer:
            with slim.arg_scope([slim.batch_norm, slim.dropout], is_training=is_training):
                net, end_points = base_fn(images, scope=outer)
                with tf1.variable_scope("Logits"):
                    kernel = _pool_kernel(net, size)
                    net = slim.avg_pool2d(net, kernel, stride=stride, padding="VALID", scope=name.format(*kernel))
    end_points["global_pool"] = net
    return net, end_points


def _input_of(tensor: tf.Tensor, op_type: str) -> tf.Tensor:
    """The first input of ``tensor``'s op, which must be an ``op_type`` (guards the walk below)."""
    if tensor.op.type != op_type:
        raise RuntimeError(f"expected {tensor.name} to come from a {op_type}, not a {tensor.op.type}")
    return tensor.op.inputs[0]


def _build_resnet(
    images: tf.Tensor,
    num_classes: int,
    is_training: bool,
    *,
    net_fn: Callable,
    scope: str,
    postnorm: bool,
    weight_decay: float,
) -> tuple[tf.Tensor, Endpoints]:
    """TF-Slim's ResNet with global pooling; ``num_classes=0`` maps to its ``num_classes=None``."""
    with slim.arg_scope(resnet_utils.resnet_arg_scope(weight_decay=weight_decay)):
        net, slim_points = net_fn(images, num_classes=num_classes or None, is_training=is_training,
                                  global_pool=True, scope=scope)
    # TF-Slim's head is pool5 (a Mean) -> 1x1 conv "logits" (Conv2D, BiasAdd); read the pooled
    # features and the map they pool from the graph it built.
    pooled = _input_of(_input_of(net, "BiasAdd"), "Conv2D") if num_classes else net
    prefix = f"{tf1.get_variable_scope().name}/{scope}".lstrip("/")
    logits_key = f"{prefix}/logits"
    end_points = {key: value for key, value in slim_points.items() if key not in (logits_key, "predictions")}
    if postnorm:
        end_points[f"{prefix}/postnorm"] = _input_of(pooled, "Mean")
    end_points["global_pool"] = pooled
    if not num_classes:
        return pooled, end_points
    with tf1.name_scope(pooled.op.name.rsplit("/", 1)[0] + "/"):  # back into the net's name scope
        logits = tf.squeeze(net, [1, 2], name="SpatialSqueeze")
    end_points[logits_key] = net
    end_points[f"{prefix}/spatial_squeeze"] = logits
    end_points["predictions"] = slim_points["predictions"]
    return logits, end_points


def _vgg_trunk(
    images: tf.Tensor, repeats: tuple[int, ...], is_training: bool, dropout_keep_prob: float, scope: str
) -> tuple[tf.Tensor, Endpoints]:
    """TF-Slim's VGG up to ``fc7`` (which it cannot stop at): same layers, names and end points."""
    with tf1.variable_scope(scope, scope, [images]) as outer:
        collection = outer.original_name_scope + "_end_points"
        with slim.arg_scope([slim.conv2d, slim.max_pool2d], outputs_collections=collection):
            net = images
            for index, (count, depth) in enumerate(zip(repeats, (64, 128, 256, 512, 512)), start=1):
                net = slim.repeat(net, count, slim.conv2d, depth, [3, 3], scope=f"conv{index}")
                net = slim.max_pool2d(net, [2, 2], scope=f"pool{index}")
            net = slim.conv2d(net, 4096, [7, 7], padding="VALID", scope="fc6")
            net = slim.dropout(net, dropout_keep_prob, is_training=is_training, scope="dropout6")
            net = slim.conv2d(net, 4096, [1, 1], scope="fc7")
        return net, slim.utils.convert_collection_to_dict(collection)


def _build_vgg(
    images: tf.Tensor,
    num_classes: int,
    is_training: bool,
    *,
    net_fn: Callable,
    repeats: tuple[int, ...],
    scope: str,
    dropout_keep_prob: float,
    weight_decay: float,
) -> tuple[tf.Tensor, Endpoints]:
    """TF-Slim's VGG; without classes it stops at ``fc7`` (``[batch, 1, 1, 4096]`` at 224x224)."""
    with slim.arg_scope(vgg.vgg_arg_scope(weight_decay=weight_decay)):
        if num_classes:
            return net_fn(images, num_classes=num_classes, is_training=is_training,
                          dropout_keep_prob=dropout_keep_prob, scope=scope)
        return _vgg_trunk(images, repeats, is_training, dropout_keep_prob, scope)


# --- metadata and registered names --------------------------------------------------------------
_INCEPTION_V1_POINTS = (
    "Conv2d_1a_7x7", "MaxPool_2a_3x3", "Conv2d_2b_1x1", "Conv2d_2c_3x3", "MaxPool_3a_3x3", "Mixed_3b", "Mixed_3c",
    "MaxPool_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool_5a_2x2", "Mixed_5b",
    "Mixed_5c", "Logits", "Predictions",
)
_INCEPTION_V2_POINTS = (
    "Conv2d_1a_7x7", "MaxPool_2a_3x3", "Conv2d_2b_1x1", "Conv2d_2c_3x3", "MaxPool_3a_3x3", "Mixed_3b", "Mixed_3c",
    "Mixed_4a", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_5a", "Mixed_5b", "Mixed_5c",
    "Logits", "Predictions",
)
_INCEPTION_V3_POINTS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_3a_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "MaxPool_5a_3x3", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "PreLogits", "Logits", "Predictions",
)
_INCEPTION_PARAMS = {"dropout_keep_prob": 0.8, "weight_decay": 0.00004}


def _inception(name: str, module: Any, scope: str, size: int, pool: tuple, points: tuple, cut: str,
               **extra_params: Any) -> BackboneInfo:
    build = functools.partial(
        _build_inception, net_fn=getattr(module, name), base_fn=getattr(module, f"{name}_base"),
        arg_scope_fn=getattr(module, f"{name}_arg_scope"), scope=scope, pool=pool,
    )
    return BackboneInfo(
        name=name, build=build, scope=scope, default_image_size=size, preprocessing="inception",
        end_points=points, classifier_scope=f"{scope}/Logits", default_cut=cut,
        default_params={**_INCEPTION_PARAMS, **extra_params},
    )


# Bottleneck units per block (blocks 1-4) of the ResNets TF-Slim ships.
_RESNET_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _resnet(version: int, layers: int) -> BackboneInfo:
    scope = f"resnet_v{version}_{layers}"
    module = resnet_v1 if version == 1 else resnet_v2
    ordered: list[str] = []  # each block's end point follows its last unit
    for block, count in enumerate(_RESNET_UNITS[layers], start=1):
        ordered += [f"{scope}/block{block}/unit_{unit}/bottleneck_v{version}" for unit in range(1, count + 1)]
        ordered.append(f"{scope}/block{block}")
    features = (f"{scope}/postnorm",) if version == 2 else ()
    points = (f"{scope}/conv1", *ordered, *features, "global_pool",
              f"{scope}/logits", f"{scope}/spatial_squeeze", "predictions")
    return BackboneInfo(
        name=scope,
        build=functools.partial(_build_resnet, net_fn=getattr(module, scope), scope=scope, postnorm=version == 2),
        scope=scope,
        default_image_size=224,
        preprocessing="vgg" if version == 1 else "inception",
        end_points=points,
        classifier_scope=f"{scope}/logits",
        default_cut=features[0] if features else f"{scope}/block4",
        default_params={"weight_decay": 0.0001},
    )


# Convolutions per stage (conv1-conv5) of VGG 16 and 19.
_VGG_REPEATS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


def _vgg(layers: int) -> BackboneInfo:
    scope = f"vgg_{layers}"
    repeats = _VGG_REPEATS[layers]
    points: list[str] = []
    for stage, count in enumerate(repeats, start=1):
        points += [f"{scope}/conv{stage}/conv{stage}_{i}" for i in range(1, count + 1)] + [f"{scope}/pool{stage}"]
    points += [f"{scope}/fc6", f"{scope}/fc7", f"{scope}/fc8"]
    return BackboneInfo(
        name=scope,
        build=functools.partial(_build_vgg, net_fn=getattr(vgg, scope), repeats=repeats, scope=scope),
        scope=scope,
        default_image_size=224,
        preprocessing="vgg",
        end_points=tuple(points),
        classifier_scope=f"{scope}/fc8",
        default_cut=f"{scope}/fc7",
        default_params={"dropout_keep_prob": 0.5, "weight_decay": 0.0005},
    )


# The zoo's inception_v3.ckpt also holds InceptionV3/AuxLogits/*; the auxiliary head is off by
# default (a restore lists those variables as unused); create_aux_logits: true rebuilds it.
for _info in (
    _inception("inception_v1", inception_v1, "InceptionV1", 224, (7, 1, "MaxPool_0a_7x7"),
               _INCEPTION_V1_POINTS, "Mixed_5c"),
    _inception("inception_v2", inception_v2, "InceptionV2", 224, (7, 2, "AvgPool_1a_{}x{}"),
               _INCEPTION_V2_POINTS, "Mixed_5c"),
    _inception("inception_v3", inception_v3, "InceptionV3", 299, (8, 2, "AvgPool_1a_{}x{}"),
               _INCEPTION_V3_POINTS, "Mixed_7c", create_aux_logits=False),
    *(_resnet(version, layers) for version in (1, 2) for layers in (50, 101, 152)),
    *(_vgg(layers) for layers in (16, 19)),
):
    register(_info)
