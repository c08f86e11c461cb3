"""Deployment formats converted from a frozen graph: a SavedModel and a TFLite model, and how to run each.

The conversions are TensorFlow's own (the SavedModel builder, the TFLite converter); the exporter
(:mod:`finetune.export.exporter`) checks each file against the training session.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from finetune.compat import tf, tf1
from finetune.errors import FinetuneError, first_line
from finetune.files import write_bytes_atomically
from finetune.graphs import GraphDef, check_nodes_exist, get_tensor, import_graph, node_name, placeholder_shape, tensor_name

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
