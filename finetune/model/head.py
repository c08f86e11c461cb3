"""The new head: a list of layers from the config, built in its own variable scope on the cut tensor.

Every layer type is one small builder in ``LAYER_BUILDERS``; the valid types and activations, and the
checks of each layer's settings, live in :mod:`finetune.validate`. ``filters``/``units`` left null mean
"one per class". The head ends in logits of shape [batch, num_classes]: a 1x1 spatial map is
squeezed (the Keras recipe's final reshape), anything else is an error that says how to fix it.
"""
from __future__ import annotations

from typing import Callable, Optional

from finetune.compat import slim, tf, tf1
from finetune.config import HeadConfig, LayerConfig
from finetune.errors import FinetuneError
from finetune.seeding import name_key, seed_value
from finetune.vocab import ACTIVATIONS as ACTIVATION_NAMES
from finetune.vocab import LAYER_TYPES, WINDOWED_LAYERS, implementations

ACTIVATIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = implementations(ACTIVATION_NAMES, {
    "relu": tf.nn.relu,
    "relu6": tf.nn.relu6,
    "elu": tf.nn.elu,
    "sigmoid": tf.sigmoid,
    "tanh": tf.tanh,
}, "head layer activations")


def _activation(layer: LayerConfig) -> Optional[Callable]:
    if layer.activation is None:
        return None
    return ACTIVATIONS[layer.activation]


def _width(requested: Optional[int], num_classes: int) -> int:
    return num_classes if requested is None else requested


def _norm(layer: LayerConfig, is_training: bool) -> dict:
    if not layer.batch_norm:
        return {"normalizer_fn": None}
    return {"normalizer_fn": slim.batch_norm, "normalizer_params": {"is_training": is_training, "scale": True}}


def _conv2d(net, layer, num_classes, is_training, scope):
    return slim.conv2d(net, _width(layer.filters, num_classes), layer.kernel_size, stride=layer.stride or 1,
                       padding=layer.padding, activation_fn=_activation(layer), scope=scope,
                       **_norm(layer, is_training))


def _separable_conv2d(net, layer, num_classes, is_training, scope):
    return slim.separable_conv2d(net, _width(layer.filters, num_classes), layer.kernel_size,
                                 depth_multiplier=layer.depth_multiplier, stride=layer.stride or 1,
                                 padding=layer.padding, activation_fn=_activation(layer), scope=scope,
                                 **_norm(layer, is_training))


def _avg_pool(net, layer, num_classes, is_training, scope):
    # As in Keras, a pool's stride defaults to its window.
    return slim.avg_pool2d(net, layer.kernel_size, stride=layer.stride or layer.kernel_size,
                           padding=layer.padding, scope=scope)


def _max_pool(net, layer, num_classes, is_training, scope):
    return slim.max_pool2d(net, layer.kernel_size, stride=layer.stride or layer.kernel_size,
                           padding=layer.padding, scope=scope)


def _global_avg_pool(net, layer, num_classes, is_training, scope):
    return tf.reduce_mean(net, axis=[1, 2], keepdims=True, name=scope)  # stays 4-D: a 1x1 conv may follow


def _dropout(net, layer, num_classes, is_training, scope):
    """Dropout whose mask depends only on ``train.seed``, the layer and the global step (a stateless draw),
    so a resumed run drops exactly the units an uninterrupted one would have dropped."""
    if not is_training or layer.rate == 0:
        return tf.identity(net, name=scope)
    with tf.name_scope(scope):
        step = tf.cast(tf1.train.get_global_step(), tf.int64)  # created at the root by build_tower
        seed = tf.stack([seed_value() + name_key(scope), step])
        return tf.nn.experimental.stateless_dropout(net, rate=layer.rate, seed=seed)


def _batch_norm(net, layer, num_classes, is_training, scope):
    return slim.batch_norm(net, is_training=is_training, scale=True, activation_fn=_activation(layer), scope=scope)


def _activation_layer(net, layer, num_classes, is_training, scope):
    return ACTIVATIONS[layer.activation](net, name=scope)  # not null: finetune.validate checks it


