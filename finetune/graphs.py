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

from finetune.weights.sources import resolve_checkpoint
from finetune.compat import tf, tf1
from finetune.errors import FinetuneError, closest, first_line
from finetune.data.images import decode_image_batch

log = logging.getLogger(__name__)

GraphDef = tf1.GraphDef
T = TypeVar("T")

_BOOKKEEPING_OPS = frozenset({
    "NoOp", "Const", "Placeholder", "PlaceholderWithDefault", "VariableV2", "VarHandleOp", "Assign",
    "AssignVariableOp", "AssignAdd", "AssignSub", "AssignAddVariableOp", "SaveV2", "RestoreV2", "Save",
    "SaveSlices", "MergeV2Checkpoints", "IsVariableInitialized", "VarIsInitializedOp", "Assert", "PrintV2",
})
_BOOKKEEPING_SCOPES = ("save", "init", "gradients", "train", "training", "summaries", "report_uninitialized_variables")


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


def load_meta_graph_def(path: str | Path, subject: str = "PATH") -> GraphDef:
    """The GraphDef inside a ``.meta`` file, parsed without importing it; errors start with ``subject``."""
    meta = tf1.MetaGraphDef()
    try:
        meta.ParseFromString(Path(path).read_bytes())
    except OSError as error:
        raise FinetuneError(f"{subject} {str(path)!r} cannot be read: {error.strerror or error}.") from None
    except message.DecodeError as error:
        raise FinetuneError(f"{subject} {str(path)!r} is not a meta graph (MetaGraphDef): {error}.") from None
    return meta.graph_def


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
    checkpoint = resolve_checkpoint(checkpoint, key="--checkpoint")
    meta = meta or f"{checkpoint}.meta"
    if not os.path.isfile(meta):
        raise FinetuneError(f"Meta graph {meta} not found. Pass the graph of checkpoint {checkpoint} with --meta.")
    graph = tf.Graph()
    with graph.as_default():
        try:
            saver = tf1.train.import_meta_graph(meta, clear_devices=True)
        except (OSError, ValueError, KeyError, message.DecodeError, tf.errors.OpError) as exc:
            raise FinetuneError(f"Cannot import the meta graph {meta}: {first_line(exc)}") from None
    with tf1.Session(graph=graph) as sess:
        if saver is not None:  # None: the graph has no variables
            try:
                saver.restore(sess, checkpoint)
            except (ValueError, tf.errors.OpError) as exc:
                raise FinetuneError(
                    f"Cannot restore checkpoint {checkpoint} into the graph of {meta}: {first_line(exc)}"
                ) from None
        return freeze_session(sess, outputs)


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
        save_graph_def(graph_def, frozen)
        converter = tf1.lite.TFLiteConverter.from_frozen_graph(
            str(frozen), [input_node], [_array_name(name) for name in output_names],
            input_shapes={input_node: [None, image_size, image_size, channels]},
        )
        try:
            model = converter.convert()
        except Exception as exc:  # the converter raises its own ConverterError, or ValueError
            raise FinetuneError(f"TFLite conversion failed: {first_line(exc)}") from None
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

