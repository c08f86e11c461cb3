"""The quantized TFLite model: converted from the float graph, calibrated on training images, and checked by
its accuracy against the float model's, because its outputs cannot meet the float formats' parity tolerance.

``export.tflite_quantization`` picks the mode (:func:`finetune.export.formats.write_tflite`). An ``int8``
model's activation ranges are measured on ``export.calibration_images`` training images, a sample drawn with
the run's seed and decoded and resized as training decodes them, augmentation aside
(:func:`finetune.data.decode.decode_image`, through :func:`finetune.data.images.decode_images`). Every
mode is then run on all validation and test images next to the float model (the session's export tower), and
the accuracy gate (:func:`accuracy_problem`) fails a model that loses more than ``export.max_accuracy_drop``
of the images, or that predicts one class for every image.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from finetune.config import ExportConfig
from finetune.data.examples import Example, LabelledImages
from finetune.data.images import decode_images
from finetune.export import formats
from finetune.graphs import GraphDef

log = logging.getLogger(__name__)

Classify = Callable[[np.ndarray], np.ndarray]  # float pixels [N, S, S, 3] -> probabilities [N, classes]
CHUNK = 64  # images decoded and run at a time
SPLITS = ("val", "test")
CHECKED_BY = ("accuracy on the validation and test images against the float model (export.max_accuracy_drop): "
              "a quantized model cannot meet export.parity_tolerance")


def quantized_file(mode: str) -> str:
    """The quantized model's file name in export/: ``model_<mode>.tflite``."""
    return f"model_{mode}.tflite"


def decode(data: LabelledImages, examples: list[Example], image_size: int) -> np.ndarray:
    """Float pixels [N, S, S, 3] in [0, 255] of ``examples``, decoded as training, evaluation and the parity check
    decode them."""
    return decode_images(list(data.reader.read_bytes(examples)), image_size, [e.key for e in examples])


def calibration_examples(train: list[Example], count: int, seed: int) -> list[Example]:
    """``count`` training examples drawn with ``seed`` (all of them when there are fewer), in split order."""
    if count >= len(train):
        return list(train)
    chosen = np.sort(np.random.default_rng(seed).choice(len(train), size=count, replace=False))
    return [train[index] for index in chosen]


def calibration_images(data: LabelledImages, examples: list[Example],
                       image_size: int) -> Callable[[], Iterator[np.ndarray]]:
    """What the converter calls for calibration: each image [S, S, 3] in turn, decoded a chunk at a time."""
    def images() -> Iterator[np.ndarray]:
        for start in range(0, len(examples), CHUNK):
            yield from decode(data, examples[start:start + CHUNK], image_size)
    return images


def write_quantized(float_graph: GraphDef, folder: Path, export_cfg: ExportConfig, image_size: int,
                    data: LabelledImages, seed: int,
                    calibration: Optional[Callable[[], Iterator[np.ndarray]]] = None) -> Path:
    """Convert ``float_graph`` (``input:0`` -> ``logits:0``, ``probabilities:0``) to the quantized TFLite model
    ``export_cfg`` asks for, in ``folder``; return its path. An int8 model is calibrated on a seeded sample of
    the training split, or on what ``calibration`` yields."""
    mode = export_cfg.tflite_quantization
    if mode == "int8" and calibration is None:
        examples = calibration_examples(data.examples["train"], export_cfg.calibration_images, seed)
        log.info("Calibrating the int8 TFLite model on %d training images (seed %d)", len(examples), seed)
        calibration = calibration_images(data, examples, image_size)
    path = folder / quantized_file(mode)
    formats.write_tflite(float_graph, "input:0", ["logits", "probabilities"], path, image_size, quantization=mode,
                         calibration=calibration, io_type=export_cfg.tflite_io,
                         per_channel=export_cfg.tflite_per_channel)
    return path


def compare_accuracy(float_model: Classify, quantized_model: Classify, data: LabelledImages,
                     image_size: int) -> dict[str, dict]:
    """Each model's accuracy on the validation and test images, per split and on both together (``val+test``):
    ``{"images", "float", "quantized", "float_correct", "quantized_correct", "agreement"}`` (agreement: the
    fraction where both predict the same class); ``val+test`` adds how many classes each model predicts."""
    report: dict[str, dict] = {}
    totals = np.zeros(4, dtype=np.int64)  # images, float correct, quantized correct, agreeing
    predicted: dict[str, set[int]] = {"float": set(), "quantized": set()}
    for split in SPLITS:
        counts = np.zeros(4, dtype=np.int64)
        examples = data.examples.get(split, [])
        for start in range(0, len(examples), CHUNK):
            chunk = examples[start:start + CHUNK]
            pixels, labels = decode(data, chunk, image_size), np.array([e.label for e in chunk])
            first, second = np.argmax(float_model(pixels), 1), np.argmax(quantized_model(pixels), 1)
            counts += [len(chunk), np.sum(first == labels), np.sum(second == labels), np.sum(first == second)]
            predicted["float"].update(first.tolist())
            predicted["quantized"].update(second.tolist())
        if counts[0]:
            report[split] = _accuracy_entry(counts)
        totals += counts
    report["val+test"] = _accuracy_entry(totals)
    report["val+test"].update({f"{model}_predicted_classes": len(found) for model, found in predicted.items()})
    return report


