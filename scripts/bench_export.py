"""Every export format of one run side by side: file size, latency at batch 1 and 32, images/s, test accuracy.

    python scripts/bench_export.py [--run-dir RUN] [--repeats 20] [--cpu] [--write README.md] [--write docs/export.md]

Without ``--run-dir`` it trains the demo run first (``python -m finetune experiment=mobilenet_head
export.tflite=true export.onnx=true``, in a temporary folder). From the run it reads ``export/{frozen_graph.pb,
optimized_graph.pb, saved_model/, model.tflite, model.onnx, model.json}``, and it writes every quantized TFLite
model afresh from the run's checkpoint (:func:`finetune.export.quantize.write_quantized`, the exporter's own
function, on the export tower rebuilt by :mod:`finetune.export.run_freeze`; int8 calibrated on the run's training
split, per channel and per tensor) into a temporary folder. The "session" row is that rebuilt tower itself: the
float reference.

Each latency is the median wall time of ``--repeats`` runs of one batch, after ``--warmup`` runs, on random input
(random encoded images for an ``image_bytes`` input). Each accuracy is the top-1 accuracy on the test split of
the run's own data, every format opened by :func:`finetune.export.runner.open_model` and scored as ``tools
evaluate`` scores it. A model that is missing, or cannot be run, gets a row that says why instead of numbers.
``--write FILE`` puts the table between the bench-export markers of FILE (README.md, docs/export.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

Runner = Callable[[np.ndarray], object]
ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- bench-export:begin (python scripts/bench_export.py --write README.md --write docs/export.md) -->"
END = "<!-- bench-export:end -->"
DEMO_RUN = ["experiment=mobilenet_head", "export.tflite=true", "export.onnx=true"]
# The quantized models written afresh: (row name, export.tflite_quantization, export.tflite_per_channel).
QUANTIZED = [("TFLite dynamic", "dynamic", True), ("TFLite float16", "float16", True),
             ("TFLite int8", "int8", True), ("TFLite int8, per tensor", "int8", False)]
FLOAT_TFLITE = "TFLite float"


@dataclass
class Row:
    name: str
    source: str
    nodes: int | None = None
    size_bytes: int | None = None
    ms: dict[int, float] = field(default_factory=dict)
    accuracy: float | None = None
    note: str = ""


@dataclass
class Spec:
    input: str
    outputs: list[str]
    image_size: int
    # The session and TFLite always take float pixels (``input:0``); with an ``image_bytes`` export, their rows
    # time the model without decoding, and say so.
    float_input: str = "input:0"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="pipeline run directory (default: train the demo run first)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per cell (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for TF and TFLite")
    parser.add_argument("--cpu", action="store_true", help="hide GPUs from TensorFlow (TFLite is CPU anyway)")
    parser.add_argument("--write", type=Path, action="append", default=[],
                        help="put the table between the bench-export markers of this file (repeatable)")
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


def train_demo(folder: Path) -> Path:
    """Train the demo run into ``folder/run`` (a subprocess, as a user runs it) and return the run directory."""
    run_dir = folder / "run"
    command = [sys.executable, "-m", "finetune", *DEMO_RUN, f"hydra.run.dir={run_dir}"]
    print(f"Training the demo run: {' '.join(command[1:])}", file=sys.stderr)
    subprocess.run(command, check=True, cwd=ROOT, stdout=sys.stderr)  # stdout: the table alone
    return run_dir


def load_spec(export: Path) -> Spec:
    meta = json.loads((export / "model.json").read_text())
    outputs = list(meta.get("outputs", {}).values()) or ["probabilities:0"]
    float_input = meta.get("tflite_input", {}).get("name", "input:0")
    return Spec(meta.get("input", "input:0"), outputs, int(meta["image_size"]), float_input)


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

    row = Row(name, _source(path, args))
    if not path.is_file():
        row.note = "skipped: file not found"
        return row
    graph_def = graphs.load_graph_def(path)
    row.nodes, row.size_bytes = len(graph_def.node), path.stat().st_size
    run, as_bytes = session_runner(graphs.import_graph(graph_def), spec, args.threads)
    time_row(row, run, as_bytes, spec, args)
    return row


def tflite_row(path: Path, spec: Spec, args: argparse.Namespace, name: str = "TFLite") -> Row:
    """A float or quantized TFLite model; an integer input is fed as formats.run_tflite feeds it (quantized)."""
    from finetune.export import formats

    row = Row(name, _source(path, args))
    if not path.is_file():
        row.note = "skipped: file not found"
        return row
    row.size_bytes = path.stat().st_size
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
    row = Row("ONNX", _source(path, args))
    if not path.is_file():
        row.note = "skipped: file not found"
        return row
    from finetune.export import onnx

    row.size_bytes = path.stat().st_size
    row.note = _float_note(spec)
    time_row(row, lambda batch: onnx.run_onnx(path, batch), False, spec, args)
    return row


def saved_model_row(folder: Path, spec: Spec, args: argparse.Namespace) -> Row:
    """The SavedModel as ``tools evaluate`` runs it (:func:`finetune.export.runner.open_model`: its serving
    signature, frozen); its size is the folder's."""
    from finetune.export.runner import open_model

    row = Row("SavedModel", _source(folder, args))
    if not (folder / "saved_model.pb").is_file():
        row.note = "skipped: no saved_model.pb"
        return row
    row.size_bytes = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    with open_model(folder) as model:
        time_row(row, model.run, model.input_type == "image_bytes", spec, args)
    return row


