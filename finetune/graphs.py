"""GraphDef plumbing: names, reading and writing graph files, running a graph once.

Every function takes or returns a ``GraphDef`` and builds in a fresh ``tf.Graph``, so the caller's
default graph is never touched. Graph files from outside pass the op gate (:mod:`finetune.op_gate`)
before anything of them is imported; freezing lives in :mod:`finetune.freezing`, the deployment
formats in :mod:`finetune.export.formats`.

Names: a *node* name is ``probabilities``; a *tensor* name is ``probabilities:0``. Functions that
take node names also accept ``name:0``; functions that take tensor names also accept a bare node
name (meaning output 0).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from google.protobuf import message, text_format

from finetune.compat import tf, tf1
from finetune.errors import FinetuneError, closest, first_line, write_failed
from finetune.files import write_bytes_atomically
from finetune.op_gate import check_ops, describe_refused, refused_ops, saver_nodes

log = logging.getLogger(__name__)

GraphDef = tf1.GraphDef

_BOOKKEEPING_OPS = frozenset({
    "NoOp", "Const", "Placeholder", "PlaceholderWithDefault", "VariableV2", "VarHandleOp", "Assign",
    "AssignVariableOp", "AssignAdd", "AssignSub", "AssignAddVariableOp", "SaveV2", "RestoreV2", "Save",
    "SaveSlices", "MergeV2Checkpoints", "IsVariableInitialized", "VarIsInitializedOp", "Assert", "PrintV2",
})
_BOOKKEEPING_SCOPES = ("save", "init", "gradients", "train", "training", "summaries", "report_uninitialized_variables")

# Protobuf refuses to parse a message of 2 GiB or more; a larger file is refused before it is read.
MAX_GRAPH_BYTES = 2**31 - 1


def node_name(name: str) -> str:
    """``^a``, ``a:0`` or ``a`` -> ``a``."""
    name = name[1:] if name.startswith("^") else name
    return name.rsplit(":", 1)[0] if ":" in name else name


def tensor_name(name: str) -> str:
    """``a`` -> ``a:0``; ``a:1`` stays."""
    return name if ":" in name else f"{name}:0"


def likely_output_nodes(graph_def: GraphDef) -> list[str]:
    """Nodes nobody consumes, less saver, initializer, summary and training bookkeeping; shallowest first."""
    consumed = {node_name(i) for node in graph_def.node for i in node.input}
    names = [node.name for node in graph_def.node if node.name not in consumed and not _is_bookkeeping(node)]
    return sorted(names, key=lambda name: (name.count("/"), name))


def _is_bookkeeping(node: Any) -> bool:
    top = node.name.split("/", 1)[0]
    return (
        node.op in _BOOKKEEPING_OPS
        or node.op.endswith(("Summary", "SummaryV2"))
        or node.op.startswith(("Apply", "ResourceApply", "ScatterUpdate"))
        or top in _BOOKKEEPING_SCOPES
        or top.startswith(("save_", "init_"))
    )


def check_nodes_exist(graph_def: GraphDef, names: Iterable[str], role: str) -> None:
    """FinetuneError for a missing input/output node, with the closest names and the likely ones."""
    present = {node.name for node in graph_def.node}
    for name in map(node_name, names):
        if name in present:
            continue
        if role == "output":
            likely, what = likely_output_nodes(graph_def), "nodes nobody consumes"
        else:
            likely = [n.name for n in graph_def.node if n.op in ("Placeholder", "PlaceholderWithDefault")]
            likely, what = likely or sorted(present), "placeholders"
        more = f" and {len(likely) - 10} more" if len(likely) > 10 else ""
        raise FinetuneError(
            f"{role.capitalize()} node {name!r} is not in the graph ({len(present)} nodes). Did you mean "
            f"{' or '.join(closest(name, likely, n=3))}? Likely {role} nodes ({what}): {', '.join(likely[:10])}{more}."
        )


def _read_graph_file(path: Path, what: str, subject: str) -> bytes:
    """The bytes of a graph file no larger than :data:`MAX_GRAPH_BYTES`; errors start with ``subject``."""
    try:
        size = path.stat().st_size
        if size > MAX_GRAPH_BYTES:
            raise FinetuneError(
                f"{subject} is {size:,} bytes, more than the {MAX_GRAPH_BYTES:,} bytes a {what} can be (protobuf's "
                "limit, 2 GiB), so it is not read. Check that it is the right file."
            )
        return path.read_bytes()
    except OSError as exc:
        raise FinetuneError(f"{subject} cannot be read: {exc.strerror or exc}.") from None


def _check_parsed(graph_def: GraphDef, subject: str, what: str) -> None:
    """An empty parse or a node without op type: the file parsed by chance (protobuf is lenient), or is empty."""
    if not graph_def.node and not graph_def.library.function:
        raise FinetuneError(f"{subject} holds no nodes: it is empty or not a {what}.")
    if any(not node.op or not node.name for node in graph_def.node):
        raise FinetuneError(f"{subject} is not a {what}: it parses, but into nodes without name or op type.")


def read_graph_def(path: str | Path) -> GraphDef:
    """Parse a binary GraphDef (``.pb``) or a text one (``.pbtxt``), without the op gate (to list its ops)."""
    path = Path(path)
    subject = f"The graph file {path}"
    data = _read_graph_file(path, "GraphDef", subject)
    graph_def = GraphDef()
    try:
        if path.suffix == ".pbtxt":
            text_format.Parse(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise FinetuneError(f"{path} is not a GraphDef (.pb binary or .pbtxt text): {first_line(exc)}") from None
    _check_parsed(graph_def, f"{path}", "GraphDef (.pb binary or .pbtxt text)")
    return graph_def


def load_graph_def(path: str | Path, allow_unsafe: bool = False) -> GraphDef:
    """Read a binary GraphDef (``.pb``), or a text one (``.pbtxt``), and pass it through :func:`check_ops`."""
    graph_def = read_graph_def(path)
    check_ops(graph_def, str(path), allow_unsafe)
    return graph_def


def read_meta_graph(path: str | Path, subject: str = "PATH") -> tf1.MetaGraphDef:
    """Parse a ``.meta`` file (MetaGraphDef), without the op gate; errors start with ``subject``."""
    who = f"{subject} {str(path)!r}"
    data = _read_graph_file(Path(path), "meta graph", who)
    meta = tf1.MetaGraphDef()
    try:
        meta.ParseFromString(data)
    except message.DecodeError as error:
        raise FinetuneError(f"{who} is not a meta graph (MetaGraphDef): {first_line(error)}.") from None
    _check_parsed(meta.graph_def, who, "meta graph (MetaGraphDef)")
    return meta


def load_meta_graph_def(path: str | Path, subject: str = "PATH", allow_unsafe: bool = False) -> GraphDef:
    """The GraphDef inside a ``.meta`` file, passed through :func:`check_ops` but not imported.

    The file's own saver ops (:func:`saver_nodes`) pass as never run: nothing here runs them."""
    meta = read_meta_graph(path, subject)
    check_ops(meta.graph_def, str(path), allow_unsafe, never_run=saver_nodes(meta.graph_def))
    return meta.graph_def


