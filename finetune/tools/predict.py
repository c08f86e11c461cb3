"""``predict``: classify images with any exported model and print (or write) the top-k classes of each.

MODEL is any format the export writes (frozen or optimised ``.pb``, a SavedModel folder, ``.tflite``, ``.onnx``)
or a run directory (:mod:`finetune.export.runner`). IMAGE arguments are image files, folders (searched
recursively) and CSV files listing image paths (first column; relative to the CSV's folder). Every image's
header is checked first, as training checks its data; a bad image is skipped and listed, never fatal.

With a ``model.json`` beside MODEL (written by the pipeline's export), everything is read from it::

    {"input": "input:0", "input_type": "float",            # or "image_bytes"
     "outputs": {"probabilities": "probabilities:0", "logits": "logits:0"},
     "image_size": 224, "labels": "labels.txt"}             # labels: relative to model.json

For any other classifier ``.pb`` name the tensors with ``--input`` and ``--output``; the image size
is read from the input placeholder's shape (or ``--image-size``).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from finetune.errors import FinetuneError
from finetune.pure_ops import ALLOW_UNSAFE_OPS_HELP
from finetune.tools import positive_int

if TYPE_CHECKING:
    from finetune.export.runner import Classified, Model

log = logging.getLogger(__name__)

HELP = "classify images (files, folders, CSV lists) with any exported model or run and print the top-k classes"
DESCRIPTION = f"""{HELP}.

MODEL: a frozen or optimised graph (.pb), a SavedModel folder, a .tflite or .onnx file (the onnx extra), or a
run directory (its exported optimised graph). IMAGE: image files, folders (every .jpg, .jpeg, .png, .gif, .bmp
below them) and .csv files listing image paths in their first column (relative to the CSV's folder).

With a model.json beside MODEL (as the pipeline exports it) its input, outputs, image size and labels are used;
a SavedModel, TFLite or ONNX file holds no class names, so they come from there or --labels. For a foreign .pb
give --input and --output; a string input is fed the encoded files (image_bytes), a float input the pixels:
decoded and bilinearly resized as in training, float32 RGB in [0, 255]. Normalise inside the graph: nothing
else is done to the pixels.

Scores are printed as the output gives them. An output from the model.json key "probabilities", a Softmax
node or a signature or TFLite output named probabilities is labelled "probabilities"; anything else (e.g.
logits) is labelled "scores" and is NOT passed through a softmax.

An image that cannot be classified (not an image, cut short, over --max-pixels, unreadable) is skipped and
listed on stderr and in the --json / --csv output; the exit status is 0 unless no image could be classified."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
SHOWN = 20  # skipped images listed on stderr
PROGRESS_MIN = 256  # images from which a progress bar is shown (on a terminal)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("predict", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="a .pb, SavedModel folder, .tflite, .onnx, or a run directory")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files, folders, or .csv lists of paths")
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes to print per image (default 5)")
    parser.add_argument("--labels", metavar="FILE",
                        help="one class name per line, in output order ('N:name' lines also work)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    parser.add_argument("--csv", metavar="FILE", help="also write one row per image to FILE (CSV)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per run of the model")
    parser.add_argument("--input", metavar="NAME", help="input tensor of a .pb (required without model.json)")
    parser.add_argument("--output", metavar="NAME", help="output tensor of a .pb (required without model.json)")
    parser.add_argument("--image-size", type=int, help="input height = width, if the model does not say")
    parser.add_argument("--max-pixels", type=positive_int, metavar="N",
                        help="skip images over N pixels (width x height), read from their headers before decoding "
                             "(default: training's default data.max_pixels)")
    parser.add_argument("--allow-unsafe-ops", action="store_true", help=ALLOW_UNSAFE_OPS_HELP)
    return parser


def run(args: argparse.Namespace) -> int:
    from finetune.config import DataConfig
    from finetune.export.runner import Options, classify, image_progress, open_model

    options = Options(args.labels, args.input, args.output, args.image_size, args.allow_unsafe_ops)
    with open_model(args.model, options) as model:  # first: a model refused (the op gate) is told whatever the images
        paths = image_paths(args.images)
        problems = header_problems(paths, args.max_pixels or DataConfig.max_pixels)
        if len(problems) == len(paths):
            raise FinetuneError(no_image_message(problems))
        images = ((path, problems.get(path) or _read(path)) for path in paths)
        shown = image_progress(images, len(paths)) if len(paths) >= PROGRESS_MIN else images
        outcomes = classify(model, shown, args.batch_size)
        results = [result_of(outcome, model, args.top_k) for outcome in outcomes]
    skipped = [result for result in results if "skipped" in result]
    if len(skipped) == len(results):
        raise FinetuneError(no_image_message({result["image"]: result["skipped"] for result in skipped}))
    outputs = next(len(result["scores"]) for result in results if "scores" in result)
    if model.labels and len(model.labels) != outputs:
        print(f"note: {len(model.labels)} labels for {outputs} outputs; unnamed classes print as their index.",
              file=sys.stderr)
    if args.csv:
        write_csv(Path(args.csv), results, model.kind, args.top_k)
    for result in results:
        result.pop("scores", None)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results, model.kind, f"{model.output} of {model.path}")
    if skipped:
        print(skipped_message(skipped, len(results)), file=sys.stderr)
    return 0


def image_paths(arguments: list[str]) -> list[str]:
    """The image files the arguments name: files as given, every image file below a folder (sorted), and the
    paths a CSV lists. A path that does not exist is kept: the header check lists it as unreadable."""
    paths: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts) and p.is_file())
            if not found:
                log.warning("The folder %s holds no image file (%s).", path, ", ".join(IMAGE_SUFFIXES))
            paths += found
        elif path.suffix.lower() == ".csv" and path.is_file():
            paths += csv_paths(path)
        else:
            paths.append(argument)
    if not paths:
        raise FinetuneError(f"No image found in {', '.join(arguments)}: give image files "
                            f"({', '.join(IMAGE_SUFFIXES)}), folders holding them, or a CSV listing their paths.")
    return paths


