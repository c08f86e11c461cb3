"""ONNX: a frozen graph converted by tf2onnx, and run by onnxruntime.

Both come with the ``onnx`` extra (``pip install "finetune[onnx]"``) and are imported only here, when a graph
is converted or a ``.onnx`` file is run: an install without the extra never loads them. tf2onnx converts
what it can and leaves a TensorFlow op it has no conversion for in the model as it was, which no runtime
runs; :func:`write_onnx` refuses such a model, naming the op (:class:`OnnxConversionError`), so that the
exporter fails this format alone. The model's input and outputs keep the graph's tensor names
(``input:0`` -> ``logits:0``, ``probabilities:0``), the batch dimension stays dynamic.
"""
from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from finetune.compat import tf
from finetune.errors import FinetuneError, first_line
from finetune.files import write_bytes_atomically
from finetune.graphs import GraphDef, check_nodes_exist, tensor_name
from finetune.logs import quieted
from finetune.validate import ONNX_INSTALL_HINT

log = logging.getLogger(__name__)

# The ONNX opset the models are written for: fixed, so that another tf2onnx writes the same model; 15 is
# tf2onnx's own default and every onnxruntime since 1.10 runs it.
OPSET = 15
_STANDARD_DOMAINS = ("", "ai.onnx")  # the ONNX operators; tf2onnx leaves an op it cannot convert in this domain


class OnnxConversionError(FinetuneError):
    """The graph holds an op tf2onnx cannot convert: the ONNX format fails, the other formats stand."""


def _require(module: str) -> ModuleType:
    """Import a package of the onnx extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise FinetuneError(f"ONNX needs {module}, which is not installed. Install the onnx extra: "
                            f"{ONNX_INSTALL_HINT} (or pip install tf2onnx onnxruntime).") from None


def write_onnx(graph_def: GraphDef, input_name: str, output_names: Sequence[str], path: str | Path) -> dict[str, Any]:
    """Convert the frozen graph to an ONNX model at ``path`` (opset :data:`OPSET`), its outputs in the order of
    ``output_names``; return ``{"opset", "tf2onnx", "input", "outputs"}`` (versions and tensor names).

    :class:`OnnxConversionError` naming the op when tf2onnx cannot convert one, or onnxruntime cannot load the
    result; nothing is written then."""
    tf2onnx = _require("tf2onnx")
    inputs, outputs = [tensor_name(input_name)], [tensor_name(name) for name in output_names]
    check_nodes_exist(graph_def, inputs, "input")
    check_nodes_exist(graph_def, outputs, "output")
    # tf2onnx logs its progress at INFO and an op it cannot convert at ERROR (our message says it, once); it
    # imports the graph into the default graph.
    with quieted(logging.getLogger("tf2onnx"), logging.CRITICAL), tf.Graph().as_default():
        try:
            model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs,
                                                      opset=OPSET)
        except Exception as error:  # tf2onnx raises whatever its op handlers raise
            raise OnnxConversionError(f"tf2onnx {tf2onnx.__version__} cannot convert the graph to ONNX opset "
                                      f"{OPSET}: {first_line(error)}") from None
    left = unconverted_ops(model)
    if left:
        (op, nodes), more = next(iter(left.items())), sum(len(names) for names in left.values())
        others = f" ({more - 1} more node(s) of {len(left)} op type(s): {', '.join(left)})" if more > 1 else ""
        raise OnnxConversionError(
            f"tf2onnx {tf2onnx.__version__} cannot convert the TensorFlow op {op} (node {nodes[0]!r}){others} to "
            f"ONNX opset {OPSET}, so there is no ONNX model of this graph (export.onnx=false stops trying).")
    data = model.SerializeToString()
    _check_loads(data)
    write_bytes_atomically(Path(path), data)
    opset = next(entry.version for entry in model.opset_import if entry.domain in _STANDARD_DOMAINS)
    return {"opset": int(opset), "tf2onnx": tf2onnx.__version__, "input": inputs[0], "outputs": outputs}


def unconverted_ops(model: Any) -> dict[str, list[str]]:
    """Op type -> node names of the nodes of an ONNX model (subgraphs included) that are no ONNX operator:
    the TensorFlow ops tf2onnx left as they were. Other domains (onnxruntime's contrib ops) are not checked."""
    import onnx

    found: dict[str, list[str]] = {}
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            if node.domain in _STANDARD_DOMAINS and not onnx.defs.has(node.op_type):
                found.setdefault(node.op_type, []).append(node.name)
            for attribute in node.attribute:  # the bodies of If, Loop and Scan
                graphs.extend([attribute.g] if attribute.HasField("g") else list(attribute.graphs))
    return found


def _check_loads(data: bytes) -> None:
    """OnnxConversionError unless onnxruntime can load the model (an operator it has no kernel for, say)."""
    ort = _require("onnxruntime")
    try:
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own Fail/InvalidGraph/NotImplemented
        raise OnnxConversionError(f"onnxruntime {ort.__version__} cannot load the converted ONNX model: "
                                  f"{first_line(error)}") from None


@functools.lru_cache(maxsize=2)
def _session(path: str, modified_ns: int, size: int) -> Any:
    """An onnxruntime session of one file's one version (a file rewritten since gets a new one)."""
    ort = _require("onnxruntime")
    try:
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise FinetuneError(f"onnxruntime cannot load {path}: {first_line(error)}. Is it an ONNX model?") from None


def run_onnx(path: str | Path, batch: np.ndarray) -> list[np.ndarray]:
    """Run an ONNX model on ``batch`` (its one input) on the CPU; its outputs in model order (those of
    :func:`write_onnx`'s ``output_names``)."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"ONNX model {path} not found.")
    stat = path.stat()
    session = _session(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    (model_input,) = session.get_inputs()
    dtype = np.float32 if model_input.type == "tensor(float)" else None
    return session.run(None, {model_input.name: np.asarray(batch, dtype=dtype)})