SAVED_MODEL_FILE = "saved_model.pb"


def read_saved_model(folder: str | Path) -> tf1.MetaGraphDef:
    """The ``serve`` meta graph of the SavedModel ``folder`` (the only one if none is tagged so), parsed but
    neither checked nor imported: pass what a signature's outputs need through :func:`check_needed_ops`."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(folder, SAVED_MODEL_FILE)
    data = _read_graph_file(path, "SavedModel", f"The SavedModel file {path}")
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(data)
    except message.DecodeError as error:
        raise FinetuneError(f"{path} is not a SavedModel: {first_line(error)}.") from None
    serving = [meta for meta in saved.meta_graphs if tf1.saved_model.SERVING in meta.meta_info_def.tags]
    metas = serving or list(saved.meta_graphs)
    if len(metas) != 1:
        tags = [sorted(meta.meta_info_def.tags) for meta in saved.meta_graphs]
        raise FinetuneError(f"The SavedModel {folder} holds {len(saved.meta_graphs)} meta graphs ({tags}) and none "
                            f"is the one tagged {tf1.saved_model.SERVING!r}: export the model for serving.")
    _check_parsed(metas[0].graph_def, f"The SavedModel {folder}", "SavedModel")
    return metas[0]


def check_needed_ops(graph_def: GraphDef, outputs: Iterable[str], source: str, allow_unsafe: bool = False) -> None:
    """:func:`check_ops` over the nodes ``outputs`` depend on and every library function: the rest of the graph
    (a SavedModel's saver, say) is never imported or run by a caller that imports only what the outputs need."""
    outputs = list(outputs)
    check_nodes_exist(graph_def, outputs, "output")
    needed = tf1.graph_util.extract_sub_graph(graph_def, [node_name(name) for name in outputs])
    unused = {node.name for node in graph_def.node} - {node.name for node in needed.node}
    check_ops(graph_def, source, allow_unsafe, never_run=unused)


def save_graph_def(graph_def: GraphDef, path: str | Path, allow_unsafe: bool = False) -> int:
    """Write ``graph_def`` as a binary ``.pb`` (parent folders created, atomically); return its size in bytes.

    A graph holding an op outside :data:`PURE_OPS` is refused (FinetuneError) unless ``allow_unsafe``:
    what we write must pass the gate of whoever loads it."""
    path = Path(path)
    refused = refused_ops(graph_def)
    if refused and not allow_unsafe:
        raise FinetuneError(f"Not writing {path}: the graph holds op(s) outside the list of pure computation ops, "
                            f"which no graph we write may carry: {describe_refused(refused)}.")
    data = graph_def.SerializeToString()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(path, data)  # a failed write leaves neither the file nor its temporary
    except OSError as error:
        raise write_failed(error, str(path), "write it to another folder") from error
    return len(data)


def clear_placement(graph_def: GraphDef) -> None:
    """Devices and colocation removed from every node: a frozen file runs wherever it is loaded."""
    for node in graph_def.node:
        node.device = ""
        if "_class" in node.attr:  # colocation may name nodes that freezing or folding removes
            del node.attr["_class"]


def prune_library(graph_def: GraphDef) -> None:
    """Drop the library functions no kept node calls, directly or through other functions. Freezing keeps
    the whole library: a training graph's tf.data functions (which read files) would ride along."""
    by_name = {function.signature.name: function for function in graph_def.library.function}
    gradient_of = {gradient.function_name: gradient.gradient_func for gradient in graph_def.library.gradient}
    used: set[str] = set()
    pending = [*graph_def.node]
    while pending:
        node = pending.pop()
        for name in _called_functions(node):
            while name in by_name and name not in used:  # a kept function keeps its registered gradient
                used.add(name)
                pending.extend(by_name[name].node_def)
                name = gradient_of.get(name, "")
    kept = [function for function in graph_def.library.function if function.signature.name in used]
    gradients = [gradient for gradient in graph_def.library.gradient if gradient.function_name in used]
    del graph_def.library.function[:]
    graph_def.library.function.extend(kept)
    del graph_def.library.gradient[:]
    graph_def.library.gradient.extend(gradients)


def _called_functions(node: Any) -> list[str]:
    """Functions a node calls: its op (a function call by name), or a function-valued attribute (While, If,
    PartitionedCall, map_fn's loops...), a list of them included."""
    names = [node.op]
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        names.extend(func.name for func in value.list.func)
    return names


def upstream_ops(fetches: Iterable[tf.Tensor | tf.Operation]) -> Iterator[tf.Operation]:
    """Every op that running ``fetches`` runs, themselves included: a walk over data and control inputs."""
    stack = [t.op if isinstance(t, tf.Tensor) else t for t in fetches]
    seen: set[str] = set()
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        yield op
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)


