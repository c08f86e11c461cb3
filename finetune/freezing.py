"""Freezing: a session's (or a checkpoint's) variables become constants, keeping only what the outputs need.

Every function builds in a fresh ``tf.Graph`` or reads the session's own; TensorFlow's
``convert_variables_to_constants`` does the work, and this module adds what a deployable file
needs: devices and colocation cleared, the function library pruned to what the kept nodes call (a
training graph's tf.data functions read files), and for a foreign ``.meta`` graph a Saver of our own
(the file's saver is never imported or run).
"""
from __future__ import annotations

import os

from finetune.compat import tf, tf1
from finetune.errors import FinetuneError, first_line
from finetune.graphs import (GraphDef, check_nodes_exist, clear_placement, import_graph, load_meta_graph_def, node_name,
                             prune_library)
from finetune.op_gate import check_ops


def freeze_session(sess: tf1.Session, output_node_names: list[str]) -> GraphDef:
    """Variables -> constants, keeping only what the outputs need; devices and colocation cleared."""
    outputs = [node_name(name) for name in output_node_names]
    graph_def = sess.graph.as_graph_def()
    check_nodes_exist(graph_def, outputs, "output")
    clear_placement(graph_def)
    frozen = tf1.graph_util.convert_variables_to_constants(sess, graph_def, outputs)
    clear_placement(frozen)
    prune_library(frozen)
    return frozen


def freeze_checkpoint(checkpoint: str, outputs: list[str], meta: str | None = None,
                      allow_unsafe: bool = False) -> GraphDef:
    """Freeze a TF1 checkpoint (a prefix, found already: :func:`finetune.weights.readers.resolve_checkpoint`):
    its meta graph (default ``<checkpoint>.meta``) through the op gate, then :func:`freeze_meta_graph`."""
    meta = meta or f"{checkpoint}.meta"
    if not os.path.isfile(meta):
        raise FinetuneError(f"Meta graph {meta} not found. Pass the graph of checkpoint {checkpoint} with --meta.")
    graph_def = load_meta_graph_def(meta, "Meta graph", allow_unsafe)
    return freeze_meta_graph(graph_def, checkpoint, outputs, meta, allow_unsafe)


def freeze_meta_graph(graph_def: GraphDef, checkpoint: str, outputs: list[str], source: str,
                      allow_unsafe: bool = False) -> GraphDef:
    """Import what ``outputs`` need of a .meta's graph (from :func:`load_meta_graph_def`), restore
    ``checkpoint`` into its variables through a Saver built here, and freeze.

    The file's saver (``saver_def.restore_op_name``) is never imported or run: only the variables'
    values come from the checkpoint, read by our own RestoreV2 ops. ``source`` names the .meta in errors.
    """
    check_nodes_exist(graph_def, outputs, "output")
    needed = tf1.graph_util.extract_sub_graph(graph_def, [node_name(name) for name in outputs])
    if not allow_unsafe:  # the gate let the file's saver ops through as never run: the outputs may not need one
        check_ops(needed, f"{source} (what the outputs {', '.join(outputs)} depend on)")
    clear_placement(needed)
    try:
        graph = import_graph(needed)
    except (ValueError, KeyError, tf.errors.OpError) as exc:
        raise FinetuneError(f"Cannot import the meta graph {source}: {first_line(exc)}") from None
    with graph.as_default():
        saver = _variable_saver(graph, needed)
    with tf1.Session(graph=graph) as sess:
        if saver is not None:  # None: the outputs need no variable
            try:
                saver.restore(sess, checkpoint)
            except (ValueError, tf.errors.OpError) as exc:
                raise FinetuneError(
                    f"Cannot restore checkpoint {checkpoint} into the graph of {source}: {first_line(exc)}"
                ) from None
        return freeze_session(sess, outputs)


def _variable_saver(graph: tf.Graph, graph_def: GraphDef) -> tf1.train.Saver | None:
    """A Saver over the variable nodes of the imported ``graph_def``, each under its node name (the
    checkpoint key a plain ``tf.train.Saver()`` writes); None when there are none."""
    var_list, names = {}, {node.name for node in graph_def.node}
    for node in graph_def.node:
        if node.op in ("VariableV2", "Variable"):
            var_list[node.name] = graph.get_tensor_by_name(f"{node.name}:0")
        elif node.op == "VarHandleOp":
            # A resource variable is saved through a read of its handle; freezing looks for this very name.
            read = f"{node.name}/Read/ReadVariableOp"
            if read not in names:
                tf1.raw_ops.ReadVariableOp(resource=graph.get_tensor_by_name(f"{node.name}:0"),
                                           dtype=node.attr["dtype"].type, name=read)
            var_list[node.name] = graph.get_tensor_by_name(f"{read}:0")
    return tf1.train.Saver(var_list=var_list, write_version=tf1.train.SaverDef.V2) if var_list else None
