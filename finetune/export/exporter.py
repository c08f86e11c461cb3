"""Export: freeze the export tower of the training session, optimise it for inference, convert it, and
prove that every file computes what the session computes.

``export/`` receives:

- ``frozen_graph.pb``: the subgraph of ``logits`` and ``probabilities``, variables as constants,
  devices cleared, the batch dimension dynamic, the backbone's normalisation inside;
- ``optimized_graph.pb``: the same with training-only nodes stripped and BatchNorm folded into the
  convolutions before it (:func:`finetune.export.optimize.optimize_for_inference`);
- ``saved_model/`` (``export.saved_model``): the optimised graph, signature ``serving_default``;
- ``model.tflite`` (``export.tflite``): float32, converted from the optimised float graph;
- ``model_<mode>.tflite`` (``export.tflite_quantization``): quantized (:mod:`finetune.export.quantize`);
- ``tta_graph.pb`` (``export.tta``): the frozen graph over the views of ``eval.tta``, the same input,
  ``probabilities`` the mean of the views' probabilities and ``logits`` its log (:mod:`finetune.model.tta`);
- ``model.onnx`` (``export.onnx``): converted from the frozen float graph by tf2onnx
  (:mod:`finetune.export.onnx`);
- ``labels.txt``, ``model.json`` (tensor names, input type and size, labels, files) and
  ``val_predictions.json`` (the session's prediction for every validation image).

``export.input=float`` (default): the graphs take ``input:0``, float32 RGB [N, H, W, 3] in [0, 255].
``export.input=image_bytes``: they take ``image_bytes:0``, a string [N] of encoded JPEG/PNG files,
decoded and resized in the graph exactly as in training. TFLite has no image decoder, so
``model.tflite`` takes float pixels either way (``model.json`` says so).

Parity: each format runs on the first ``export.parity_images`` validation images and is compared
with the session's export tower (the TTA graph: with the session's TTA tower) on the same images; any
difference above ``export.parity_tolerance`` fails the run, naming the format. A quantized model cannot meet that
tolerance: it is checked by its accuracy on the validation and test images instead, against the float
model's (``export.max_accuracy_drop``); a model that fails that check is moved to ``export-failed/`` and
the run fails, the checked float export published as ``export/``. A graph tf2onnx cannot convert fails the
ONNX format alone: the other formats are exported, and model.json and metrics.json say why there is no
``model.onnx`` (``format_errors``).

All or nothing: the files are written into a temporary folder beside ``export/`` (``.export.tmp-PID``)
and renamed into place once parity passed, swapped in one step with an older export where the
system can (Linux ``renameat2``). ``export/`` is thus always a complete, checked export (or absent);
a crash mid-export leaves the older one as it was. An export that fails parity goes to
``export-failed/`` for inspection instead, and ``export/`` is left alone.
"""
from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

import numpy as np

from finetune import graphs
from finetune.export import formats, optimize, quantize
from finetune.freezing import freeze_session
from finetune.compat import tf, tf1
from finetune.config import BackboneConfig, ExportConfig
from finetune.data.examples import Example, LabelledImages
from finetune.errors import FinetuneError
from finetune.files import write_json_atomically, write_text_atomically
from finetune.data.images import decode_image_batch, decode_images
from finetune.model.towers import INPUT_NAME, LOGITS_NAME, PROBABILITIES_NAME, Tower
from finetune.model.tta import TtaTower, combine_views, view_batch
from finetune.vocab import EXPORT_INPUTS, implementations

log = logging.getLogger(__name__)
T = TypeVar("T")