def _float_note(spec: Spec) -> str:
    return "" if spec.input == spec.float_input else f"takes float pixels ({spec.float_input}): no decoding timed"


def time_row(row: Row, run: Runner, as_bytes: bool, spec: Spec, args: argparse.Namespace) -> None:
    for batch_size in args.batch_sizes:
        batch = random_batch(batch_size, spec.image_size, as_bytes)
        row.ms[batch_size] = median_ms(lambda: run(batch), args.repeats, max(args.warmup, 1))


def write_quantized_models(run_dir: Path, folder: Path, data) -> list[tuple[str, Path]]:
    """Every quantized TFLite model of :data:`QUANTIZED`, written into ``folder`` by the exporter's
    :func:`~finetune.export.quantize.write_quantized` from the run's float export tower (``input:0``), with
    the run's export config and seed (train.seed draws the int8 calibration images, as in the run's export);
    returns the (row name, path) pairs."""
    from omegaconf import OmegaConf

    from finetune.export.exporter import OUTPUTS
    from finetune.export.quantize import write_quantized
    from finetune.export.run_freeze import exported_checkpoint, run_config, run_session
    from finetune.freezing import freeze_session

    cfg = run_config(run_dir)
    with run_session(run_dir, exported_checkpoint(run_dir)) as (sess, _):
        float_graph = freeze_session(sess, list(OUTPUTS))
    export_cfg = OmegaConf.to_object(cfg.export)
    written = []
    for name, mode, per_channel in QUANTIZED:
        mode_cfg = dataclasses.replace(export_cfg, tflite_quantization=mode, tflite_per_channel=per_channel)
        subfolder = folder / f"{mode}{'' if per_channel else '_per_tensor'}"
        subfolder.mkdir()
        written.append((name, write_quantized(float_graph, subfolder, mode_cfg, cfg.backbone.image_size, data,
                                              cfg.train.seed)))
    return written


def session_model(sess, tower, image_size: int):
    """The rebuilt export tower in ``sess`` as a :class:`finetune.export.runner.Model` (float pixels in)."""
    from finetune.export.runner import Model

    def run(batch: np.ndarray):
        probabilities, logits = sess.run([tower.probabilities, tower.logits], {tower.pixels: batch})
        return probabilities, logits

    return Model(Path("session"), "session", "float", image_size, None, "probabilities", "probabilities", run)


