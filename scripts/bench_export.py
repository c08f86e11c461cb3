"""Time one run's exported models (checkpoint graph, frozen, optimised, TFLite float and quantized, ONNX): a table.

    python scripts/bench_export.py --run-dir outputs/2024-01-01/12-00-00 [--repeats 20] [--cpu]

Reads ``RUN/export/{frozen_graph.pb, optimized_graph.pb, model.tflite, model_<mode>.tflite, model.onnx,
model.json}`` and the latest checkpoint under ``RUN/checkpoints/``. Each cell is the median wall time of
``--repeats`` runs of one batch, after ``--warmup`` runs, on random input (random encoded images for an
``image_bytes`` input). A model that is missing, or cannot be run, gets a row that says why instead of
numbers. A quantized model's size against the float TFLite model's and its accuracy drop (the accuracy
gate's numbers, from model.json) are printed under the table.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

Runner = Callable[[np.ndarray], object]


@dataclass
class Row:
    name: str
    source: str
    nodes: int | None = None
    size_mb: float | None = None
    ms: dict[int, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class Spec:
    input: str
    outputs: list[str]
    image_size: int
    # The checkpoint graph and TFLite always take float pixels (``input:0``); with an ``image_bytes``
    # export, their rows time the model without decoding, and say so.
    float_input: str = "input:0"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="pipeline run directory")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per cell (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for TF and TFLite")
    parser.add_argument("--cpu", action="store_true", help="hide GPUs from TensorFlow (TFLite is CPU anyway)")
    parser.add_argument("--input", help="input tensor (default: model.json, else input:0)")
    parser.add_argument("--outputs", nargs="+", help="output tensors (default: model.json, else probabilities:0)")
    parser.add_argument("--image-size", type=int, help="default: model.json, else the input placeholder")
    return parser.parse_args(argv)


def median_ms(run: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of ``run()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def load_spec(args: argparse.Namespace, export: Path) -> Spec:
    from finetune import graphs

    meta_path = export / "model.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    input_name = args.input or meta.get("input", "input:0")
    outputs = args.outputs or list(meta.get("outputs", {}).values()) or ["probabilities:0"]
    image_size = args.image_size or meta.get("image_size")
    frozen = export / "frozen_graph.pb"
    if not image_size and frozen.is_file():
        image_size = graphs.placeholder_shape(graphs.load_graph_def(frozen), input_name)[1:2][0]
    if not image_size:
        sys.exit("error: no image size in model.json or the input placeholder; pass --image-size")
    float_input = meta.get("tflite_input", {}).get("name", "input:0")
    return Spec(input_name, outputs, int(image_size), float_input)


def random_batch(batch_size: int, image_size: int, as_bytes: bool) -> np.ndarray:
    """Float RGB in [0, 255], or the same pixels JPEG-encoded for a string input."""
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype(np.float32)
    if not as_bytes:
        return pixels
    from PIL import Image

    encoded = np.empty(batch_size, dtype=object)
    for i, image in enumerate(pixels.astype(np.uint8)):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG")
        encoded[i] = buffer.getvalue()
    return encoded


def session_runner(graph, spec: Spec, threads: int, restore: Callable | None = None) -> tuple[Runner, bool]:
    """``run(batch)`` on a session held open for the whole benchmark; whether the input is a string."""
    from finetune import graphs
    from finetune.compat import tf, tf1

    input_tensor = graphs.get_tensor(graph, spec.input)
    fetches = [graphs.get_tensor(graph, name) for name in spec.outputs]
    config = tf1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads)
    sess = tf1.Session(graph=graph, config=config)
    if restore is not None:
        restore(sess)
    return (lambda batch: sess.run(fetches, {input_tensor: batch})), input_tensor.dtype == tf.string


def graph_row(name: str, path: Path, spec: Spec, args: argparse.Namespace) -> Row:
    from finetune import graphs

    row = Row(name, str(path.relative_to(args.run_dir)))
    if not path.is_file():
        row.note = "skipped: file not found"
        return row
    graph_def = graphs.load_graph_def(path)
    row.nodes, row.size_mb = len(graph_def.node), path.stat().st_size / 1e6
    run, as_bytes = session_runner(graphs.import_graph(graph_def), spec, args.threads)
    time_row(row, run, as_bytes, spec, args)
    return row


def checkpoint_row(spec: Spec, args: argparse.Namespace) -> Row:
    """The training graph as saved (``.meta``), variables restored from the latest checkpoint: no freezing."""
    from finetune.compat import tf, tf1
    from finetune.errors import FinetuneError

    row = Row("checkpoint graph", "checkpoints/")
    checkpoint = tf1.train.latest_checkpoint(str(args.run_dir / "checkpoints"))
    if checkpoint is None or not Path(f"{checkpoint}.meta").is_file():
        row.note = "skipped: no checkpoint with a .meta under checkpoints/"
        return row
    row.source = str(Path(checkpoint).relative_to(args.run_dir))
    row.size_mb = sum(p.stat().st_size for p in Path(checkpoint).parent.glob(Path(checkpoint).name + ".*")) / 1e6
    graph = tf.Graph()
    try:
        with graph.as_default():
            saver = tf1.train.import_meta_graph(f"{checkpoint}.meta", clear_devices=True)
        row.nodes = len(graph.as_graph_def().node)
        float_spec = Spec(spec.float_input, spec.outputs, spec.image_size, spec.float_input)
        run, as_bytes = session_runner(graph, float_spec, args.threads,
                                       restore=lambda sess: saver.restore(sess, checkpoint))
        row.note = _float_note(spec)
    except (FinetuneError, ValueError, KeyError, tf.errors.OpError) as exc:
        row.note = f"skipped: {str(exc).splitlines()[0]}"
        return row
    time_row(row, run, as_bytes, spec, args)
    return row


def tflite_row(path: Path, spec: Spec, args: argparse.Namespace, name: str = "TFLite") -> Row:
    """A float or quantized TFLite model; an integer input is fed as formats.run_tflite feeds it (quantized)."""
    from finetune.export import formats

    row = Row(name, str(path.relative_to(args.run_dir)))
    if not path.is_file():
        row.note = "skipped: file not found"
        return row
    row.size_mb = path.stat().st_size / 1e6
    interpreter = formats.tflite_interpreter(path, num_threads=args.threads)
    (detail,) = interpreter.get_input_details()
    outputs = [out["index"] for out in interpreter.get_output_details()]
    shape = None

    def run(batch: np.ndarray) -> list:
        nonlocal shape
        if shape != batch.shape:  # resizing is a one-off per batch size, done during warm-up
            interpreter.resize_tensor_input(detail["index"], list(batch.shape), strict=False)
            interpreter.allocate_tensors()
            shape = batch.shape
        interpreter.set_tensor(detail["index"], formats.quantize_input(batch, detail))
        interpreter.invoke()
        return [interpreter.get_tensor(index) for index in outputs]

    row.note = _float_note(spec)
    time_row(row, run, False, spec, args)
    return row


def onnx_row(path: Path, spec: Spec, args: argparse.Namespace) -> Row:
    """The ONNX model on onnxruntime's CPU provider (its default threads)."""
    row = Row("ONNX", str(path.relative_to(args.run_dir)))
    if not path.is_file():
        row.note = "skipped: file not found"
        return row
    from finetune.export import onnx

    row.size_mb = path.stat().st_size / 1e6
    row.note = _float_note(spec)
    time_row(row, lambda batch: onnx.run_onnx(path, batch), False, spec, args)
    return row