def import_graph(graph_def: GraphDef) -> tf.Graph:
    """``graph_def`` imported into a fresh ``tf.Graph`` with its node names unchanged."""
    graph = tf.Graph()
    with graph.as_default():
        tf1.import_graph_def(graph_def, name="")
    return graph


def get_tensor(graph: tf.Graph, name: str) -> tf.Tensor:
    """The tensor ``name`` (``a`` means ``a:0``); an unknown name lists the closest node names."""
    try:
        return graph.get_tensor_by_name(tensor_name(name))
    except (KeyError, ValueError):
        names = [op.name for op in graph.get_operations()]
        raise FinetuneError(
            f"Tensor {tensor_name(name)!r} is not in the graph. "
            f"Closest nodes: {', '.join(closest(node_name(name), names))}."
        ) from None


def run_graph_def(graph_def: GraphDef, feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
    """Run ``graph_def`` once in a fresh graph and session: tensor names -> arrays."""
    graph = import_graph(graph_def)
    feed_dict = {get_tensor(graph, name): value for name, value in feeds.items()}
    fetch_list = [get_tensor(graph, name) for name in fetches]
    with tf1.Session(graph=graph) as sess:
        return sess.run(fetch_list, feed_dict)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute element-wise difference (shapes must match)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def placeholder_shape(graph_def: GraphDef, name: str) -> list[int | None]:
    """Static shape of the input node ``name``, e.g. ``[None, 224, 224, 3]``; ``[None]`` if the rank is unknown."""
    for node in graph_def.node:
        if node.name == node_name(name) and "shape" in node.attr and not node.attr["shape"].shape.unknown_rank:
            return [d.size if d.size >= 0 else None for d in node.attr["shape"].shape.dim]
    return [None]