def test_accuracy(model, labels: list[str], data, test: list) -> float:
    """Top-1 accuracy of ``model`` on the ``test`` examples, scored as ``tools evaluate`` scores a model."""
    from finetune.tools.evaluate import class_map, evaluate_split

    to_model = class_map(model, labels, data, {"test": test})
    result, skipped = evaluate_split(model, data, test, to_model, len(labels), 1, 32)
    if skipped:
        print(f"warning: {len(skipped)} test image(s) could not be decoded by {model.path}", file=sys.stderr)
    return result.accuracy


def score_file(row: Row, path: Path, image_size: int, labels: list[str], data, test: list) -> None:
    from finetune.errors import FinetuneError
    from finetune.export.runner import Options, open_model

    if row.note.startswith("skipped"):
        return
    try:
        with open_model(path, Options(image_size=image_size)) as model:
            row.accuracy = test_accuracy(model, labels, data, test)
    except FinetuneError as error:
        row.note = (row.note + "; " if row.note else "") + f"not scored: {str(error).splitlines()[0]}"


def bench(run_dir: Path, scratch: Path, args: argparse.Namespace) -> tuple[list[Row], int]:
    """Every row of the table, in order: the session, the float exports, the quantized TFLite models, ONNX; and
    the test images they were scored on."""
    from finetune.export.run_freeze import class_names, exported_checkpoint, run_session
    from finetune.tools.evaluate import load_data

    export = run_dir / "export"
    spec = load_spec(export)
    labels = class_names(run_dir)
    data, sections, _ = load_data(str(run_dir), [], ["test"])
    test = sections["test"]
    quantized = write_quantized_models(run_dir, scratch, data)
    rows = []
    with run_session(run_dir, exported_checkpoint(run_dir)) as (sess, tower):
        model = session_model(sess, tower, spec.image_size)
        row = Row("session (float reference)", "checkpoint, export tower rebuilt", note=_float_note(spec))
        time_row(row, lambda batch: model.run(batch), False, spec, args)
        row.accuracy = test_accuracy(model, labels, data, test)
        rows.append(row)
    files = [(graph_row("frozen", export / "frozen_graph.pb", spec, args), export / "frozen_graph.pb"),
             (graph_row("optimised", export / "optimized_graph.pb", spec, args), export / "optimized_graph.pb"),
             (saved_model_row(export / "saved_model", spec, args), export / "saved_model"),
             (tflite_row(export / "model.tflite", spec, args, FLOAT_TFLITE), export / "model.tflite")]
    for name, path in quantized:
        row = tflite_row(path, spec, args, name)
        files.append((row, path))
    files.append((onnx_row(export / "model.onnx", spec, args), export / "model.onnx"))
    for row, path in files:
        score_file(row, path, spec.image_size, labels, data, test)
        rows.append(row)
    return rows, len(test)


