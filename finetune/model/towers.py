"""Graph building: backbone -> cut -> head, as towers that share one set of variables.

The *export tower* is built first, at the graph root, from the placeholder ``input:0`` (float RGB
in [0, 255]) to ``logits:0`` and ``probabilities:0``: it carries TF-Slim's own op names, so a
tensor name such as ``MobilenetV1/MobilenetV1/Conv2d_11_pointwise/Relu6:0`` names the cut as
written. The training and evaluation towers reuse its variables under the name scopes ``train/``
and ``eval/``, reading from tf.data iterators. Backbone-below-the-cut and head stay two separate
calls, so features at the cut can later be cached.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

from finetune.model.backbones import PREPROCESSORS, get_backbone, get_network_fn
from finetune.compat import tf, tf1
from finetune.config import BackboneConfig, HeadConfig
from finetune.errors import FinetuneError, closest
from finetune.graphs import upstream_ops
from finetune.model.head import build_head
from finetune.seeding import seeded_getter

log = logging.getLogger(__name__)

INPUT_NAME, LOGITS_NAME, PROBABILITIES_NAME = "input", "logits", "probabilities"


@dataclass
class Tower:
    pixels: tf.Tensor  # float RGB in [0, 255]
    cut: tf.Tensor
    logits: tf.Tensor
    probabilities: tf.Tensor
    end_points: dict


def build_backbone_to_cut(pixels: tf.Tensor, backbone_cfg: BackboneConfig, is_training: bool,
                          allow_unsafe_ops: bool = False) -> tuple[tf.Tensor, dict]:
    """Normalise the pixels as the backbone expects, run it, and return (cut tensor, end points).

    ``allow_unsafe_ops`` (config key ``allow_unsafe_ops``): an imported graph may hold ops outside the op
    gate's list."""
    info = get_backbone(backbone_cfg.name)
    if info.imported:  # read from a graph file: cut where it is imported, preprocessed as its params say
        return info.build_to_cut(pixels, backbone_cfg, allow_unsafe_ops), {}
    network_fn = get_network_fn(info.name, backbone_cfg.num_classes, is_training, **backbone_cfg.params)
    images = PREPROCESSORS[info.preprocessing](pixels)
    _, end_points = network_fn(images)
    return resolve_cut(backbone_cfg.cut, end_points, pixels.graph, _current_name_scope()), end_points


def _current_name_scope() -> str:
    scope = tf1.get_default_graph().get_name_scope()
    return f"{scope}/" if scope else ""


def resolve_cut(cut: str, end_points: dict, graph: tf.Graph, name_scope: str = "") -> tf.Tensor:
    """An end-point name, or a tensor name as it reads in the export tower (root name scope)."""
    if cut in end_points:
        return end_points[cut]
    tensor_name = cut if ":" in cut else f"{cut}:0"
    try:
        return graph.get_tensor_by_name(name_scope + tensor_name)
    except (KeyError, ValueError):
        pass
    tensor_names = [
        out.name[len(name_scope):] for op in graph.get_operations()
        if op.name.startswith(name_scope) for out in op.outputs
    ]
    raise FinetuneError(
        f"Config key 'backbone.cut' is {cut!r}, which is neither an end point nor a tensor of the backbone. "
        f"Closest names: {closest(cut, list(end_points) + tensor_names)}. End points: {', '.join(end_points)}. "
        "List every cut point with `python -m finetune.tools endpoints backbone=NAME`."
    )


def build_tower(pixels: tf.Tensor, backbone_cfg: BackboneConfig, head_cfg: HeadConfig, num_classes: int,
                is_training: bool, backbone_batch_norm_training: bool = False,
                allow_unsafe_ops: bool = False) -> Tower:
    """pixels -> backbone -> cut -> head -> logits, probabilities (variables shared across towers).

    ``is_training`` switches the head's dropout and BatchNorm; the backbone's BatchNorm trains only when
    ``backbone_batch_norm_training`` says so too (a phase's ``batch_norm: train``)."""
    if is_training:
        tf1.train.get_or_create_global_step()  # before any variable scope: the head's dropout reads it
    # Every variable made here draws its initial value from train.seed and its name (finetune.seeding).
    with tf1.variable_scope(tf1.get_variable_scope(), reuse=tf1.AUTO_REUSE, custom_getter=seeded_getter):
        cut, end_points = build_backbone_to_cut(pixels, backbone_cfg, is_training and backbone_batch_norm_training,
                                                allow_unsafe_ops)
        logits = build_head(cut, head_cfg, num_classes, is_training)
    return Tower(pixels, cut, logits, tf.nn.softmax(logits), end_points)


def build_export_tower(backbone_cfg: BackboneConfig, head_cfg: HeadConfig, num_classes: int,
                       allow_unsafe_ops: bool = False) -> Tower:
    """The deployable path, at the graph root: ``input:0`` [None, H, W, 3] -> ``logits:0``, ``probabilities:0``."""
    size = backbone_cfg.image_size
    pixels = tf1.placeholder(tf.float32, [None, size, size, 3], name=INPUT_NAME)
    tower = build_tower(pixels, backbone_cfg, head_cfg, num_classes, is_training=False,
                        allow_unsafe_ops=allow_unsafe_ops)
    logits = tf.identity(tower.logits, name=LOGITS_NAME)
    probabilities = tf.nn.softmax(tower.logits, name=PROBABILITIES_NAME)
    return Tower(pixels, tower.cut, logits, probabilities, tower.end_points)


def variables_read_by(tensors: Iterable[tf.Tensor | tf.Operation]) -> set[str]:
    """Names of the variables that ``tensors`` depend on (a walk over data and control inputs)."""
    return {op.name for op in upstream_ops(tensors) if op.type in {"VarHandleOp", "VariableV2", "Variable"}}
