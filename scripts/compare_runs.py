"""Compare two run directories of one config: their reports byte for byte, their exports output for output.

    python scripts/compare_runs.py RUN_A RUN_B [--images N]

For checking that a change to the code leaves results alone (run the same command before and after, with
the same FINETUNE_CACHE), or that two machines agree. It prints one row per report file (``metrics.json``,
``metrics.jsonl``, ``phases.json``, the confusion and misclassified reports, ``export/val_predictions.json``,
``export/labels.txt``): identical or not, and for every exported graph (frozen, optimized, SavedModel,
TFLite when present) whether its outputs on the first N validation images of RUN_A's data (all of them by
default) are bit-identical, else their largest difference. The graph files themselves are not compared
byte for byte: protobuf serializes a node's attributes in no fixed order. Exit status 1 when anything
differs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPORTS = ("metrics.json", "metrics.jsonl", "phases.json", "confusion_matrix.json", "misclassified.json",
           "export/val_predictions.json", "export/labels.txt")


def report_rows(first: Path, second: Path) -> list[tuple[str, bool, str]]:
    rows = []
    for name in REPORTS:
        a, b = first / name, second / name
        if not a.is_file() and not b.is_file():
            continue
        same = a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()
        rows.append((name, same, "byte-identical" if same else "differs"))
    return rows


def _images(run: Path, count: int | None) -> np.ndarray:
    """The first ``count`` validation images of the run's data, decoded as the exports' parity check does."""
    from omegaconf import OmegaConf

    from finetune import pipeline
    from finetune.data.images import load_images
    from finetune.resolve import REQUIRE, data_root

    cfg = OmegaConf.load(run / "config.yaml")
    data = pipeline.load_data(cfg.data, data_root(cfg.data, cfg.paths, REQUIRE))
    examples = data.examples["val"][:count]
    return load_images([example.reference for example in examples], cfg.backbone.image_size)


def export_rows(first: Path, second: Path, count: int | None) -> list[tuple[str, bool, str]]:
    from finetune import graphs
    from finetune.export import formats

    meta = json.loads((first / "export" / "model.json").read_text())
    if meta["input_type"] != "float":
        return [("export", False, "image_bytes exports are not compared by this script")]
    batch = _images(first, count)
    runners = {
        "frozen_graph.pb": lambda run: graphs.run_graph_def(graphs.load_graph_def(run / "export/frozen_graph.pb"),
                                                            {"input:0": batch}, ["logits:0", "probabilities:0"]),
        "optimized_graph.pb": lambda run: graphs.run_graph_def(
            graphs.load_graph_def(run / "export/optimized_graph.pb"), {"input:0": batch},
            ["logits:0", "probabilities:0"]),
        "saved_model": lambda run: [
            out for _, out in sorted(formats.run_saved_model(run / "export/saved_model", batch).items())],
        "model.tflite": lambda run: formats.run_tflite(run / "export/model.tflite", batch),
    }
    rows = []
    for name, run_model in runners.items():
        if not ((first / "export" / name).exists() and (second / "export" / name).exists()):
            continue
        outputs = [run_model(first), run_model(second)]
        same = all(np.array_equal(a, b) for a, b in zip(*outputs))
        worst = max(float(np.max(np.abs(np.asarray(a, np.float64) - b))) for a, b in zip(*outputs))
        rows.append((f"export/{name} on {len(batch)} images", same,
                     "bit-identical outputs" if same else f"outputs differ by up to {worst:.3g}"))
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--images", type=int, help="validation images the exports are run on (default: all)")
    args = parser.parse_args(argv)
    import finetune.compat  # noqa: F401  (first: TF-Slim's shim)

    rows = report_rows(args.first, args.second) + export_rows(args.first, args.second, args.images)
    print(f"| {args.first} vs {args.second} | same | |\n|---|---|---|")
    for name, same, note in rows:
        print(f"| {name} | {'yes' if same else 'NO'} | {note} |")
    return 0 if all(same for _, same, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