def markdown_table(rows: list[Row], args: argparse.Namespace, test_images: int | None = None) -> str:
    """One row per format: size (bytes, x the float TFLite file), latency per batch size, images/s at the
    largest, test accuracy and its drop against the first row (the session)."""
    sizes = args.batch_sizes
    float_tflite = next((row.size_bytes for row in rows if row.name == FLOAT_TFLITE), None)
    reference = rows[0].accuracy if rows else None
    head = ["format", "bytes", "x float TFLite", *[f"batch {b} (ms)" for b in sizes], f"img/s @ {sizes[-1]}",
            "test accuracy" + (f" ({test_images} images)" if test_images else ""), "drop", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ratio = row.size_bytes / float_tflite if row.size_bytes and float_tflite else None
        last = row.ms.get(sizes[-1])
        drop = reference - row.accuracy if reference is not None and row.accuracy is not None else None
        cells = [row.name, _fmt(row.size_bytes, ","), _fmt(ratio, ".2f"), *[_fmt(row.ms.get(b), ".2f") for b in sizes],
                 _fmt(1000.0 * sizes[-1] / last if last else None, ".0f"), _fmt(row.accuracy, ".4f"),
                 _fmt(drop, "+.4f"), row.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _source(path: Path, args: argparse.Namespace) -> str:
    """``path`` inside the run directory, or its name (a model written here)."""
    return str(path.relative_to(args.run_dir)) if path.is_relative_to(args.run_dir) else path.name


def _fmt(value: float | int | None, spec: str = "") -> str:
    return "–" if value is None else format(value, spec)


def int8_sentence(rows: list[Row], args: argparse.Namespace) -> str:
    """Whether int8 is faster than the float TFLite model here, with the numbers."""
    by_name = {row.name: row for row in rows}
    float_row, int8_row = by_name.get(FLOAT_TFLITE), by_name.get("TFLite int8")
    if not float_row or not int8_row or not float_row.ms or not int8_row.ms:
        return "int8 against float TFLite: not measured (a model is missing)."
    parts = [f"batch {b}: {int8_row.ms[b]:.2f} ms against {float_row.ms[b]:.2f} ms "
             f"({float_row.ms[b] / int8_row.ms[b]:.2f}x)" for b in args.batch_sizes]
    faster = all(int8_row.ms[b] < float_row.ms[b] for b in args.batch_sizes)
    slower = all(int8_row.ms[b] > float_row.ms[b] for b in args.batch_sizes)
    verdict = "faster" if faster else "slower" if slower else "neither faster nor slower throughout"
    return f"Here the int8 TFLite model is {verdict} than the float one: {'; '.join(parts)} (float ms / int8 ms)."


def targets_sentence(rows: list[Row], max_drop: float) -> str:
    """Each int8 row against issue 20's targets: accuracy within ``export.max_accuracy_drop`` of the float
    reference, and a file at most 0.3x the float TFLite model's."""
    by_name = {row.name: row for row in rows}
    float_size, reference = by_name.get(FLOAT_TFLITE, Row("", "")).size_bytes, rows[0].accuracy if rows else None
    parts = []
    for row in rows:
        if not row.name.startswith("TFLite int8") or row.accuracy is None or not float_size or reference is None:
            continue
        drop, ratio = reference - row.accuracy, row.size_bytes / float_size
        parts.append(f"{row.name}: drop {drop:.4f} ({'within' if drop <= max_drop else 'beyond'} "
                     f"export.max_accuracy_drop={max_drop}), size {ratio:.2f}x "
                     f"({'at most' if ratio <= 0.3 else 'over'} "
                     "0.3x)")
    return "Targets: " + "; ".join(parts) + "." if parts else ""


def report(rows: list[Row], args: argparse.Namespace, run_label: str, test_images: int, max_drop: float) -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    head = (f"{run_label}; {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), load average "
            f"{load} at the end; {args.threads} threads for TF and TFLite (onnxruntime: its default); median of "
            f"{args.repeats} runs after {args.warmup} warm-up, all formats in one run side by side (latencies "
            "differ between machines and with load: compare rows, not machines).")
    return (f"{head}\n\n{markdown_table(rows, args, test_images)}\n\n{int8_sentence(rows, args)} "
            f"{targets_sentence(rows, max_drop)}").rstrip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # before TensorFlow is imported
    import finetune.compat  # noqa: F401  (first, as in every entry point)
    from finetune.errors import FinetuneError
    from finetune.files import write_between_markers
    from finetune.export.run_freeze import run_config

    with tempfile.TemporaryDirectory(prefix="bench_export_") as scratch:
        try:
            label = (f"The demo run (`python -m finetune {' '.join(DEMO_RUN)}`)" if args.run_dir is None
                     else f"Run {args.run_dir}")
            run_dir = args.run_dir = args.run_dir or train_demo(Path(scratch))
            models = Path(scratch) / "quantized"
            models.mkdir()
            rows, test_images = bench(run_dir, models, args)
            max_drop = run_config(run_dir).export.max_accuracy_drop
        except (FinetuneError, subprocess.CalledProcessError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    text = report(rows, args, label, test_images, max_drop)
    print(text)
    for path in args.write:
        write_between_markers(path, BEGIN, END, text + "\n")
        print(f"Wrote the table into {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