def _accuracy_entry(counts: np.ndarray) -> dict:
    images, float_correct, quantized_correct, agreeing = (int(c) for c in counts)
    fraction = (lambda n: n / images) if images else (lambda n: None)
    return {"images": images, "float": fraction(float_correct), "quantized": fraction(quantized_correct),
            "float_correct": float_correct, "quantized_correct": quantized_correct, "agreement": fraction(agreeing)}


def gate_report(accuracy: dict[str, dict], max_drop: float) -> dict:
    """The accuracy gate's numbers: the drop on val and test together as a fraction and in images, and the
    number of images ``max_drop`` allows there."""
    both = accuracy["val+test"]
    lost = both["float_correct"] - both["quantized_correct"]
    return {"drop": lost / both["images"] if both["images"] else None, "drop_images": lost,
            "max_accuracy_drop": max_drop, "allowed_images": math.floor(max_drop * both["images"] + 1e-9)}


def accuracy_problem(mode: str, accuracy: dict[str, dict], gate: dict) -> Optional[str]:
    """Why the quantized model fails the accuracy gate (one sentence), or None when it passes: it loses more
    than ``max_accuracy_drop`` of the val and test images, or predicts one class for all of them (a constant
    predictor) where the float model predicts several."""
    both = accuracy["val+test"]
    images = both["images"]
    if not images:
        return f"There are no validation or test images to check the {mode} TFLite model on."
    if both["quantized_predicted_classes"] == 1 and both["float_predicted_classes"] > 1:
        return (f"The {mode} TFLite model predicts the same class for every one of the {images} validation and "
                f"test images (a constant predictor; accuracy {both['quantized']:.3f} against the float model's "
                f"{both['float']:.3f}, {gate['drop_images']} image(s) lost).")
    if gate["drop_images"] > gate["allowed_images"]:
        return (f"The {mode} TFLite model's accuracy on the {images} validation and test images is "
                f"{both['quantized']:.3f} against the float model's {both['float']:.3f}: it loses "
                f"{gate['drop_images']} image(s) ({gate['drop']:.3f}), more than export.max_accuracy_drop="
                f"{gate['max_accuracy_drop']} allows ({gate['allowed_images']} image(s)).")
    return None


def fixes(export_cfg: ExportConfig) -> str:
    """What to try when the quantized model fails the accuracy gate, as one clause."""
    tries = ["export.tflite_quantization=float16 (or dynamic)" if export_cfg.tflite_quantization == "int8" else
             "export.tflite_quantization=float16" if export_cfg.tflite_quantization == "dynamic" else None,
             "more export.calibration_images" if export_cfg.tflite_quantization == "int8" else None,
             "export.tflite_per_channel=true" if export_cfg.tflite_quantization == "int8"
             and not export_cfg.tflite_per_channel else None,
             "export.tflite_quantization=none (the float model.tflite alone)"]
    return "Try " + ", ".join(t for t in tries if t) + "."


def quantization_report(path: Path, float_tflite: Optional[Path], export_cfg: ExportConfig, accuracy: dict,
                        gate: dict, passed: bool) -> dict:
    """model.json's and metrics.json's ``tflite_quantization`` section."""
    size = path.stat().st_size
    float_size = float_tflite.stat().st_size if float_tflite is not None and float_tflite.is_file() else None
    report = {"mode": export_cfg.tflite_quantization, "file": path.name, **formats.tflite_io(path),
              "size_bytes": size, "float_size_bytes": float_size,
              "size_ratio": round(size / float_size, 4) if float_size else None,
              "checked_by": CHECKED_BY, "accuracy": accuracy, **gate, "passed": passed}
    if export_cfg.tflite_quantization == "int8":
        report.update(per_channel=export_cfg.tflite_per_channel, calibration_images=export_cfg.calibration_images)
    return report


def write_and_check(float_model: Classify, float_graph: GraphDef, folder: Path, export_cfg: ExportConfig,
                    image_size: int, data: LabelledImages, seed: int, float_tflite: Optional[Path] = None,
                    calibration: Optional[Callable[[], Iterator[np.ndarray]]] = None) -> tuple[dict, Optional[str]]:
    """Write the quantized TFLite model into ``folder`` (:func:`write_quantized`) and compare its accuracy with
    ``float_model``'s (the session's export tower) on the validation and test images: (its report for
    model.json, why it fails the accuracy gate or None). ``float_tflite``: the float model.tflite, for the
    size ratio."""
    path = write_quantized(float_graph, folder, export_cfg, image_size, data, seed, calibration)
    quantized = formats.TfliteRunner(path)
    accuracy = compare_accuracy(float_model, lambda pixels: quantized(pixels)[1], data, image_size)
    gate = gate_report(accuracy, export_cfg.max_accuracy_drop)
    problem = accuracy_problem(export_cfg.tflite_quantization, accuracy, gate)
    report = quantization_report(path, float_tflite, export_cfg, accuracy, gate, problem is None)
    both = accuracy["val+test"]
    size = "" if report["size_ratio"] is None else f", {report['size_ratio']:.2f}x the float model.tflite's size"
    log.info("%s TFLite model (%s): accuracy %.4f against the float model's %.4f on %d val+test images (%d image(s) "
             "lost; export.max_accuracy_drop allows %d)%s", export_cfg.tflite_quantization, path.name,
             both["quantized"] or 0.0, both["float"] or 0.0, both["images"], gate["drop_images"],
             gate["allowed_images"], size)
    return report, problem
