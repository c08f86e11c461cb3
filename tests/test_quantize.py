"""Quantized TFLite models (issue 20, item 1): each mode converted from the tiny run's float graph, its accuracy
on val and test reported next to the float model's; ``run_tflite`` on integer input and output; the accuracy
gate, and an export whose quantized model fails it (calibrated on constant images) keeping the float export.

The tests re-convert conftest's ``tiny_run`` export in a session rebuilt from its checkpoint (no training).
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import cli
from finetune import graphs
from finetune.errors import FinetuneError
from finetune.export import exporter, formats, quantize
from finetune.export.run_freeze import exported_checkpoint, run_config, run_session
from finetune.pipeline import load_data

IMAGE_SIZE = 32  # the tiny profile (conftest.TINY_BACKBONE)


@pytest.fixture(scope="module")
def tiny(tiny_run, tiny_data):
    """The tiny run's export tower in a session, its data, and its optimised (float input) graph. Each list of
    images is decoded once for the module (decoding starts a TensorFlow session: the tests' main cost)."""
    run_dir, metrics = tiny_run
    cfg = run_config(run_dir)
    data = load_data(cfg.data, tiny_data)
    decoded = {}

    def decode_once(data, examples, image_size):
        key = (tuple(e.key for e in examples), image_size)
        if key not in decoded:
            decoded[key] = decode(data, examples, image_size)
        return decoded[key]

    with pytest.MonkeyPatch.context() as patch, run_session(run_dir, exported_checkpoint(run_dir)) as (sess, tower):
        decode = quantize.decode
        patch.setattr(quantize, "decode", decode_once)
        yield SimpleNamespace(
            run_dir=run_dir, cfg=cfg, data=data, metrics=metrics, sess=sess, tower=tower,
            float_graph=graphs.load_graph_def(run_dir / "export" / "optimized_graph.pb"),
            classify=lambda pixels: sess.run(tower.probabilities, {tower.pixels: pixels}))


def _export_cfg(tiny, **keys):
    return OmegaConf.merge(tiny.cfg.export, {"tflite": True, **keys})


def _correct(run, data, split: str) -> int:
    examples = data.examples[split]
    probabilities = run(quantize.decode(data, examples, IMAGE_SIZE))
    return int(np.sum(np.argmax(probabilities, 1) == [e.label for e in examples]))


@pytest.mark.parametrize("mode, io", [("dynamic", "float"), ("float16", "float"), ("int8", "uint8")])
def test_each_mode_is_evaluated_next_to_the_float_model(tiny, tmp_path, mode, io):
    export_cfg = _export_cfg(tiny, tflite_quantization=mode, tflite_io=io, calibration_images=16)
    float_tflite = tiny.run_dir / "export" / "model.tflite"
    report, problem = quantize.write_and_check(tiny.classify, tiny.float_graph, tmp_path, export_cfg, IMAGE_SIZE,
                                               tiny.data, seed=0, float_tflite=float_tflite)
    path = tmp_path / f"model_{mode}.tflite"
    assert report["file"] == path.name and report["mode"] == mode
    assert report["size_bytes"] == path.stat().st_size < float_tflite.stat().st_size
    assert report["input"]["dtype"] == {"float": "float32", "uint8": "uint8"}[io]
    # The numbers reported, counted again here: the session's and the quantized file's correct predictions.
    quantized = lambda pixels: formats.run_tflite(path, pixels)[1]  # noqa: E731
    for split in ("val", "test"):
        entry = report["accuracy"][split]
        assert entry["images"] == len(tiny.data.examples[split])
        assert entry["float_correct"] == _correct(tiny.classify, tiny.data, split)
        assert entry["quantized_correct"] == _correct(quantized, tiny.data, split)
    assert tiny.metrics["val"]["accuracy"] == pytest.approx(report["accuracy"]["val"]["float"])  # the run's own
    both = report["accuracy"]["val+test"]
    assert report["drop_images"] == both["float_correct"] - both["quantized_correct"]
    assert report["passed"] == (problem is None) and report["checked_by"].startswith("accuracy")


def test_quantize_input_and_dequantize_output_use_the_scale_and_zero_point():
    detail = {"dtype": np.int8, "quantization": (0.5, -10)}
    quantized = formats.quantize_input(np.array([0.0, 1.2, -70.0, 1000.0]), detail)
    assert quantized.dtype == np.int8 and quantized.tolist() == [-10, -8, -128, 127]  # rounded, clipped
    np.testing.assert_array_equal(formats.dequantize_output(quantized, detail), [0.0, 1.0, -59.0, 68.5])
    floats = np.array([0.25], np.float32)
    assert formats.quantize_input(floats, {"dtype": np.float32, "quantization": (0.0, 0)}).tolist() == [0.25]


def test_run_tflite_quantizes_the_input_and_dequantizes_the_outputs(tiny, tmp_path):
    """An int8 model with int8 input and outputs (pixels 0..255 stored with zero point -128) gives float
    outputs close to the float model's: its logits within a tenth of how much they vary between images (the
    tiny model's probabilities are all near 1/5; pixels cast to int8 unquantized miss by far more)."""
    export_cfg = _export_cfg(tiny, tflite_quantization="int8", tflite_io="int8", calibration_images=32)
    path = quantize.write_quantized(tiny.float_graph, tmp_path, export_cfg, IMAGE_SIZE, tiny.data, seed=0)
    io = formats.tflite_io(path)
    assert io["input"]["dtype"] == "int8" and [out["dtype"] for out in io["outputs"]] == ["int8", "int8"]
    pixels = quantize.decode(tiny.data, tiny.data.examples["val"], IMAGE_SIZE)
    logits, probabilities = formats.run_tflite(path, pixels)
    assert logits.dtype == probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=0.03)  # dequantized softmax, steps of 1/256
    expected = tiny.sess.run(tiny.tower.logits, {tiny.tower.pixels: pixels})
    assert np.mean(np.abs(logits - expected)) < 0.1 * np.std(expected)
    # tools predict runs the int8 file too, giving what run_tflite gives on the same images.
    examples = tiny.data.examples["val"][:4]
    result = cli(["finetune.tools", "predict", str(path), *[e.reference for e in examples], "--json", "--top-k", "5",
                  "--labels", str(tiny.run_dir / "export" / "labels.txt")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for entry, row in zip(json.loads(result.stdout), probabilities):
        assert ({best["index"]: best["score"] for best in entry["top_k"]}
                == pytest.approx(dict(enumerate(row)), abs=1e-6))


def test_calibration_images_are_a_seeded_sample_of_the_training_split(tiny):
    train = tiny.data.examples["train"]
    first = quantize.calibration_examples(train, 10, seed=3)
    assert first == quantize.calibration_examples(train, 10, seed=3) != quantize.calibration_examples(train, 10, 4)
    assert len(first) == 10 and set(e.key for e in first) <= set(e.key for e in train)
    assert quantize.calibration_examples(train, 10_000, seed=3) == train  # fewer than asked: all of them


def _accuracy(images: int, float_correct: int, quantized_correct: int, float_classes: int = 5,
              quantized_classes: int = 5) -> dict:
    return {"val+test": {"images": images, "float_correct": float_correct, "quantized_correct": quantized_correct,
                         "float": float_correct / images, "quantized": quantized_correct / images,
                         "float_predicted_classes": float_classes, "quantized_predicted_classes": quantized_classes}}


def test_the_gate_counts_images_and_catches_a_constant_predictor():
    within = _accuracy(50, 48, 47)  # 0.02 of 50 images: 1 may be lost
    assert quantize.gate_report(within, 0.02) == {"drop": 0.02, "drop_images": 1, "max_accuracy_drop": 0.02,
                                                  "allowed_images": 1}
    assert quantize.accuracy_problem("int8", within, quantize.gate_report(within, 0.02)) is None
    beyond = _accuracy(50, 48, 46)
    problem = quantize.accuracy_problem("int8", beyond, quantize.gate_report(beyond, 0.02))
    assert "loses 2 image(s) (0.040)" in problem and "export.max_accuracy_drop=0.02 allows (1 image(s))" in problem
    constant = _accuracy(10, 2, 2, quantized_classes=1)  # no accuracy lost, yet one class for every image
    assert "a constant predictor" in quantize.accuracy_problem("int8", constant, quantize.gate_report(constant, 0.02))


def test_a_quantized_model_failing_the_gate_fails_the_export_and_keeps_the_float_one(tiny, tmp_path, monkeypatch):
    """Calibrated on black images, the int8 model's activation ranges are wrong for real ones. The float
    export is published, the ONNX model of the trained tiny model among it, checked like every other format."""
    constant = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    monkeypatch.setattr(quantize, "calibration_images", lambda *args: lambda: iter([constant] * 8))
    export_cfg = _export_cfg(tiny, tflite_quantization="int8", saved_model=False, onnx=True)
    export_dir = tmp_path / "export"
    with pytest.raises(FinetuneError, match="TFLite model") as info:
        exporter.export_model(tiny.sess, tiny.tower, tiny.data, tiny.cfg.backbone, export_dir, export_cfg)
    message = str(info.value)
    assert "\n" not in message and "a constant predictor" in message and str(export_dir) in message
    assert "do not deploy it" in message and "Try export.tflite_quantization=float16" in message
    meta = json.loads((export_dir / "model.json").read_text())
    assert sorted(meta["files"]) == ["frozen_graph", "labels", "onnx", "optimized_graph", "tflite", "val_predictions"]
    assert all((export_dir / name).is_file() for name in meta["files"].values())
    parity = meta["parity"]["max_abs_diff"]
    assert {"onnx_logits", "onnx_probabilities", "tflite_logits"} <= set(parity) and max(parity.values()) < 1e-4
    assert meta["onnx"]["opset"] == 15 and meta["onnx"]["input"] == "input:0"
    assert meta["tflite_quantization"]["passed"] is False and not (export_dir / "model_int8.tflite").exists()
    failed = tmp_path / "export-failed"
    assert (failed / "model_int8.tflite").is_file()
    assert json.loads((failed / "quantization.json").read_text())["accuracy"] == meta["tflite_quantization"]["accuracy"]
