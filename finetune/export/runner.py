"""Any exported model, opened by its path and run on images: the one way ``tools predict`` and ``tools evaluate``
read a model.

:func:`open_model` takes

- a frozen or optimised graph (``.pb``, ``.pbtxt``), through the op gate;
- a SavedModel folder (``saved_model.pb`` inside): its serving signature's graph, through the op gate and frozen
  (variables, if any, restored by a Saver built here, never by the file's own ops);
- a TFLite model (``.tflite``, float or int8), run by :class:`finetune.export.formats.TfliteRunner`;
- an ONNX model (``.onnx``), run by ``finetune.export.onnx.run_onnx`` (the ``onnx`` extra);
- a run directory, or its ``export/`` folder: the run's optimised graph.

What is fed (float pixels or encoded files), the image size and the class names are read from ``model.json``
beside the model (as the export writes it; for a SavedModel folder, beside the folder), else from the model and
the caller's options. A SavedModel, TFLite or ONNX model holds no class names: they come from model.json's labels
file, or ``labels``. :func:`classify` runs images through a model in batches; an image that cannot be decoded is
returned with its reason, never stops the others.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from finetune.errors import FinetuneError, first_line

log = logging.getLogger(__name__)

BATCH = 32  # images per run of the model
MODEL_JSON = "model.json"
EXPORT_DIR = "export"
FORMATS = ("graph", "saved_model", "tflite", "onnx")
ONNX_EXTRA = 'pip install "finetune[onnx]"'
# What a run directory or export folder is run as, first found first (model.json's "files" keys).
RUN_MODEL_FILES = ("optimized_graph", "frozen_graph")

Scores = tuple[np.ndarray, np.ndarray]  # (scores [n, classes]: what is printed, logits [n, classes]: what is scored)


class ImageRejected(Exception):
    """A model that decodes its input (``image_bytes``) refused an image of the batch."""


@dataclass
class Model:
    """An opened model: ``run(batch) -> (scores, logits)``. ``scores`` are what ``output`` gives (``kind``
    probabilities or raw scores); ``logits`` what a softmax turns into probabilities (the model's logits, or the
    log of its probabilities when it gives only those), for the loss and top-k of an evaluation."""

    path: Path  # the file or folder run
    format: str  # one of FORMATS
    input_type: str  # "float" (pixels, [N, S, S, 3] in [0, 255]) or "image_bytes" (encoded files, [N])
    image_size: Optional[int]
    labels: Optional[list[str]]  # class names in output order; None: not known
    output: str  # what the scores are read from, for the user
    kind: str  # "probabilities" or "scores"
    run: Callable[[np.ndarray], Scores]
    close: Callable[[], None] = field(default=lambda: None)

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Options:
    """What the command line may say about a model from elsewhere (all optional with an export's model.json)."""

    labels: Optional[str] = None  # a labels file: one name per line, or N:name lines
    input: Optional[str] = None  # a graph's input tensor
    output: Optional[str] = None  # a graph's output tensor
    image_size: Optional[int] = None
    allow_unsafe_ops: bool = False


def model_path(path: str | Path) -> Path:
    """The model file or folder ``path`` names: itself, or for a run directory or its export folder the
    exported optimised graph (else the frozen one)."""
    path = Path(path)
    if not path.exists():
        raise FinetuneError(f"{path} does not exist. Give an exported model (.pb, .tflite, .onnx, a SavedModel "
                            "folder) or a run directory.")
    if not path.is_dir() or (path / "saved_model.pb").is_file():
        return path
    export = path if (path / MODEL_JSON).is_file() else path / EXPORT_DIR
    if not (export / MODEL_JSON).is_file():
        raise FinetuneError(
            f"{path} is a folder, but neither a SavedModel (no saved_model.pb) nor a run directory with an export "
            f"({export / MODEL_JSON} is missing: the run has not finished, or its export was off). Give a model "
            "file, or a finished run.")
    files = _read_json(export / MODEL_JSON).get("files", {})
    for key in RUN_MODEL_FILES:
        if key in files and (export / files[key]).is_file():
            return export / files[key]
    raise FinetuneError(f"{export} holds no exported graph ({', '.join(RUN_MODEL_FILES)} in {MODEL_JSON}).")


def open_model(path: str | Path, options: Optional[Options] = None) -> Model:
    """Open the model ``path`` names (see the module docstring) to run on images."""
    options = options or Options()
    path = model_path(path)
    meta_path = path.with_name(MODEL_JSON)
    meta = _read_json(meta_path) if meta_path.is_file() else {}
    labels_file = options.labels or (str(meta_path.parent / meta["labels"]) if meta.get("labels") else None)
    labels = read_labels(labels_file) if labels_file else None
    opener = _open_saved_model if path.is_dir() else _OPENERS.get(path.suffix.lower(), _open_graph)
    model = opener(path, meta, options)
    model.labels = labels
    if model.input_type == "float" and not model.image_size:
        model.close()
        raise FinetuneError(f"Cannot tell the image size {path} takes; pass --image-size N.")
    return model


def _open_graph(path: Path, meta: dict, options: Options) -> Model:
    """A frozen graph: model.json's input and outputs, or ``options.input`` and ``options.output``."""
    from finetune import graphs
    from finetune.compat import tf

    graph_def = graphs.load_graph_def(path, allow_unsafe=options.allow_unsafe_ops)
    outputs = meta.get("outputs", {})
    input_name = options.input or meta.get("input")
    if options.output:
        fetches = {"scores": options.output}
    elif "probabilities" in outputs:
        fetches = {"scores": outputs["probabilities"], **({"logits": outputs["logits"]} if "logits" in outputs else {})}
    else:
        fetches = {"scores": next(iter(outputs.values()))} if outputs else {}
    if not input_name or not fetches:
        raise FinetuneError(
            f"No model.json beside {path} names the {'input' if not input_name else 'output'} tensor: pass --input "
            "NAME and --output NAME (e.g. --input input:0 --output probabilities:0).")
    graphs.check_nodes_exist(graph_def, [input_name], "input")
    graphs.check_nodes_exist(graph_def, list(fetches.values()), "output")
    nodes = {node.name: node for node in graph_def.node}
    input_node = nodes.get(graphs.node_name(input_name))
    is_string = input_node is not None and input_node.attr["dtype"].type == tf.string.as_datatype_enum
    inferred = "image_bytes" if is_string else "float"
    input_type = inferred if options.input else meta.get("input_type", inferred)
    output_node = nodes.get(graphs.node_name(fetches["scores"]))
    softmax = output_node is not None and output_node.op == "Softmax"
    kind = "probabilities" if (not options.output and "probabilities" in outputs) or softmax else "scores"
    image_size = options.image_size or meta.get("image_size") or _square_side(
        graphs.placeholder_shape(graph_def, input_name))
    session = _GraphSession(graph_def, input_name, fetches, input_type)
    return Model(path, "graph", input_type, image_size, None, fetches["scores"], kind,
                 _with_logits(session.run, kind), session.close)


def _open_saved_model(folder: Path, meta: dict, options: Options) -> Model:
    """A SavedModel folder: its serving signature (``images`` -> ``logits``, ``probabilities`` as we export it)."""
    from finetune import graphs
    from finetune.compat import tf, tf1
    from finetune.freezing import freeze_meta_graph

    meta_graph = graphs.read_saved_model(folder)
    signatures = meta_graph.signature_def
    key = tf1.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
    if key not in signatures and len(signatures) != 1:
        raise FinetuneError(f"The SavedModel {folder} has no {key!r} signature (it has "
                            f"{', '.join(signatures) or 'none'}).")
    signature = signatures[key] if key in signatures else next(iter(signatures.values()))
    if len(signature.inputs) != 1:
        raise FinetuneError(f"The SavedModel {folder}'s signature takes {len(signature.inputs)} inputs; an image "
                            "classifier takes one (the images).")
    (input_info,) = signature.inputs.values()
    outputs = {key: info.name for key, info in signature.outputs.items()}
    scores_key = "probabilities" if "probabilities" in outputs else sorted(outputs)[0]
    fetches = {"scores": outputs[scores_key], **({"logits": outputs["logits"]} if "logits" in outputs else {})}
    # Only what the outputs need is checked, imported and run: never the file's saver (its variables, if any,
    # are restored by a Saver freeze_meta_graph builds).
    graphs.check_needed_ops(meta_graph.graph_def, fetches.values(), str(folder), options.allow_unsafe_ops)
    frozen = freeze_meta_graph(meta_graph.graph_def, str(folder / "variables" / "variables"), list(fetches.values()),
                               str(folder), options.allow_unsafe_ops)
    input_type = "image_bytes" if input_info.dtype == tf.string.as_datatype_enum else "float"
    shape = [None if dim.size < 0 else dim.size for dim in input_info.tensor_shape.dim]
    image_size = options.image_size or meta.get("image_size") or _square_side(shape)
    kind = "probabilities" if scores_key == "probabilities" else "scores"
    session = _GraphSession(frozen, input_info.name, fetches, input_type)
    return Model(folder, "saved_model", input_type, image_size, None, f"signature output {scores_key!r}", kind,
                 _with_logits(session.run, kind), session.close)


def _open_tflite(path: Path, meta: dict, options: Options) -> Model:
    """A TFLite model: float pixels in; its outputs named logits and probabilities (as we export it), else the
    first output read as scores."""
    from finetune.export import formats

    try:
        tflite = formats.TfliteRunner(path)  # loaded once, run batch after batch
    except ValueError as error:  # not a TFLite flatbuffer
        raise FinetuneError(f"{path} is not a TFLite model: {first_line(error)}") from None
    detail = tflite.input
    names = [out["name"] for out in tflite.interpreter.get_output_details()]
    image_size = options.image_size or meta.get("image_size") or _square_side(list(detail["shape_signature"]))
    position = {name: index for index, name in enumerate(names)}
    if "probabilities" in position:
        kind, scores_at, logits_at = "probabilities", position["probabilities"], position.get("logits")
    else:
        kind, scores_at, logits_at = "scores", 0, None

    def run(batch: np.ndarray) -> Scores:
        outputs = tflite(batch)
        scores = outputs[scores_at]
        return scores, (outputs[logits_at] if logits_at is not None else _logits_of(scores, kind))

    return Model(path, "tflite", "float", image_size, None, f"output {names[scores_at]!r}", kind, run)


def _open_onnx(path: Path, meta: dict, options: Options) -> Model:
    """An ONNX model as we export it: float pixels in, (logits, probabilities) out."""
    try:
        from finetune.export.onnx import run_onnx
    except ImportError:
        raise FinetuneError(f"Running the ONNX model {path} needs the onnx extra: {ONNX_EXTRA}.") from None
    image_size = options.image_size or meta.get("image_size")

    def run(batch: np.ndarray) -> Scores:
        logits, probabilities = run_onnx(path, batch)
        return probabilities, logits

    return Model(path, "onnx", "float", image_size, None, "output 'probabilities'", "probabilities", run)


# A model file's suffix -> how it is opened (any other file: a GraphDef; a folder: a SavedModel).
_OPENERS: dict[str, Callable[[Path, dict, Options], Model]] = {".tflite": _open_tflite, ".onnx": _open_onnx}


class _GraphSession:
    """One imported graph and its session, fed ``input_name`` and fetching ``fetches`` (scores[, logits])."""

    def __init__(self, graph_def: object, input_name: str, fetches: dict[str, str], input_type: str) -> None:
        from finetune import graphs
        from finetune.compat import tf1

        graph = graphs.import_graph(graph_def)
        self.input = graphs.get_tensor(graph, input_name)
        self.fetches = {key: graphs.get_tensor(graph, name) for key, name in fetches.items()}
        self.decodes = input_type == "image_bytes"
        self.sess = tf1.Session(graph=graph)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        from finetune.compat import tf

        try:
            values = self.sess.run(self.fetches, {self.input: batch})
        except tf.errors.InvalidArgumentError as error:
            if self.decodes:  # the graph decodes the files: one of them is not an image it can read
                raise ImageRejected(first_line(error)) from None
            raise
        return {key: np.reshape(value, (len(batch), -1)) for key, value in values.items()}

    def close(self) -> None:
        self.sess.close()


def _with_logits(run: Callable[[np.ndarray], dict[str, np.ndarray]], kind: str) -> Callable[[np.ndarray], Scores]:
    def scores_and_logits(batch: np.ndarray) -> Scores:
        values = run(batch)
        return values["scores"], values.get("logits", _logits_of(values["scores"], kind))
    return scores_and_logits


def _logits_of(scores: np.ndarray, kind: str) -> np.ndarray:
    """Logits whose softmax is ``scores``: their log for probabilities; raw scores are logits already."""
    if kind != "probabilities":
        return scores
    return np.log(np.maximum(scores, np.finfo(np.float32).tiny))


def _square_side(shape: list) -> Optional[int]:
    """S of an input shape [N, S, S, C] (None when it is not one)."""
    if len(shape) == 4 and shape[1] and shape[1] > 0 and shape[1] == shape[2]:
        return int(shape[1])
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"Cannot read {path}: {exc}") from None


