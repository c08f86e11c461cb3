"""Optimise a frozen graph for inference: strip training-only nodes, fold BatchNorm into convolutions.

TensorFlow's ``optimize_for_inference_lib`` does the work; this module guards it where TF 2.21 goes
wrong (see :func:`optimize_for_inference`) and checks that no BatchNorm or training-only op is left.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from tensorflow.python.tools import optimize_for_inference_lib as tf_optimize
from tensorflow.python.tools import strip_unused_lib

from finetune.compat import tf, tf1
from finetune.errors import FinetuneError
from finetune.graphs import GraphDef, clear_placement, check_nodes_exist, import_graph, node_name

log = logging.getLogger(__name__)

BATCH_NORM_OPS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "BatchNormWithGlobalNormalization")
# Ops that only matter while training or debugging; none may remain in an optimised graph.
TRAINING_ONLY_OPS = frozenset({
    "CheckNumerics", "CheckNumericsV2", "Assert", "Print", "PrintV2", "PreventGradient", "StopGradient",
})
# Output 0 is input 0: made Identity, then spliced by TF. (TF's remove_training_nodes deletes CheckNumerics
# together with the data edges leaving it, which disconnects its consumers, so it must not see one.)
_PASS_THROUGH_OPS = frozenset({"CheckNumerics", "CheckNumericsV2", "Print", "PreventGradient"})
_SIDE_EFFECT_OPS = frozenset({"Assert", "PrintV2"})  # reached only through control edges: dropped
_CONV_OPS = ("Conv2D", "DepthwiseConv2dNative")

def optimize_for_inference(graph_def: GraphDef, input_names: Sequence[str], output_names: Sequence[str]) -> GraphDef:
    """Strip training-only nodes and fold inference-mode batch norms into the convolutions before them.

    Steps (TensorFlow's ``optimize_for_inference_lib`` pieces, with checks around them): keep the
    subgraph between inputs and outputs, the inputs keeping their dtype and shape (a dynamic batch
    stays dynamic); drop Assert/PrintV2 and splice Identity/CheckNumerics/StopGradient chains; fold
    each FusedBatchNorm* that follows a Conv2D/DepthwiseConv2dNative (optionally + BiasAdd) into the
    weights, emitted as Conv + BiasAdd. Where folding would not be exact (the conv output is used
    elsewhere, or the norm follows another op) the norm becomes a constant Mul + Add instead. A
    norm in training mode or with non-constant parameters is a FinetuneError.
    """
    inputs = [node_name(name) for name in input_names]
    outputs = [node_name(name) for name in output_names]
    check_nodes_exist(graph_def, inputs, "input")
    check_nodes_exist(graph_def, outputs, "output")
    nodes = {node.name: node for node in graph_def.node}
    dtypes = [_input_dtype(nodes[name]) for name in inputs]

    def keep_meta(result: GraphDef) -> GraphDef:
        # TF's passes rebuild the GraphDef and drop the function library (and some the versions).
        result.library.CopyFrom(graph_def.library)
        result.versions.CopyFrom(graph_def.versions)
        return result

    optimized = GraphDef()
    optimized.CopyFrom(graph_def)  # TF's fold_batch_norms edits its input in place
    clear_placement(optimized)
    tf_optimize.ensure_graph_is_valid(optimized)
    optimized = keep_meta(tf_optimize.convert_placeholder_to_const(optimized))  # keras_learning_phase -> False
    optimized = keep_meta(strip_unused_lib.strip_unused(optimized, inputs, outputs, dtypes))
    optimized = keep_meta(_drop_side_effect_ops(optimized, outputs))
    optimized = keep_meta(tf1.graph_util.remove_training_nodes(optimized, protected_nodes=outputs))
    optimized = keep_meta(tf_optimize.fuse_decomposed_batch_norm(optimized))
    optimized = keep_meta(_batch_norms_to_scale_shift(optimized, outputs, only_unfoldable=True))
    optimized = keep_meta(tf_optimize.fold_batch_norms(optimized))
    optimized = keep_meta(_batch_norms_to_scale_shift(optimized, outputs, only_unfoldable=False))
    _check_optimized(optimized)
    tf_optimize.ensure_graph_is_valid(optimized)
    import_graph(optimized)  # fails here, not at the caller, if a pass produced a bad graph
    log.info("Optimised graph: %d -> %d nodes", len(graph_def.node), len(optimized.node))
    return optimized


def _input_dtype(node: Any) -> int:
    for attr in ("dtype", "T"):
        if attr in node.attr:
            return node.attr[attr].type
    raise FinetuneError(f"Input node {node.name!r} ({node.op}) has no dtype; name the input placeholder instead.")


def _drop_side_effect_ops(graph_def: GraphDef, outputs: list[str]) -> GraphDef:
    """Remove Assert/PrintV2 (and the control edges to them); CheckNumerics and other pass-through ops
    become Identity."""
    dropped = {node.name for node in graph_def.node if node.op in _SIDE_EFFECT_OPS and node.name not in outputs}
    result = GraphDef()
    for node in graph_def.node:
        if node.name in dropped:
            continue
        new = result.node.add()
        new.CopyFrom(node)
        del new.input[:]
        new.input.extend(i for i in node.input if not (i.startswith("^") and i[1:] in dropped))
        if node.op in _PASS_THROUGH_OPS:
            control = [i for i in new.input if i.startswith("^")]
            new.op = "Identity"
            del new.input[:]
            new.input.extend([node.input[0], *control])
            for attr in list(new.attr):
                if attr != "T":
                    del new.attr[attr]
    return tf1.graph_util.extract_sub_graph(result, outputs)


def _consumer_counts(graph_def: GraphDef, outputs: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(outputs, 1)  # an output is consumed by the caller
    for node in graph_def.node:
        for name in node.input:
            counts[node_name(name)] = counts.get(node_name(name), 0) + 1
    return counts


def _const_value(nodes: dict[str, Any], name: str) -> np.ndarray | None:
    node = nodes.get(node_name(name))
    while node is not None and node.op == "Identity":
        node = nodes.get(node_name(node.input[0]))
    return None if node is None or node.op != "Const" else tf.make_ndarray(node.attr["value"].tensor)


def _exactly_foldable(norm: Any, nodes: dict[str, Any], consumers: dict[str, int]) -> bool:
    """Whether TF's fold_batch_norms can fold ``norm`` without changing any other node's value."""
    x = nodes.get(node_name(norm.input[0]))
    if x is not None and x.op in ("BiasAdd", "Add", "AddV2"):
        if consumers.get(x.name, 0) != 1:
            return False
        first, second = (nodes.get(node_name(i)) for i in x.input[:2])
        x = first if first is not None and first.op in _CONV_OPS else second
    same_dtype = "U" not in norm.attr or norm.attr["T"].type == norm.attr["U"].type
    return (  # TF's fold also deletes the weights node: it must feed this conv only
        x is not None and x.op in _CONV_OPS and consumers.get(x.name, 0) == 1
        and nodes.get(node_name(x.input[1]), x).op == "Const" and consumers.get(node_name(x.input[1]), 0) == 1
        and same_dtype
    )


def _batch_norms_to_scale_shift(graph_def: GraphDef, outputs: list[str], only_unfoldable: bool) -> GraphDef:
    """Replace inference-mode FusedBatchNorm* nodes by ``x * scale + offset`` with constant scale/offset."""
    nodes = {node.name: node for node in graph_def.node}
    consumers = _consumer_counts(graph_def, outputs)
    replacements: dict[str, list[Any]] = {}
    for node in graph_def.node:
        if not node.op.startswith("FusedBatchNorm"):
            continue
        if node.attr["is_training"].b:
            raise FinetuneError(
                f"Batch norm {node.name!r} normalises with batch statistics (is_training=True). Build the "
                "exported graph with is_training=False before freezing it."
            )
        if only_unfoldable and _exactly_foldable(node, nodes, consumers):
            continue
        params = [_const_value(nodes, name) for name in node.input[1:5]]
        if any(p is None for p in params):
            continue  # reported by _check_optimized
        replacements[node.name] = _scale_shift_nodes(node, *params)
    if not replacements:
        return graph_def
    result = GraphDef()
    for node in graph_def.node:
        result.node.extend(replacements.get(node.name, [node]))
    return result


def _scale_shift_nodes(norm: Any, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray) -> list[Any]:
    dtype = tf.as_dtype(norm.attr["T"].type)
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + norm.attr["epsilon"].f)
    offset = beta - mean * scale
    data_format = norm.attr["data_format"].s.decode() or "NHWC"
    if data_format.startswith("NC"):  # channels on axis 1: [C, 1, 1(, 1)] broadcasts over the spatial axes
        shape = [len(scale)] + [1] * (len(data_format) - 2)
        scale, offset = scale.reshape(shape), offset.reshape(shape)

    def node(op: str, name: str, inputs: list[str], **attrs: Any) -> Any:
        new = tf1.NodeDef(op=op, name=name, input=inputs)
        for key, value in attrs.items():
            new.attr[key].CopyFrom(value)
        return new

    type_attr = tf1.AttrValue(type=dtype.as_datatype_enum)
    const = lambda name, value: node(  # noqa: E731
        "Const", name, [], dtype=type_attr,
        value=tf1.AttrValue(tensor=tf.make_tensor_proto(value.astype(dtype.as_numpy_dtype))))
    control = [i for i in norm.input if i.startswith("^")]
    return [
        const(f"{norm.name}_scale", scale),
        const(f"{norm.name}_offset", offset),
        node("Mul", f"{norm.name}_mul", [norm.input[0], f"{norm.name}_scale", *control], T=type_attr),
        node("AddV2", norm.name, [f"{norm.name}_mul", f"{norm.name}_offset"], T=type_attr),
    ]


def _check_optimized(graph_def: GraphDef) -> None:
    left = [f"{n.name} ({n.op})" for n in graph_def.node if n.op in BATCH_NORM_OPS or n.op in TRAINING_ONLY_OPS]
    if left:
        raise FinetuneError(
            f"Could not remove {len(left)} batch-norm or training-only node(s): {', '.join(left[:5])}. Their "
            "parameters are not constants (freeze the graph first) or they are protected as outputs."
        )


# ---------------------------------------------------------------------------------------------- running