IMAGE_BYTES_NAME = "image_bytes"
# export.input -> the exported graphs' input node; the valid names live in finetune.vocab
INPUT_NODES = implementations(EXPORT_INPUTS, {"float": INPUT_NAME, "image_bytes": IMAGE_BYTES_NAME}, "export.input")
OUTPUTS = (LOGITS_NAME, PROBABILITIES_NAME)
OUTPUT_TENSORS = {name: f"{name}:0" for name in OUTPUTS}
INPUT_RANGE = [0, 255]
PREDICT_BATCH = 64
# export-failed/: an export that failed its parity check, or a quantized model that failed its accuracy check,
# kept for inspection
FAILED_SUFFIX = "-failed"
FILES = {
    "frozen_graph": "frozen_graph.pb", "optimized_graph": "optimized_graph.pb", "saved_model": "saved_model",
    "tflite": "model.tflite", "onnx": "model.onnx", "labels": "labels.txt", "val_predictions": "val_predictions.json",
    "tta_graph": "tta_graph.pb",
}


@dataclass
class Format:
    """One exported file and how to run it: ``run(batch) -> [logits, probabilities]``."""

    name: str  # the prefix of its parity keys: frozen, optimized, saved_model, tflite, onnx
    file: str  # key of FILES
    input_type: str  # float | image_bytes: what ``run`` is fed
    run: Callable[[np.ndarray], list[np.ndarray]]
    reference: str = "model"  # what of the session it must compute: model (the export tower) | tta (the TTA tower)


