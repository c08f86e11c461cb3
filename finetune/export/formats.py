"""Deployment formats converted from a frozen graph: a SavedModel and a TFLite model (float or quantized),
and how to run each. The ONNX model is :mod:`finetune.export.onnx`'s.

The conversions are TensorFlow's own (the SavedModel builder, the TFLite converter); the exporter
(:mod:`finetune.export.exporter`) checks each file against the training session.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from finetune.compat import tf, tf1
from finetune.errors import FinetuneError, first_line
from finetune.files import write_bytes_atomically
from finetune.graphs import (GraphDef, check_nodes_exist, get_tensor, import_graph, node_name, placeholder_shape,
                             tensor_name)

# export.tflite_io: the int8 model's input and output type
IO_TYPES = {"float": tf.float32, "int8": tf.int8, "uint8": tf.uint8}


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
    graph_def: GraphDef, input_name: str, output_names: Sequence[str], path: str | Path, image_size: int,
    quantization: str = "none", calibration: Optional[Callable[[], Iterable[np.ndarray]]] = None,
    io_type: str = "float", per_channel: bool = True,
) -> int:
    """Convert the frozen graph to a TFLite model; return its size in bytes.

    ``quantization`` (:data:`finetune.vocab.TFLITE_QUANTIZATIONS`): ``none`` keeps float32; ``dynamic``
    stores the weights as int8 (activations stay float); ``float16`` stores them as float16; ``int8`` is
    full-integer, its activation ranges measured on the images ``calibration()`` yields (float32
    [H, W, C] each, as the graph's input takes them), with ``io_type`` (float | int8 | uint8) input and
    outputs and per-channel weight scales unless ``per_channel`` is false. The batch dimension stays
    dynamic (input shape signature ``[-1, image_size, image_size, C]``); :func:`run_tflite` resizes the input
    to each batch. Outputs come out in the order of ``output_names``.
    """
    check_nodes_exist(graph_def, [input_name], "input")
    check_nodes_exist(graph_def, output_names, "output")
    if quantization == "int8" and calibration is None:
        raise ValueError("int8 quantization needs calibration images")
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
        _configure_quantization(converter, quantization, calibration, io_type, per_channel)
        try:
            model = converter.convert()
        except Exception as exc:  # the converter raises its own ConverterError, or ValueError
            mode = "" if quantization == "none" else f" ({quantization} quantization)"
            raise FinetuneError(f"TFLite conversion{mode} failed: {first_line(exc)}") from None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(Path(path), model)
    return len(model)


def _configure_quantization(converter: Any, quantization: str,
                            calibration: Optional[Callable[[], Iterable[np.ndarray]]],
                            io_type: str, per_channel: bool) -> None:
    """Set the TFLite converter's post-training quantization (see :func:`write_tflite`)."""
    if quantization == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # alone: dynamic-range (int8 weights)
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        # The converter calls it once per calibration sample: a list of the model's inputs, batch of one.
        converter.representative_dataset = lambda: ([image[np.newaxis]] for image in calibration())
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # no float fallback
        converter.inference_input_type = converter.inference_output_type = IO_TYPES[io_type]
        # Per-channel weight scales are the converter's default; one scale per tensor makes a smaller file
        # (12 bytes less per output channel) at the risk of accuracy. The converter has no public switch.
        converter._experimental_disable_per_channel = not per_channel


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


class TfliteRunner:
    """A TFLite model loaded once and run batch after batch (float pixels in; its input resized when the batch
    shape changes); outputs in model order, as float32. An integer (int8/uint8) input is quantized with the
    input's scale and zero point, and integer outputs are dequantized with theirs, so every model gives float
    probabilities."""

    def __init__(self, path: str | Path, num_threads: int | None = None) -> None:
        self.interpreter = tflite_interpreter(path, num_threads)
        (self.input,) = self.interpreter.get_input_details()
        self._shape: Optional[tuple[int, ...]] = None

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        interpreter, batch = self.interpreter, np.asarray(batch)
        if batch.shape != self._shape:  # allocating is a one-off per batch size
            interpreter.resize_tensor_input(self.input["index"], list(batch.shape), strict=False)
            interpreter.allocate_tensors()
            self._shape = batch.shape
        interpreter.set_tensor(self.input["index"], quantize_input(batch, self.input))
        interpreter.invoke()
        return [dequantize_output(interpreter.get_tensor(out["index"]), out)
                for out in interpreter.get_output_details()]


def run_tflite(path: str | Path, batch: np.ndarray) -> list[np.ndarray]:
    """:class:`TfliteRunner` once: a TFLite model on one ``batch``."""
    return TfliteRunner(path)(batch)


def tflite_io(path: str | Path) -> dict[str, Any]:
    """What a TFLite model takes and gives: ``{"input": {name, dtype, scale, zero_point}, "outputs": [...]}``
    (scale and zero point only for an integer tensor: real = scale * (q - zero_point))."""
    interpreter = tflite_interpreter(path)

    def describe(detail: dict) -> dict[str, Any]:
        found = {"name": detail["name"], "dtype": np.dtype(detail["dtype"]).name}
        if np.issubdtype(detail["dtype"], np.integer):
            scale, zero_point = detail["quantization"]
            found.update(scale=float(scale), zero_point=int(zero_point))
        return found

    (detail,) = interpreter.get_input_details()
    return {"input": describe(detail), "outputs": [describe(out) for out in interpreter.get_output_details()]}


def quantize_input(batch: np.ndarray, detail: dict) -> np.ndarray:
    """``batch`` in the dtype of the input ``detail`` describes (an interpreter's input details): a float input
    takes it as it is, a quantized integer input as ``round(x / scale) + zero_point``, clipped to the type's
    range."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(dtype, np.integer) or not scale:  # scale 0: an integer input that is not quantized
        return batch.astype(dtype)
    limits = np.iinfo(dtype)
    return np.clip(np.round(batch.astype(np.float64) / scale) + zero_point, limits.min, limits.max).astype(dtype)


def dequantize_output(values: np.ndarray, detail: dict) -> np.ndarray:
    """An output (``detail``: the interpreter's output details) as float32: an integer one dequantized,
    ``scale * (q - zero_point)``; a float one as it is."""
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(values.dtype, np.integer) or not scale:
        return values
    return (scale * (values.astype(np.float32) - zero_point)).astype(np.float32)