def quantization_lines(export: Path) -> list[str]:
    """What model.json says of the quantized TFLite model: its size against the float model's, and both
    accuracies on val+test with the drop (the accuracy gate's numbers)."""
    meta_path = export / "model.json"
    report = json.loads(meta_path.read_text()).get("tflite_quantization") if meta_path.is_file() else None
    if not report:
        return []
    both = report["accuracy"]["val+test"]
    ratio = f"{report['size_ratio']:.3f}x" if report["size_ratio"] is not None else "–"
    return [f"Quantized TFLite ({report['mode']}, {report['file']}): {report['size_bytes']} bytes, {ratio} the float "
            f"model.tflite's {report['float_size_bytes']}; accuracy on {both['images']} val+test images "
            f"{both['quantized']:.4f} against the float model's {both['float']:.4f}, a drop of {report['drop']:.4f} "
            f"({report['drop_images']} image(s); export.max_accuracy_drop={report['max_accuracy_drop']} allows "
            f"{report['allowed_images']}): {'passed' if report['passed'] else 'FAILED'}."]


def _float_note(spec: Spec) -> str:
    return "" if spec.input == spec.float_input else f"takes float pixels ({spec.float_input}): no decoding timed"


def time_row(row: Row, run: Runner, as_bytes: bool, spec: Spec, args: argparse.Namespace) -> None:
    for batch_size in args.batch_sizes:
        batch = random_batch(batch_size, spec.image_size, as_bytes)
        row.ms[batch_size] = median_ms(lambda: run(batch), args.repeats, max(args.warmup, 1))


def markdown_table(rows: list[Row], args: argparse.Namespace) -> str:
    sizes = args.batch_sizes
    head = ["model", "file", "nodes", "MB", *[f"batch {b} (ms)" for b in sizes], f"img/s @ {sizes[-1]}", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.name, f"`{row.source}`", _fmt(row.nodes), _fmt(row.size_mb, ".2f")]
        cells += [_fmt(row.ms.get(b), ".2f") for b in sizes]
        last = row.ms.get(sizes[-1])
        cells += [_fmt(1000.0 * sizes[-1] / last if last else None, ".0f"), row.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float | int | None, spec: str = "") -> str:
    return "–" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # before TensorFlow is imported
    from finetune.compat import tf
    from finetune.errors import FinetuneError

    export = args.run_dir / "export"
    try:
        spec = load_spec(args, export)
        rows = [
            checkpoint_row(spec, args),
            graph_row("frozen", export / "frozen_graph.pb", spec, args),
            graph_row("optimised", export / "optimized_graph.pb", spec, args),
            tflite_row(export / "model.tflite", spec, args),
            *(tflite_row(path, spec, args, f"TFLite {path.stem.split('_', 1)[1]}")
              for path in sorted(export.glob("model_*.tflite"))),
            *([onnx_row(export / "model.onnx", spec, args)] if (export / "model.onnx").is_file() else []),
        ]
    except FinetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    print(f"Run {args.run_dir}: input {spec.input} ({spec.image_size}x{spec.image_size}), outputs "
          f"{', '.join(spec.outputs)}; TF on {device}, {args.threads} threads; median of {args.repeats} runs after "
          f"{args.warmup} warm-up.\n")
    print(markdown_table(rows, args))
    for line in quantization_lines(export):
        print(f"\n{line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