@dataclass
class Written:
    """What :func:`write_formats` wrote: each format with its runner, the optimised graph taking float pixels
    that TFLite is converted from (with ``export.input=image_bytes``, the optimised graph itself unless a TFLite
    model is asked for), model.json's entries of formats that have some (ONNX's opset), and the formats that
    could not be written, with why (an op tf2onnx cannot convert)."""

    formats: list[Format]
    float_graph: graphs.GraphDef
    details: dict[str, dict] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def export_model(sess: tf1.Session, tower: Tower, data: LabelledImages, backbone_cfg: BackboneConfig,
                 export_dir: Path, export_cfg: ExportConfig, allow_unsafe_ops: bool = False, seed: int = 0,
                 tta: Optional[TtaTower] = None) -> dict:
    """Write every export file of the session's export tower, check parity on validation images (a quantized
    TFLite model: its accuracy), and return the export metrics (files, per-format parity, the quantized model's
    accuracy). FinetuneError if any parity exceeds the tolerance, or the quantized model fails its accuracy check.
    ``tta`` (with export.tta): the session's TTA tower, also exported (``tta_graph.pb``) and checked against.

    The files are written into a temporary folder and published as ``export_dir`` when complete and
    checked (see the module docstring). ``seed`` draws the int8 model's calibration images. Call it holding
    the run directory (the pipeline's lock): the temporary folders of killed earlier processes beside
    ``export_dir`` are removed first."""
    export_dir = Path(export_dir)
    kept = export_dir.with_name(export_dir.name + FAILED_SUFFIX)
    remove_stale_temporaries(export_dir)
    staging = temporary_folder(export_dir)
    staging.mkdir(parents=True)
    try:
        meta, parity, images, written = _write_and_check(sess, tower, data, backbone_cfg, staging, export_cfg,
                                                         allow_unsafe_ops, tta)
        failed = {key: value for key, value in parity.items() if not value <= export_cfg.parity_tolerance}  # NaN too
        if failed:
            publish_folder(staging, kept)
            raise _parity_error(failed, export_cfg.parity_tolerance, kept, export_dir, images)
        # model.json last, holding the parity it passed: only a checked export has one.
        meta["parity"] = {"images": images, "tolerance": export_cfg.parity_tolerance, "max_abs_diff": parity}
        problem = None
        if export_cfg.tflite_quantization != "none":
            report, problem = quantize.write_and_check(
                lambda pixels: sess.run(tower.probabilities, {tower.pixels: pixels}), written.float_graph, staging,
                export_cfg, backbone_cfg.image_size, data, seed, float_tflite=staging / FILES["tflite"])
            meta["tflite_quantization"] = report
            if problem is None:
                meta["files"]["tflite_quantized"] = report["file"]
            else:
                _keep_failed_quantized(staging / report["file"], report, kept)
        write_json_atomically(staging / "model.json", meta)
        publish_folder(staging, export_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already unless something failed
    if problem is not None:
        raise FinetuneError(
            f"{problem} It is kept for inspection in {kept / report['file']} (with quantization.json, its accuracy "
            f"report); do not deploy it. The float export passed its parity check and is in {export_dir}. "
            f"{quantize.fixes(export_cfg)}")
    return _export_metrics(meta, export_dir, export_cfg, parity, images)


def _export_metrics(meta: dict, export_dir: Path, export_cfg: ExportConfig, parity: dict[str, float],
                    images: int) -> dict:
    """metrics.json's ``export`` section (logged too). Paths relative to the run directory: two runs of one
    config write the same metrics.json."""
    written = meta["files"]
    log.info("Exported %s to %s (input %s); parity on %d validation images: %s", ", ".join(written), export_dir,
             meta["input"], images, ", ".join(f"{k} {v:.1e}" for k, v in parity.items()))
    metrics = {
        "frozen_graph": f"{export_dir.name}/{FILES['frozen_graph']}", "input": meta["input"],
        "input_type": export_cfg.input, "files": {key: f"{export_dir.name}/{name}" for key, name in written.items()},
        "parity": parity, "parity_images": images,
    }
    for key in ("tflite_quantization", "onnx", "format_errors"):
        if key in meta:
            metrics[key] = meta[key]
    return metrics


def _keep_failed_quantized(path: Path, report: dict, kept: Path) -> None:
    """Move a quantized model that failed its accuracy check, with its report, to ``kept`` (export-failed/)."""
    holding = temporary_folder(kept)
    shutil.rmtree(holding, ignore_errors=True)
    holding.mkdir(parents=True)
    os.rename(path, holding / path.name)
    write_json_atomically(holding / "quantization.json", report)
    publish_folder(holding, kept)


def _write_and_check(sess: tf1.Session, tower: Tower, data: LabelledImages, backbone_cfg: BackboneConfig,
                     folder: Path, export_cfg: ExportConfig, allow_unsafe_ops: bool = False,
                     tta: Optional[TtaTower] = None) -> tuple[dict, dict[str, float], int, Written]:
    """Every export file but model.json and a quantized model into ``folder``; returns model.json's content
    (without parity), the parity per format and output, the number of images it was measured on, and what
    :func:`write_formats` wrote."""
    image_size = backbone_cfg.image_size
    write_text_atomically(folder / FILES["labels"], "".join(f"{name}\n" for name in data.class_names))
    predictions = validation_predictions(sess, tower, data, image_size)
    write_text_atomically(folder / FILES["val_predictions"], json.dumps(predictions, indent=1))
    views = tta.views if tta is not None else ()
    written = write_formats(sess, folder, export_cfg, image_size, allow_unsafe_ops, views)
    files = {key: FILES[key] for key in ("frozen_graph", "optimized_graph", "labels", "val_predictions")}
    files.update({fmt.file: FILES[fmt.file] for fmt in written.formats})
    meta = model_json(export_cfg, image_size, backbone_cfg.name, files, views)
    meta.update(written.details)
    if written.errors:
        meta["format_errors"] = written.errors
    examples = data.examples["val"][:export_cfg.parity_images]
    parity = check_parity(sess, tower, written.formats, data, examples, image_size, tta)
    return meta, parity, len(examples), written


def validation_predictions(sess: tf1.Session, tower: Tower, data: LabelledImages, image_size: int) -> list[dict]:
    """The session's export tower on every validation image (decoded by :func:`decode_images`):
    ``[{"image": its key, "label", "predicted", "probability"}]``, what ``predict`` on the exported graph
    should print."""
    rows = []
    examples = data.examples["val"]
    for start in range(0, len(examples), PREDICT_BATCH):
        chunk = examples[start:start + PREDICT_BATCH]
        probabilities = sess.run(tower.probabilities, {tower.pixels: pixels_of(data, chunk, image_size)[0]})
        for example, row in zip(chunk, probabilities):
            best = int(np.argmax(row))
            rows.append({"image": example.key, "label": data.class_names[example.label],
                         "predicted": data.class_names[best], "probability": float(row[best])})
    return rows


def pixels_of(data: LabelledImages, examples: list[Example], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(decoded pixels, encoded bytes as the object array a tf.string placeholder takes) of ``examples``."""
    encoded = np.empty(len(examples), dtype=object)
    encoded[:] = list(data.reader.read_bytes(examples))
    return decode_images(encoded, image_size, [e.key for e in examples]), encoded


def write_formats(sess: tf1.Session, export_dir: Path, export_cfg: ExportConfig, image_size: int,
                  allow_unsafe_ops: bool = False, tta_views: Sequence[str] = ()) -> Written:
    """Freeze, optimise, and convert as configured; return each written format with its runner. With
    ``tta_views``, also the TTA graph over them (:func:`tta_graph`).

    The graphs pass the op gate's list (finetune.graphs.save_graph_def), unless ``allow_unsafe_ops`` let
    an imported backbone's other ops in: then they carry them out too. TFLite and ONNX have no image decoder:
    they are converted from the graph that takes float pixels, whatever ``export.input`` is."""
    input_node = INPUT_NODES[export_cfg.input]
    frozen_float = freeze_session(sess, list(OUTPUTS))
    frozen = frozen_float if export_cfg.input == "float" else image_bytes_graph(frozen_float, image_size)
    optimized = optimize.optimize_for_inference(frozen, [input_node], list(OUTPUTS))
    shape = graphs.placeholder_shape(optimized, input_node)
    if shape[0] is not None:
        raise FinetuneError(f"The optimised graph's input {input_node!r} has a fixed batch size ({shape}).")
    graphs.save_graph_def(frozen, export_dir / FILES["frozen_graph"], allow_unsafe_ops)
    graphs.save_graph_def(optimized, export_dir / FILES["optimized_graph"], allow_unsafe_ops)
    feeds, fetches = f"{input_node}:0", list(OUTPUT_TENSORS.values())
    converted = export_cfg.tflite or export_cfg.tflite_quantization != "none"
    float_graph = optimized if export_cfg.input == "float" or not converted else optimize.optimize_for_inference(
        frozen_float, [INPUT_NAME], list(OUTPUTS))
    written = Written([
        Format("frozen", "frozen_graph", export_cfg.input,
               lambda batch: graphs.run_graph_def(frozen, {feeds: batch}, fetches)),
        Format("optimized", "optimized_graph", export_cfg.input,
               lambda batch: graphs.run_graph_def(optimized, {feeds: batch}, fetches)),
    ], float_graph)
    if export_cfg.saved_model:
        saved = export_dir / FILES["saved_model"]
        formats.write_saved_model(optimized, feeds, OUTPUT_TENSORS, saved, overwrite=True)
        written.formats.append(Format("saved_model", "saved_model", export_cfg.input,
                                      lambda batch: _in_order(formats.run_saved_model(saved, batch))))
    if export_cfg.tflite:
        tflite = export_dir / FILES["tflite"]
        formats.write_tflite(float_graph, f"{INPUT_NAME}:0", list(OUTPUTS), tflite, image_size)
        written.formats.append(Format("tflite", "tflite", "float", formats.TfliteRunner(tflite)))
    if export_cfg.onnx:
        _write_onnx(frozen_float, export_dir / FILES["onnx"], image_size, written)
    if tta_views:
        augmented = tta_graph(frozen_float, tta_views, image_size)
        if export_cfg.input == "image_bytes":
            augmented = image_bytes_graph(augmented, image_size)
        graphs.save_graph_def(augmented, export_dir / FILES["tta_graph"], allow_unsafe_ops)
        written.formats.append(Format("tta", "tta_graph", export_cfg.input,
                                      lambda batch: graphs.run_graph_def(augmented, {feeds: batch}, fetches),
                                      reference="tta"))
    return written


def _write_onnx(frozen_float: graphs.GraphDef, path: Path, image_size: int, written: Written) -> None:
    """The ONNX format into ``written``, or, when tf2onnx cannot convert the graph, why into its errors."""
    from finetune.export import onnx  # tf2onnx and onnxruntime (the onnx extra) load only for an ONNX export

    try:
        details = onnx.write_onnx(frozen_float, f"{INPUT_NAME}:0", list(OUTPUTS), path)
    except onnx.OnnxConversionError as error:
        log.warning("No ONNX export: %s The other formats are exported as configured.", error)
        written.errors["onnx"] = str(error)
        return
    written.details["onnx"] = {**details, "input_type": "float", "input_shape": [None, image_size, image_size, 3]}
    written.formats.append(Format("onnx", "onnx", "float", lambda batch: onnx.run_onnx(path, batch)))


def _in_order(outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [outputs[name] for name in OUTPUTS]


def add_image_bytes_input(
    build_model: Callable[[tf.Tensor], T], image_size: int, name: str = "image_bytes"
) -> tuple[tf.Tensor, T]:
    """Make the graph input ``<name>:0`` (string [None], JPEG/PNG bytes) and build the model on it.

    ``build_model`` takes float32 [N, image_size, image_size, 3] in [0, 255], decoded and resized as
    in training (:func:`finetune.data.images.decode_image_batch`). Returns (placeholder, what it returned).
    """
    image_bytes = tf1.placeholder(tf.string, [None], name=name)
    return image_bytes, build_model(decode_image_batch(image_bytes, image_size))


def image_bytes_graph(frozen: graphs.GraphDef, image_size: int) -> graphs.GraphDef:
    """``image_bytes:0`` (string [None]) -> decoded as in training -> the frozen float graph -> ``logits:0``,
    ``probabilities:0`` at the root; the float graph's own nodes sit under ``model/``."""

    def import_frozen(pixels: tf.Tensor) -> list:
        return tf1.import_graph_def(frozen, input_map={f"{INPUT_NAME}:0": pixels},
                                    return_elements=list(OUTPUT_TENSORS.values()), name="model")

    graph = tf.Graph()
    with graph.as_default():
        _, outputs = add_image_bytes_input(import_frozen, image_size, name=IMAGE_BYTES_NAME)
        for name, tensor in zip(OUTPUTS, outputs):
            tf.identity(tensor, name=name)
    return tf1.graph_util.extract_sub_graph(graph.as_graph_def(), list(OUTPUTS))


def tta_graph(frozen: graphs.GraphDef, views: Sequence[str], image_size: int) -> graphs.GraphDef:
    """``input:0`` (float [N, H, W, 3]) -> each of ``views`` -> the frozen float graph (its nodes under
    ``model/``) over all of them -> ``logits:0``, ``probabilities:0`` per image: the mean of the views'
    probabilities and its log (:func:`finetune.model.tta.combine_views`)."""
    graph = tf.Graph()
    with graph.as_default():
        pixels = tf1.placeholder(tf.float32, [None, image_size, image_size, 3], name=INPUT_NAME)
        (logits,) = tf1.import_graph_def(frozen, input_map={f"{INPUT_NAME}:0": view_batch(pixels, views)},
                                         return_elements=[OUTPUT_TENSORS[LOGITS_NAME]], name="model")
        combined, probabilities = combine_views(logits, len(views))
        tf.identity(combined, name=LOGITS_NAME)
        tf.identity(probabilities, name=PROBABILITIES_NAME)
    return tf1.graph_util.extract_sub_graph(graph.as_graph_def(), list(OUTPUTS))


def model_json(export_cfg: ExportConfig, image_size: int, backbone: str, files: dict[str, str],
               tta_views: Sequence[str] = ()) -> dict:
    """What a deployer (and ``predict``) needs to feed and read the exported graphs."""
    is_float = export_cfg.input == "float"
    meta = {
        "input": f"{INPUT_NODES[export_cfg.input]}:0",
        "input_type": export_cfg.input,
        "input_shape": [None, image_size, image_size, 3] if is_float else [None],
        "input_range": INPUT_RANGE,  # the pixels, decoded in the graph for image_bytes
        "image_size": image_size,
        "outputs": dict(OUTPUT_TENSORS),
        "labels": files["labels"],
        "backbone": backbone,
        "files": files,
    }
    if "tflite" in files:
        meta["tflite_input"] = {"name": f"{INPUT_NAME}:0", "input_type": "float",
                                "input_shape": [None, image_size, image_size, 3]}
    if "tta_graph" in files:  # the same input and output names as the other graphs
        meta["tta"] = {"graph": files["tta_graph"], "views": list(tta_views)}
    return meta


def check_parity(sess: tf1.Session, tower: Tower, exported: list[Format], data: LabelledImages,
                 examples: list[Example], image_size: int, tta: Optional[TtaTower] = None) -> dict[str, float]:
    """Max |session - format| per format and output on ``examples``: ``{"frozen_logits": ...}``.

    The session gets the pixels from :func:`decode_images`; an ``image_bytes`` format gets the encoded bytes.
    A format of reference ``tta`` is compared with the session's TTA tower (``tta``), fed the same pixels."""
    pixels, encoded = pixels_of(data, examples, image_size)
    feeds = {"float": pixels, "image_bytes": encoded}
    references = {"model": tower}
    if tta is not None:
        references["tta"] = tta
    expected = {name: sess.run([model.logits, model.probabilities], {model.pixels: pixels})
                for name, model in references.items() if any(fmt.reference == name for fmt in exported)}
    parity = {}
    for fmt in exported:
        for name, want, got in zip(OUTPUTS, expected[fmt.reference], fmt.run(feeds[fmt.input_type])):
            parity[f"{fmt.name}_{name}"] = graphs.max_abs_diff(got, want)
    return parity


def _parity_error(failed: dict[str, float], tolerance: float, kept: Path, export_dir: Path,
                  images: int) -> FinetuneError:
    formats = sorted({key.rsplit("_", 1)[0] for key in failed})
    return FinetuneError(
        f"Exported {', '.join(formats)} differ(s) from the training session on {images} validation images by more "
        f"than export.parity_tolerance={tolerance}: {', '.join(f'{k} {v:.3e}' for k, v in failed.items())}. "
        f"The files are kept for inspection in {kept} (without model.json, which only a checked export gets); "
        f"do not deploy them. {export_dir} was left as it was."
    )


# --- publishing a folder whole -------------------------------------------------------------------------

_AT_FDCWD = -100  # <fcntl.h>: paths relative to the working directory
_RENAME_EXCHANGE = 2  # <linux/fs.h>: renameat2 swaps the two paths


def temporary_folder(target: Path) -> Path:
    """Where ``target`` is built before :func:`publish_folder`: ``.NAME.tmp-PID`` beside it."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def _stale_pattern(target: Path) -> re.Pattern:
    # .NAME.tmp-PID (a folder being built, or after a swap the old one) and .NAME.old.tmp-PID (moved aside)
    return re.compile(rf"^\.{re.escape(target.name)}(\.old)?\.tmp-\d+$")


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporary folders of ``target`` that killed processes left beside it; return them.
    Only for a caller that holds the folder's parent: a live writer's folder would go too."""
    if not target.parent.is_dir():
        return []
    pattern = _stale_pattern(target)
    stale = sorted(path for path in target.parent.iterdir() if pattern.match(path.name))
    for path in stale:
        _remove(path)
    if stale:
        log.info("Removed %d folder(s) left half-written by an interrupted earlier process: %s", len(stale),
                 ", ".join(path.name for path in stale))
    return stale


def publish_folder(staging: Path, target: Path) -> None:
    """Rename the complete folder ``staging`` to ``target``. An older ``target`` is swapped out in one step
    where the system can (``renameat2(RENAME_EXCHANGE)``: Linux 3.15+, most local file systems), else
    moved aside first; removed after. No moment shows a partial ``target``; at worst (a crash between the
    fallback's two renames) it is absent until the restarted run exports again."""
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        _remove(staging)  # the older folder, now under the temporary name
        return
    aside = staging.with_name(f".{target.name}.old.tmp-{os.getpid()}")
    _remove(aside)
    os.rename(target, aside)
    os.rename(staging, target)
    _remove(aside)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically; False where the C library or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not Linux, or a C library older than glibc 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the kernel or file system lacks the flag
        return False
    raise OSError(code, os.strerror(code), str(second))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