def read_labels(path: str | Path) -> list[str]:
    """Class names in output order: one per line, or ``N:name`` lines (TF-Slim's labels.txt)."""
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is no part of the first class name
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise FinetuneError(f"Cannot read the labels file {path}: {exc.strerror or exc}. Pass the class names "
                            "with --labels FILE (one per line, in the model's output order).") from None
    except UnicodeDecodeError:
        raise FinetuneError(f"The labels file {path} is not UTF-8 text: save it as UTF-8, one class name per line "
                            "(or N:name lines).") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    numbered = [re.match(r"^(\d+):(.*)$", line) for line in lines]
    if lines and all(numbered):
        by_index = {int(m.group(1)): m.group(2).strip() for m in numbered}
        return [by_index.get(i, str(i)) for i in range(max(by_index) + 1)]
    return lines


# --- images through a model ----------------------------------------------------------------------------

@dataclass
class Classified:
    """One image's outcome: its scores and logits [classes], or why it was skipped."""

    name: str
    scores: Optional[np.ndarray] = None
    logits: Optional[np.ndarray] = None
    problem: Optional[str] = None


Image = tuple[str, "bytes | str"]  # (name, its encoded bytes) or (name, why it cannot be read)
UNDECODABLE = "not a JPEG, PNG, GIF or BMP image TensorFlow can decode"