def csv_paths(path: Path) -> list[str]:
    """The image paths in the first column of a CSV, relative to its folder; a first row that names no image
    (a header such as ``path,label``) is left out."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise FinetuneError(f"Cannot read the CSV {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise FinetuneError(f"The CSV {path} is not UTF-8 text: save it as UTF-8, one image path per row.") from None
    rows = [fields[0].strip() for fields in csv.reader(io.StringIO(text)) if fields and fields[0].strip()]
    if rows and Path(rows[0]).suffix.lower() not in IMAGE_SUFFIXES and not (path.parent / rows[0]).is_file():
        rows = rows[1:]
    return [str(path.parent / row) for row in rows]


def header_problems(paths: list[str], max_pixels: int) -> dict[str, str]:
    """Path -> why it cannot be classified, from its header, as training checks its data (a 40000x40000 PNG
    would fill memory before TensorFlow's decoder refused it)."""
    from finetune.data.bad_files import file_problem

    found = {path: file_problem(Path(path), max_pixels) for path in paths}
    return {path: problem for path, problem in found.items() if problem}


def _read(path: str) -> bytes | str:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"


def result_of(outcome: "Classified", model: "Model", k: int) -> dict:
    """Per image: its path and the k best classes with label and score, or why it was skipped."""
    if outcome.problem is not None:
        return {"image": outcome.name, "skipped": outcome.problem, "top_k": []}
    labels = model.labels or []
    row = outcome.scores
    best = np.argsort(-row, kind="stable")[:k]
    return {"image": outcome.name, "output": model.output, "kind": model.kind, "scores": row,
            "top_k": [{"index": int(i), "label": labels[i] if i < len(labels) else str(i), "score": float(row[i])}
                      for i in best]}


def print_table(results: list[dict], kind: str, output: str) -> None:
    """One row per classified image: the path, then each of the top k as ``label score``."""
    rows = [[result["image"], *(f"{e['label']} {e['score']:.4f}" for e in result["top_k"])]
            for result in results if "skipped" not in result]
    k = max(len(row) for row in rows) - 1
    header = ["image", *(f"top-{i + 1}" for i in range(k))]
    widths = [max(len(row[column]) for row in [header, *rows] if column < len(row)) for column in range(k + 1)]
    print(f"top {k} {kind} from {output}")
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def write_csv(path: Path, results: list[dict], kind: str, k: int) -> None:
    """One row per image: image, label_1, probability_1 (score_1 for raw scores), ..., skipped (its reason)."""
    from finetune.files import write_text_atomically

    value = "probability" if kind == "probabilities" else "score"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", *(f"{name}_{i + 1}" for i in range(k) for name in ("label", value)), "skipped"])
    for result in results:
        cells = [cell for entry in result["top_k"] for cell in (entry["label"], f"{entry['score']:.6g}")]
        writer.writerow([result["image"], *cells, *[""] * (2 * k - len(cells)), result.get("skipped", "")])
    try:
        write_text_atomically(path, buffer.getvalue())
    except OSError as exc:
        raise FinetuneError(f"Cannot write {path}: {exc.strerror or exc}. Choose another --csv file.") from None


def skipped_message(skipped: list[dict], total: int) -> str:
    from finetune.data.bad_files import shown_name

    lines = [f"  {shown_name(result['image'])}: {result['skipped']}" for result in skipped[:SHOWN]]
    more = [f"  ... and {len(skipped) - SHOWN} more (--json or --csv lists them all)"] if len(skipped) > SHOWN else []
    return "\n".join([f"Skipped {len(skipped)} of the {total} image(s), which cannot be classified:", *lines, *more])


def no_image_message(problems: dict[str, str]) -> str:
    from finetune.data.bad_files import shown_name

    lines = [f"  {shown_name(path)}: {problem}" for path, problem in list(problems.items())[:SHOWN]]
    more = [f"  ... and {len(problems) - SHOWN} more"] if len(problems) > SHOWN else []
    return "\n".join([f"None of the {len(problems)} image(s) can be classified:", *lines, *more,
                      "Replace them (re-save them as JPEG or PNG), or raise --max-pixels for large images."])