def _flatten(net, layer, num_classes, is_training, scope):
    return slim.flatten(net, scope=scope)


def _dense(net, layer, num_classes, is_training, scope):
    if net.shape.rank != 2:
        net = slim.flatten(net, scope=f"{scope}_flatten")
    return slim.fully_connected(net, _width(layer.units, num_classes), activation_fn=_activation(layer), scope=scope,
                                **_norm(layer, is_training))


LAYER_BUILDERS: dict[str, Callable] = implementations(LAYER_TYPES, {
    "conv2d": _conv2d,
    "separable_conv2d": _separable_conv2d,
    "avg_pool": _avg_pool,
    "max_pool": _max_pool,
    "global_avg_pool": _global_avg_pool,
    "dropout": _dropout,
    "batch_norm": _batch_norm,
    "activation": _activation_layer,
    "flatten": _flatten,
    "dense": _dense,
}, "head layer types")


def check_window(net: tf.Tensor, layer: LayerConfig, scope: str, features: tf.Tensor) -> None:
    """FinetuneError when a convolution or pool cannot run on ``net``: it needs a 4-D map, and with
    VALID padding a window no larger than the map (TF would fail on a negative output size)."""
    if layer.type not in WINDOWED_LAYERS:
        return
    if net.shape.rank is None:  # unknown: TF checks at run time
        return
    cut_shape = features.shape.as_list() if features.shape.rank is not None else "unknown"
    cut = f"the cut {features.name} has shape {cut_shape}"
    if net.shape.rank != 4:
        raise FinetuneError(
            f"Head layer {scope!r} ({layer.type}) needs a 4-D feature map [batch, height, width, channels] but gets "
            f"shape {net.shape.as_list()} ({cut}). Move it before any flatten or dense layer.")
    height, width = net.shape.as_list()[1:3]
    sides = [side for side in (height, width) if side is not None]
    if layer.padding == "VALID" and sides and layer.kernel_size > min(sides):
        raise FinetuneError(
            f"Head layer {scope!r} ({layer.type}, padding VALID) has a {layer.kernel_size}x{layer.kernel_size} "
            f"window but its input is only {height}x{width} (shape {net.shape.as_list()}; {cut}). Use a "
            f"kernel_size of at most {min(sides)}, padding SAME, or a larger cut (a bigger "
            "backbone.image_size or an earlier end point).")


def build_head(features: tf.Tensor, head_cfg: HeadConfig, num_classes: int, is_training: bool) -> tf.Tensor:
    """Logits [batch, num_classes] from the cut tensor, variables under ``head_cfg.scope``."""
    regularizer = slim.l2_regularizer(head_cfg.weight_decay) if head_cfg.weight_decay > 0 else None
    net = features
    with tf1.variable_scope(head_cfg.scope), slim.arg_scope([slim.batch_norm], decay=head_cfg.batch_norm_decay):
        # Glorot-uniform, as TF-Slim's default, but as an initializer object: the tower's getter
        # (:func:`finetune.seeding.seeded_getter`) makes it draw from train.seed and the variable's name.
        with slim.arg_scope([slim.conv2d, slim.separable_conv2d, slim.fully_connected], weights_regularizer=regularizer,
                            weights_initializer=tf1.glorot_uniform_initializer()):
            for index, layer in enumerate(head_cfg.layers):
                scope = layer.name or f"{layer.type}_{index}"
                check_window(net, layer, scope, features)
                net = LAYER_BUILDERS[layer.type](net, layer, num_classes, is_training, scope)
        if net.shape.rank == 4 and net.shape[1] == 1 and net.shape[2] == 1:
            net = tf.squeeze(net, [1, 2], name="squeeze")
    if net.shape.rank != 2 or net.shape[1] != num_classes:
        raise FinetuneError(
            f"The head ends in shape {net.shape.as_list()}, but logits must be [batch, {num_classes}] "
            f"(one per class) from features of shape {features.shape.as_list()}. End 'head.layers' with "
            "a dense layer with 'units: null', or with a pool to 1x1 and a conv2d with 'filters: null'."
        )
    return net