def classify(model: Model, images: Iterable[Image], batch_size: int = BATCH) -> Iterator[Classified]:
    """Each image through ``model``, in order, ``batch_size`` at a time, decoded as training decodes it
    (:mod:`finetune.data.decode`). An image given with a reason, or that cannot be decoded, comes back skipped
    with its reason; the others are not held up."""
    from finetune.data.images import image_decoder

    decoder = image_decoder(model.image_size) if model.input_type == "float" else None
    chunk: list[tuple[Classified, object]] = []
    for name, data in images:
        if isinstance(data, str):
            chunk.append((Classified(name, problem=data), None))
        elif decoder is None:
            chunk.append((Classified(name), data))
        else:
            pixels = decoder.try_decode(data)
            chunk.append((Classified(name, problem=None if pixels is not None else UNDECODABLE), pixels))
        if sum(item.problem is None for item, _ in chunk) >= batch_size:
            yield from _run_chunk(model, chunk)
            chunk = []
    yield from _run_chunk(model, chunk)


def _run_chunk(model: Model, chunk: list[tuple[Classified, object]]) -> list[Classified]:
    good = [(item, feed) for item, feed in chunk if item.problem is None]
    if good:
        try:
            _fill(model, good)
        except ImageRejected:  # the graph decodes: find the image it cannot, one at a time
            for item, feed in good:
                try:
                    _fill(model, [(item, feed)])
                except ImageRejected:
                    item.problem = UNDECODABLE
    return [item for item, _ in chunk]


def _fill(model: Model, good: list[tuple[Classified, object]]) -> None:
    if model.input_type == "float":
        batch = np.stack([feed for _, feed in good])
    else:
        batch = np.empty(len(good), dtype=object)
        batch[:] = [feed for _, feed in good]
    scores, logits = model.run(batch)
    scores, logits = np.reshape(scores, (len(good), -1)), np.reshape(logits, (len(good), -1))
    for row, (item, _) in enumerate(good):
        item.scores, item.logits = scores[row], logits[row]


def image_progress(items: Iterable, total: int, leave: bool = True) -> Iterator:
    """``items`` with a progress bar of ``total`` images on stderr when it is a terminal (tqdm draws none
    elsewhere); ``leave``: the finished bar stays."""
    from tqdm import tqdm

    return iter(tqdm(items, total=total, unit="image", disable=None, file=sys.stderr, leave=leave))
