"""Frozen graphs: freeze a checkpoint, optimise for inference, run, and convert (SavedModel, TFLite).

Every function takes or returns a ``GraphDef`` and builds in a fresh ``tf.Graph``, so the caller's
default graph is never touched. The work is done by TensorFlow's own graph tools
(``convert_variables_to_constants``, ``extract_sub_graph``, ``optimize_for_inference_lib``, the
TFLite converter, the SavedModel builder); this module adds checks and errors that name the
node or file at fault.

Names: a *node* name is ``probabilities``; a *tensor* name is ``probabilities:0``. Functions that
take node names also accept ``name:0``; functions that take tensor names also accept a bare node
name (meaning output 0).

The op gate: a GraphDef is a program, and TensorFlow runs whatever op it finds in one (``WriteFile``,
``ReadFile``, ``PyFunc``...). Every graph file from outside goes through :func:`load_graph_def` or
:func:`load_meta_graph_def`, which call :func:`check_ops` before anything from the file is imported:
every op, including those in the function library, must be in :data:`finetune.pure_ops.PURE_OPS`.
A ``.meta``'s own saver ops are let through there because they are never imported or run:
:func:`freeze_meta_graph` imports only what the outputs need and restores through a Saver it builds.
:func:`save_graph_def` refuses to write a graph the gate would refuse, so our exports never carry one.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Sequence, TypeVar

import numpy as np
from google.protobuf import message, text_format

from finetune.weights.sources import resolve_checkpoint
from finetune.compat import tf, tf1
from finetune.errors import FinetuneError, closest, first_line
from finetune.files import write_bytes_atomically
from finetune.data.images import decode_image_batch
from finetune.pure_ops import PURE_OPS

log = logging.getLogger(__name__)

GraphDef = tf1.GraphDef
T = TypeVar("T")

_BOOKKEEPING_OPS = frozenset({
    "NoOp", "Const", "Placeholder", "PlaceholderWithDefault", "VariableV2", "VarHandleOp", "Assign",
    "AssignVariableOp", "AssignAdd", "AssignSub", "AssignAddVariableOp", "SaveV2", "RestoreV2", "Save",
    "SaveSlices", "MergeV2Checkpoints", "IsVariableInitialized", "VarIsInitializedOp", "Assert", "PrintV2",
})
_BOOKKEEPING_SCOPES = ("save", "init", "gradients", "train", "training", "summaries", "report_uninitialized_variables")

# Protobuf refuses to parse a message of 2 GiB or more; a larger file is refused before it is read.
MAX_GRAPH_BYTES = 2**31 - 1
# The file I/O ops of a Saver. In a .meta's graph they pass the gate as never run (see the module docstring).
SAVER_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "Save", "SaveSlices", "Restore", "RestoreSlice"})
_PURE = frozenset(PURE_OPS)
# What a refused op is, for the message: the first pattern its type matches.
_REFUSED_KINDS = (
    ("a Python callback", re.compile(r"PyFunc")),
    ("a queue, reader or dataset", re.compile(r"Queue|Reader|Dataset|Iterator|Barrier|Stage|Accumulator")),
    ("file I/O", re.compile(r"File|Save|Restore|Checkpoint|Matching|ImmutableConst|Remap|Vocab|Proto")),
    ("network or cross-process", re.compile(r"Rpc|Send|Recv|Collective|Nccl|Gcs|BigQuery|Bigtable|TPU|Tpu")),
    ("logging or summary I/O", re.compile(r"Summary|Print|Debug|Event|Profiler")),
)


# ---------------------------------------------------------------------------------------------- names


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


# ---------------------------------------------------------------------------------------------- op gate


def graph_ops(graph_def: GraphDef) -> Iterator[tuple[str, str]]:
    """(op type, node name) of every node, the graph's own and then each library function's (as ``FUNCTION/node``).

    Functions nested in functions are listed in the same library, so one pass reaches them all.
    """
    for node in graph_def.node:
        yield node.op, node.name
    for function in graph_def.library.function:
        for node in function.node_def:
            yield node.op, f"{function.signature.name}/{node.name}"


def refused_ops(graph_def: GraphDef, never_run: Collection[str] = ()) -> dict[str, list[str]]:
    """Op type -> node names, for every op outside :data:`PURE_OPS` (sorted by type, nodes in graph order).

    A call of a function of the graph's own library is fine: the function's nodes are checked themselves.
    ``never_run`` names nodes of the graph (not of functions) that are neither imported nor run.
    """
    functions = {function.signature.name for function in graph_def.library.function}
    refused: dict[str, list[str]] = {}
    for op, name in graph_ops(graph_def):
        if op not in _PURE and op not in functions and name not in never_run:
            refused.setdefault(op, []).append(name)
    return dict(sorted(refused.items()))


def refused_kind(op: str) -> str:
    """What a refused op type is, in words: a Python callback, file I/O, ..., or an op this TensorFlow lacks."""
    from tensorflow.python.framework import op_def_registry

    if op_def_registry.get(op) is None:
        return "a custom op this TensorFlow does not know"
    return next((kind for kind, pattern in _REFUSED_KINDS if pattern.search(op)), "not a pure computation op")


def describe_refused(refused: dict[str, list[str]]) -> str:
    """``WriteFile (file I/O; 1 node: steal/write); PyFunc (...)``: each op type, what it is, a few node names."""
    parts = []
    for op, names in refused.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"{op} ({refused_kind(op)}; {len(names)} node{'s' if len(names) > 1 else ''}: {shown})")
    return "; ".join(parts)


def check_ops(graph_def: GraphDef, source: str, allow_unsafe: bool = False, never_run: Collection[str] = ()) -> None:
    """FinetuneError naming each op of ``graph_def`` (the file ``source``) outside :data:`PURE_OPS`, with
    its node names; with ``allow_unsafe``, one warning instead. Call it before importing the graph.

    ``never_run``: node names the caller neither imports nor runs (a .meta's own saver ops).
    """
    refused = refused_ops(graph_def, never_run)
    if not refused:
        return
    listing = describe_refused(refused)
    if allow_unsafe:
        log.warning("allow_unsafe_ops is set: %s holds %d op type(s) outside the list of pure computation ops, let "
                    "through and run with your permissions: %s.", source, len(refused), listing)
        return
    raise FinetuneError(
        f"{source} holds {len(refused)} op type(s) outside the list of pure computation ops: {listing}. A graph "
        "file is a program, and these could read or write files, reach the network, start processes, call back "
        "into Python, run queues or readers or other stateful I/O, or are custom ops; nothing from the file was "
        "imported or run. If you trust the file, pass allow_unsafe_ops=true (python -m finetune) or "
        "--allow-unsafe-ops (python -m finetune.tools); see every op with "
        f"`python -m finetune.tools inspect {source} --ops`."
    )


def saver_nodes(graph_def: GraphDef) -> set[str]:
    """The nodes of a .meta's graph (not of its functions) whose op is a :data:`SAVER_OPS` op, for
    ``check_ops(never_run=...)``: nothing imports a .meta's graph to run it but :func:`freeze_meta_graph`,
    which imports only what the outputs need, checked again, and restores through a Saver of its own."""
    return {node.name for node in graph_def.node if node.op in SAVER_OPS}


# ---------------------------------------------------------------------------------------------- files


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


def save_graph_def(graph_def: GraphDef, path: str | Path, allow_unsafe: bool = False) -> int:
    """Write ``graph_def`` as a binary ``.pb`` (parent folders created, atomically); return its size in bytes.

    A graph holding an op outside :data:`PURE_OPS` is refused (FinetuneError) unless ``allow_unsafe``:
    what we write must pass the gate of whoever loads it."""
    path = Path(path)
    refused = refused_ops(graph_def)
    if refused and not allow_unsafe:
        raise FinetuneError(f"Not writing {path}: the graph holds op(s) outside the list of pure computation ops, "
                            f"which no graph we write may carry: {describe_refused(refused)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = graph_def.SerializeToString()
    write_bytes_atomically(path, data)
    return len(data)


# ---------------------------------------------------------------------------------------------- freezing


def freeze_session(sess: tf1.Session, output_node_names: list[str]) -> GraphDef:
    """Variables -> constants, keeping only what the outputs need; devices and colocation cleared."""
    outputs = [node_name(name) for name in output_node_names]
    graph_def = sess.graph.as_graph_def()
    check_nodes_exist(graph_def, outputs, "output")
    _clear_placement(graph_def)
    frozen = tf1.graph_util.convert_variables_to_constants(sess, graph_def, outputs)
    _clear_placement(frozen)
    prune_library(frozen)
    return frozen


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


def freeze_checkpoint(checkpoint: str, outputs: list[str], meta: str | None = None,
                      allow_unsafe: bool = False) -> GraphDef:
    """Freeze any TF1 checkpoint: its meta graph (default ``<checkpoint>.meta``) through the op gate, then
    :func:`freeze_meta_graph`.

    ``checkpoint`` is a prefix (``model.ckpt-1000``; a trailing ``.index``/``.meta`` is ignored) or a
    folder, meaning its latest checkpoint.
    """
    checkpoint = resolve_checkpoint(checkpoint, key="--checkpoint")
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
    _clear_placement(needed)
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


def _clear_placement(graph_def: GraphDef) -> None:
    for node in graph_def.node:
        node.device = ""
        if "_class" in node.attr:  # colocation may name nodes that freezing or folding removes
            del node.attr["_class"]


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


def add_image_bytes_input(
    build_model: Callable[[tf.Tensor], T], image_size: int, name: str = "image_bytes"
) -> tuple[tf.Tensor, T]:
    """Make the graph input ``<name>:0`` (string [None], JPEG/PNG bytes) and build the model on it.

    ``build_model`` takes float32 [N, image_size, image_size, 3] in [0, 255], decoded and resized as
    in training (:func:`finetune.data.images.decode_image_batch`). Returns (placeholder, what it returned).
    """
    image_bytes = tf1.placeholder(tf.string, [None], name=name)
    return image_bytes, build_model(decode_image_batch(image_bytes, image_size))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute element-wise difference (shapes must match)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# ---------------------------------------------------------------------------------------------- SavedModel


def write_saved_model(
    graph_def: GraphDef, input_name: str, output_names: dict[str, str], export_dir: str | Path,
    overwrite: bool = False,
) -> None:
    """A SavedModel (tag ``serve``) of the frozen graph, signature ``serving_default``: ``images`` -> outputs.

    ``output_names`` maps signature keys to tensor names, e.g. ``{"probabilities": "probabilities:0"}``.
    """
    export_dir = Path(export_dir)
    if export_dir.exists() and any(export_dir.iterdir()):
        if not overwrite:
            raise FinetuneError(f"SavedModel folder {export_dir} already exists and is not empty.")
        shutil.rmtree(export_dir)
    elif export_dir.exists():
        export_dir.rmdir()  # the builder insists on creating the folder itself
    graph = import_graph(graph_def)
    signature = tf1.saved_model.predict_signature_def(
        inputs={"images": get_tensor(graph, input_name)},
        outputs={key: get_tensor(graph, name) for key, name in output_names.items()},
    )
    with tf1.Session(graph=graph) as sess:
        builder = tf1.saved_model.Builder(str(export_dir))
        builder.add_meta_graph_and_variables(
            sess, [tf1.saved_model.SERVING],
            signature_def_map={tf1.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY: signature},
            strip_default_attrs=True,
        )
        builder.save()


def run_saved_model(export_dir: str | Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Run the ``serving_default`` signature of a SavedModel on ``batch``: output key -> array."""
    if not Path(export_dir, "saved_model.pb").is_file():
        raise FinetuneError(f"{export_dir} is not a SavedModel folder (no saved_model.pb).")
    graph = tf.Graph()
    with tf1.Session(graph=graph) as sess:
        meta = tf1.saved_model.loader.load(sess, [tf1.saved_model.SERVING], str(export_dir))
        signature = meta.signature_def[tf1.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY]
        (input_info,) = signature.inputs.values()
        keys = sorted(signature.outputs)
        values = sess.run([signature.outputs[key].name for key in keys], {input_info.name: batch})
    return dict(zip(keys, values))


# ---------------------------------------------------------------------------------------------- TFLite


def write_tflite(
    graph_def: GraphDef, input_name: str, output_names: Sequence[str], path: str | Path, image_size: int
) -> int:
    """Convert the frozen graph to a float32 TFLite model (no quantisation); return its size in bytes.

    The batch dimension stays dynamic (input shape signature ``[-1, image_size, image_size, C]``);
    :func:`run_tflite` resizes the input to each batch. Outputs come out in the order of ``output_names``.
    """
    check_nodes_exist(graph_def, [input_name], "input")
    check_nodes_exist(graph_def, output_names, "output")
    input_node = node_name(input_name)
    channels = placeholder_shape(graph_def, input_node)[-1] or 3
    # A fresh default graph: the converter's grappler pass reads the default graph's collections, and a
    # caller's training graph (e.g. inside its session) would lend it initializers this graph lacks.
    with tempfile.TemporaryDirectory() as tmp, tf.Graph().as_default():
        frozen = Path(tmp, "frozen.pb")
        frozen.write_bytes(graph_def.SerializeToString())  # the converter's input, not a file we hand out
        converter = tf1.lite.TFLiteConverter.from_frozen_graph(
            str(frozen), [input_node], [_array_name(name) for name in output_names],
            input_shapes={input_node: [None, image_size, image_size, channels]},
        )
        try:
            model = converter.convert()
        except Exception as exc:  # the converter raises its own ConverterError, or ValueError
            raise FinetuneError(f"TFLite conversion failed: {first_line(exc)}") from None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(Path(path), model)
    return len(model)


def _array_name(name: str) -> str:
    """The converter's name for a tensor: the node name for output 0, ``node:k`` otherwise."""
    return node_name(name) if tensor_name(name).endswith(":0") else name


def placeholder_shape(graph_def: GraphDef, name: str) -> list[int | None]:
    """Static shape of the input node ``name``, e.g. ``[None, 224, 224, 3]``; ``[None]`` if the rank is unknown."""
    for node in graph_def.node:
        if node.name == node_name(name) and "shape" in node.attr and not node.attr["shape"].shape.unknown_rank:
            return [d.size if d.size >= 0 else None for d in node.attr["shape"].shape.dim]
    return [None]


def tflite_interpreter(path: str | Path, num_threads: int | None = None) -> Any:
    """A TFLite interpreter: LiteRT's (``ai_edge_litert``) if installed, else ``tf.lite.Interpreter``.

    TF 2.21 still ships ``tf.lite.Interpreter`` but warns on every construction that it is deprecated;
    that warning is silenced here.
    """
    if not Path(path).is_file():
        raise FinetuneError(f"TFLite model {path} not found.")
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return Interpreter(model_path=str(path), num_threads=num_threads)


def run_tflite(path: str | Path, batch: np.ndarray) -> list[np.ndarray]:
    """Run a TFLite model on ``batch`` (its input resized to the batch size); outputs in model order."""
    interpreter = tflite_interpreter(path)
    (detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(detail["index"], list(batch.shape), strict=False)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], np.asarray(batch, dtype=detail["dtype"]))
    interpreter.invoke()
    return [interpreter.get_tensor(out["index"]) for out in interpreter.get_output_details()]

