"""Frozen graphs: freeze a checkpoint, optimise for inference, run, and convert (SavedModel, TFLite).

Every function takes or returns a ``GraphDef`` and builds in a fresh ``tf.Graph``, so the caller's
default graph is never touched. The work is done by TensorFlow's own graph tools
(``convert_variables_to_constants``, ``extract_sub_graph``, ``optimize_for_inference_lib``, the
TFLite converter, the SavedModel builder); this module adds checks and errors that name the
node or file at fault.

Names: a *node* name is ``probabilities``; a *tensor* name is ``probabilities:0``. Functions that
take node names also accept ``name:0``; functions that take tensor names also accept a bare node
name (meaning output 0).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
from google.protobuf import message, text_format
from tensorflow.python.tools import optimize_for_inference_lib as tf_optimize
from tensorflow.python.tools import strip_unused_lib

from finetune.compat import tf, tf1
from finetune.errors import FinetuneError, closest
from finetune.images import decode_image_batch, load_images, read_image_bytes  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

GraphDef = tf1.GraphDef
T = TypeVar("T")

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
_BOOKKEEPING_OPS = frozenset({
    "NoOp", "Const", "Placeholder", "PlaceholderWithDefault", "VariableV2", "VarHandleOp", "Assign",
    "AssignVariableOp", "AssignAdd", "AssignSub", "AssignAddVariableOp", "SaveV2", "RestoreV2", "Save",
    "SaveSlices", "MergeV2Checkpoints", "IsVariableInitialized", "VarIsInitializedOp", "Assert", "PrintV2",
})
_BOOKKEEPING_SCOPES = ("save", "init", "gradients", "train", "training", "summaries", "report_uninitialized_variables")
_CHECKPOINT_SUFFIXES = (".index", ".meta", ".data-00000-of-00001")


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


# ---------------------------------------------------------------------------------------------- files


def load_graph_def(path: str | Path) -> GraphDef:
    """Read a binary GraphDef (``.pb``), or a text one (``.pbtxt``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FinetuneError(f"Cannot read the graph file {path}: {exc.strerror or exc}.") from None
    graph_def = GraphDef()
    try:
        if path.suffix == ".pbtxt":
            text_format.Parse(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise FinetuneError(f"{path} is not a GraphDef (.pb binary or .pbtxt text): {exc}") from None
    return graph_def


def save_graph_def(graph_def: GraphDef, path: str | Path) -> int:
    """Write ``graph_def`` as a binary ``.pb`` (parent folders created); return its size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = graph_def.SerializeToString()
    path.write_bytes(data)
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
    return frozen


def freeze_checkpoint(checkpoint: str, outputs: list[str], meta: str | None = None) -> GraphDef:
    """Freeze any TF1 checkpoint: import its meta graph (default ``<checkpoint>.meta``), restore, freeze.

    ``checkpoint`` is a prefix (``model.ckpt-1000``; a trailing ``.index``/``.meta`` is ignored) or a
    folder, meaning its latest checkpoint.
    """
    checkpoint = _resolve_checkpoint(checkpoint)
    meta = meta or f"{checkpoint}.meta"
    if not os.path.isfile(meta):
        raise FinetuneError(f"Meta graph {meta} not found. Pass the graph of checkpoint {checkpoint} with --meta.")
    graph = tf.Graph()
    with graph.as_default():
        try:
            saver = tf1.train.import_meta_graph(meta, clear_devices=True)
        except (OSError, ValueError, KeyError, message.DecodeError, tf.errors.OpError) as exc:
            raise FinetuneError(f"Cannot import the meta graph {meta}: {_first_line(exc)}") from None
    with tf1.Session(graph=graph) as sess:
        if saver is not None:  # None: the graph has no variables
            try:
                saver.restore(sess, checkpoint)
            except (ValueError, tf.errors.OpError) as exc:
                raise FinetuneError(
                    f"Cannot restore checkpoint {checkpoint} into the graph of {meta}: {_first_line(exc)}"
                ) from None
        return freeze_session(sess, outputs)


def _resolve_checkpoint(checkpoint: str) -> str:
    if os.path.isdir(checkpoint):
        latest = tf1.train.latest_checkpoint(checkpoint)
        if latest is None:
            raise FinetuneError(f"Folder {checkpoint} holds no checkpoint (no 'checkpoint' index file).")
        return latest
    for suffix in _CHECKPOINT_SUFFIXES:
        if checkpoint.endswith(suffix):
            checkpoint = checkpoint[: -len(suffix)]
    if not (os.path.isfile(f"{checkpoint}.index") or os.path.isfile(checkpoint)):
        raise FinetuneError(
            f"Checkpoint {checkpoint} not found (no {checkpoint}.index). Give the prefix, e.g. model.ckpt-1000."
        )
    return checkpoint


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _clear_placement(graph_def: GraphDef) -> None:
    for node in graph_def.node:
        node.device = ""
        if "_class" in node.attr:  # colocation may name nodes that freezing or folding removes
            del node.attr["_class"]


# ---------------------------------------------------------------------------------------------- optimising


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
    _clear_placement(optimized)
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
    in training (:func:`finetune.images.decode_image_batch`). Returns (placeholder, what it returned).
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
        save_graph_def(graph_def, frozen)
        converter = tf1.lite.TFLiteConverter.from_frozen_graph(
            str(frozen), [input_node], [_array_name(name) for name in output_names],
            input_shapes={input_node: [None, image_size, image_size, channels]},
        )
        try:
            model = converter.convert()
        except Exception as exc:  # the converter raises its own ConverterError, or ValueError
            raise FinetuneError(f"TFLite conversion failed: {_first_line(exc)}") from None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(model)
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

