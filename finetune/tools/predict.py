"""``predict``: classify image files with a frozen graph and print the top-k classes.

With a ``model.json`` beside MODEL (written by the pipeline's export), everything is read from it::

    {"input": "input:0", "input_type": "float",            # or "image_bytes"
     "outputs": {"probabilities": "probabilities:0", "logits": "logits:0"},
     "image_size": 224, "labels": "labels.txt"}             # labels: relative to model.json

For any other classifier ``.pb`` name the tensors with ``--input`` and ``--output``; the image size
is read from the input placeholder's shape (or ``--image-size``).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.errors import FinetuneError
from finetune.pure_ops import ALLOW_UNSAFE_OPS_HELP
from finetune.tools import positive_int

HELP = "classify images with a frozen graph (.pb) and print the top-k classes"
DESCRIPTION = f"""{HELP}.

With a model.json beside MODEL (as the pipeline exports it) its input, outputs, image size and labels
are used. For a foreign .pb give --input and --output; a string input is fed the encoded files
(image_bytes), a float input the pixels: decoded and bilinearly resized as in training, float32 RGB in
[0, 255]. Normalise inside the graph: nothing else is done to the pixels.

Scores are printed as the output gives them. An output from the model.json key "probabilities" or
from a Softmax node is labelled "probabilities"; anything else (e.g. logits) is labelled "scores" and
is NOT passed through a softmax."""

BATCH = 32


@dataclass
class ModelSpec:
    input: str
    input_type: str  # "float" or "image_bytes"
    output: str
    kind: str  # "probabilities" or "scores"
    image_size: int | None
    labels: list[str] | None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("predict", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="frozen graph (.pb); a model.json beside it is read")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="JPEG/PNG/GIF/BMP files")
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes to print per image (default 5)")
    parser.add_argument("--labels", metavar="FILE",
                        help="one class name per line, in output order ('N:name' lines also work)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    parser.add_argument("--input", metavar="NAME", help="input tensor (required without model.json)")
    parser.add_argument("--output", metavar="NAME", help="output tensor (required without model.json)")
    parser.add_argument("--image-size", type=int, help="input height = width, if the placeholder does not say")
    parser.add_argument("--max-pixels", type=positive_int, metavar="N",
                        help="refuse images over N pixels (width x height), read from their headers before decoding "
                             "(default: training's default data.max_pixels)")
    parser.add_argument("--allow-unsafe-ops", action="store_true", help=ALLOW_UNSAFE_OPS_HELP)
    return parser


def run(args: argparse.Namespace) -> int:
    from finetune import graphs
    from finetune.compat import tf1
    from finetune.config import DataConfig
    from finetune.data import images

    graph_def = graphs.load_graph_def(args.model, allow_unsafe=args.allow_unsafe_ops)
    spec = model_spec(args, graph_def)
    check_images(args.images, args.max_pixels or DataConfig.max_pixels)
    graph = graphs.import_graph(graph_def)
    input_tensor, output_tensor = graphs.get_tensor(graph, spec.input), graphs.get_tensor(graph, spec.output)
    scores = []
    with tf1.Session(graph=graph) as sess:
        for start in range(0, len(args.images), BATCH):
            paths = args.images[start:start + BATCH]
            if spec.input_type == "image_bytes":
                batch = images.read_image_bytes(paths)
            else:
                batch = images.load_images(paths, spec.image_size)
            out = sess.run(output_tensor, {input_tensor: batch})
            scores.append(np.reshape(out, (len(paths), -1)))
    results = top_k(args.images, np.concatenate(scores), spec, args.top_k)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_results(results, spec)
    return 0


def check_images(paths: list[str], max_pixels: int) -> None:
    """FinetuneError listing every image that cannot be read, from its header, as training checks its data (a
    40000x40000 PNG would fill memory before TensorFlow's decoder refused it, and a bad file would stop the
    batch with a message about the first one only)."""
    from finetune.data.bad_files import file_problem, shown_name

    bad = [(path, file_problem(Path(path), max_pixels)) for path in paths]
    bad = [(path, problem) for path, problem in bad if problem]
    if bad:
        raise FinetuneError(
            f"{len(bad)} of the {len(paths)} image(s) cannot be classified:\n"
            + "\n".join(f"  {shown_name(path)}: {problem}" for path, problem in bad)
            + "\nLeave them out of the command, replace them (re-save them as JPEG or PNG), or raise --max-pixels "
            "for large images.")


def model_spec(args: argparse.Namespace, graph_def: object) -> ModelSpec:
    """What to feed and fetch: model.json beside MODEL, overridden by the flags."""
    from finetune import graphs
    from finetune.compat import tf

    meta_path = Path(args.model).with_name("model.json")
    meta = _read_json(meta_path) if meta_path.is_file() else {}
    outputs = meta.get("outputs", {})
    key = next((k for k in ("probabilities", "logits") if k in outputs), next(iter(outputs), None))
    input_name = args.input or meta.get("input")
    output_name = args.output or (outputs[key] if key else None)
    if not input_name or not output_name:
        raise FinetuneError(
            f"No model.json beside {args.model} names the {'input' if not input_name else 'output'} tensor: "
            "pass --input NAME and --output NAME (e.g. --input input:0 --output probabilities:0)."
        )
    graphs.check_nodes_exist(graph_def, [input_name], "input")
    graphs.check_nodes_exist(graph_def, [output_name], "output")
    nodes = {node.name: node for node in graph_def.node}
    input_node = nodes.get(graphs.node_name(input_name))
    is_string = input_node is not None and input_node.attr["dtype"].type == tf.string.as_datatype_enum
    inferred_type = "image_bytes" if is_string else "float"
    input_type = meta.get("input_type", inferred_type) if not args.input else inferred_type
    output_node = nodes.get(graphs.node_name(output_name))
    from_key = not args.output and key == "probabilities"
    kind = "probabilities" if from_key or (output_node is not None and output_node.op == "Softmax") else "scores"
    image_size = args.image_size or meta.get("image_size")
    if input_type == "float" and not image_size:
        shape = graphs.placeholder_shape(graph_def, input_name)
        if len(shape) != 4 or not shape[1] or shape[1] != shape[2]:
            raise FinetuneError(
                f"Cannot tell the image size from input {input_name!r} (shape {shape}); pass --image-size N."
            )
        image_size = shape[1]
    labels_file = args.labels or (str(meta_path.parent / meta["labels"]) if meta.get("labels") else None)
    labels = read_labels(labels_file) if labels_file else None
    return ModelSpec(input_name, input_type, output_name, kind, image_size, labels)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"Cannot read {path}: {exc}") from None


def read_labels(path: str) -> list[str]:
    """Class names in output order: one per line, or ``N:name`` lines (TF-Slim's labels.txt)."""
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is no part of the first class name
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise FinetuneError(f"Cannot read the labels file {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise FinetuneError(f"The labels file {path} is not UTF-8 text: save it as UTF-8, one class name per line "
                            "(or N:name lines).") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    numbered = [re.match(r"^(\d+):(.*)$", line) for line in lines]
    if lines and all(numbered):
        by_index = {int(m.group(1)): m.group(2).strip() for m in numbered}
        return [by_index.get(i, str(i)) for i in range(max(by_index) + 1)]
    return lines


def top_k(paths: list[str], scores: np.ndarray, spec: ModelSpec, k: int) -> list[dict]:
    """Per image: its path, the output read, and the k best classes with label and score."""
    labels = spec.labels or []
    if labels and len(labels) != scores.shape[1]:
        print(f"note: {len(labels)} labels for {scores.shape[1]} outputs; unnamed classes print as their index.",
              file=sys.stderr)
    results = []
    for path, row in zip(paths, scores):
        best = np.argsort(-row, kind="stable")[:max(k, 1)]
        results.append({
            "image": path, "output": spec.output, "kind": spec.kind,
            "top_k": [{"index": int(i), "label": labels[i] if i < len(labels) else str(i), "score": float(row[i])}
                      for i in best],
        })
    return results


def print_results(results: list[dict], spec: ModelSpec) -> None:
    for result in results:
        print(f"{result['image']}  (top {len(result['top_k'])} {spec.kind} from {spec.output})")
        width = max(len(entry["label"]) for entry in result["top_k"])
        for entry in result["top_k"]:
            print(f"  {entry['label']:<{width}}  {entry['score']:.4f}")
