"""Which backbone families convert to ONNX: each built as the export builds it, with random weights, frozen,
converted by tf2onnx (finetune.export.onnx) and run by onnxruntime next to the TensorFlow session; a markdown table.

    python scripts/onnx_families.py [--families mobilenet_v1 resnet_v1_50 ...] [--image-size N]
    python scripts/onnx_families.py --write docs/export.md   # replaces the table between the marker comments

Needs the onnx extra (pip install "finetune[onnx]"). Each family is built at its default cut (but --cuts) with
the layers of head=pool_dense (its dropout is the identity in the export) for 5 classes, at its default image
size (224, 299 for Inception v3) unless --image-size says otherwise (VGG keeps 224: its fully connected layers
are 7x7 convolutions over the 224 input's last map). At much smaller sizes the last maps shrink to a pixel or
two, the batch's statistics per channel come from a handful of values, and the random network amplifies
rounding far more than at the size it is made for.

The weights are random, as a trained network's are in scale: He-normal kernels, BatchNorm scale and shift
random, its moving statistics those of the batch, layer after layer, so that every layer's output is
normalised as in a trained network and folding the statistics is not trivial; the logits are scaled to a
trained classifier's spread (standard deviation 3). The parity tolerance (export.parity_tolerance, 1e-4) is
thus measured at the magnitudes a real export is checked at.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

FAMILIES = ("mobilenet_v1", "mobilenet_v2", "inception_v1", "inception_v2", "inception_v3", "resnet_v1_50",
            "resnet_v2_50", "vgg_16")
NEEDS_DEFAULT_SIZE = ("vgg_16", "vgg_19")
# VGG 16's default cut, fc7, keeps 134 million parameters (fc6 alone is a 7x7x512x4096 convolution): randomising,
# freezing, folding and converting them took more than the 23 GB of the machine the table was made on (the
# process was killed for memory). The convolutional trunk holds every op type fc6 and fc7 use.
CUTS = ("vgg_16=vgg_16/pool5",)
BATCH = 4
LOGIT_SPREAD = 3.0  # the standard deviation the logits are scaled to
OUTPUTS = ["logits", "probabilities"]
# The marker lines, as docs/export.md holds them.
BEGIN = "<!-- onnx-families:begin (python scripts/onnx_families.py --write docs/export.md) -->"
END = "<!-- onnx-families:end -->"

# builds the graph to convert in the default graph: () -> (pixels "input", logits "logits", probabilities
# "probabilities", the variable scope of the last layer, whose weights set the logits' scale)
Build = Callable[[], tuple[Any, Any, Any, str]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--image-size", type=int, help="default: each family's own")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="export.parity_tolerance")
    parser.add_argument("--write", metavar="FILE", type=Path, help="replace the table between the markers in FILE")
    parser.add_argument("--cuts", nargs="*", default=list(CUTS), metavar="FAMILY=CUT",
                        help="another cut than the family's default (default: %(default)s)")
    return parser.parse_args(argv)


def _variable_behind(tensor: Any, variables: dict[str, Any]) -> Any:
    """The variable of ``variables`` a BatchNorm parameter input reads (through ReadVariableOp / Identity), or None."""
    while tensor.op.name not in variables and tensor.op.inputs:
        tensor = tensor.op.inputs[0]
    return variables.get(tensor.op.name)


def randomise(sess: Any, pixels: Any, batch: np.ndarray, logits: Any, last_scope: str,
              rng: np.random.Generator) -> None:
    """Random weights of a trained network's scale for everything ``logits`` reads (see the module docstring)."""
    from finetune.compat import tf1
    from finetune.model.towers import variables_read_by

    read = variables_read_by([logits])
    variables = {v.op.name: v for v in tf1.global_variables() if v.op.name in read}
    feeds = {}
    for name, variable in variables.items():
        shape = variable.shape.as_list()
        if name.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) <= 1:
            value = rng.normal(0.0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[:2])) if "depthwise" in name else int(np.prod(shape[:-1]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        feeds[variable.initial_value] = value.astype(variable.dtype.as_numpy_dtype)
    sess.run([variable.initializer for variable in variables.values()], feeds)
    for op in sess.graph.get_operations():  # creation order: a norm's input is normalised before it
        statistics = [_variable_behind(op.inputs[i], variables) for i in (3, 4)] if op.type.startswith(
            "FusedBatchNorm") else [None]
        if None not in statistics:
            x = sess.run(op.inputs[0], {pixels: batch})
            statistics[0].load(x.mean((0, 1, 2)), sess)
            statistics[1].load(x.var((0, 1, 2)) + 1e-3, sess)
    scale = LOGIT_SPREAD / float(np.std(sess.run(logits, {pixels: batch})))
    for name, variable in variables.items():
        if name.startswith(f"{last_scope}/"):
            variable.load(sess.run(variable) * scale, sess)


def convert_and_compare(build: Build, image_size: int, folder: Path, tolerance: float = 1e-4,
                        reference: bool = False) -> dict:
    """Build, randomise and freeze a graph, convert it to ONNX in ``folder`` and compare onnxruntime's outputs
    with the session's on random pixels: ``{"converts", "logits_diff", "probabilities_diff", "within",
    "logit_std", "opset", "nodes", "seconds", "mb"}``, or ``{"converts": False, "why"}``. ``reference`` adds
    ``optimized_diff``: how far TensorFlow's own optimised graph (BatchNorm folded, as the export writes it and
    checks it against the same tolerance) is from the session on the same pixels."""
    from finetune import graphs
    from finetune.compat import tf, tf1
    from finetune.errors import FinetuneError
    from finetune.export import onnx, optimize
    from finetune.freezing import freeze_session

    batch = np.random.default_rng(1).uniform(0, 255, (BATCH, image_size, image_size, 3)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        pixels, logits, probabilities, last_scope = build()
        randomise(sess, pixels, batch, logits, last_scope, np.random.default_rng(0))
        expected = sess.run([logits, probabilities], {pixels: batch})
        frozen = freeze_session(sess, OUTPUTS)
    found = {"nodes": len(frozen.node)}
    if reference:
        optimized = optimize.optimize_for_inference(frozen, ["input"], OUTPUTS)
        outputs = graphs.run_graph_def(optimized, {"input:0": batch}, [f"{name}:0" for name in OUTPUTS])
        found["optimized_diff"] = max(float(np.max(np.abs(a - b))) for a, b in zip(outputs, expected))
    path = folder / "model.onnx"
    start = time.perf_counter()
    try:
        details = onnx.write_onnx(frozen, "input", OUTPUTS, path)
    except FinetuneError as error:
        return {**found, "converts": False, "why": str(error)}
    seconds = time.perf_counter() - start
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(onnx.run_onnx(path, batch), expected)]
    return {**found, "converts": True, "logits_diff": diffs[0], "probabilities_diff": diffs[1],
            "within": max(diffs) <= tolerance, "logit_std": float(np.std(expected[0])), "opset": details["opset"],
            "seconds": seconds, "mb": path.stat().st_size / 1e6}


def family_build(name: str, image_size: int, cut: str) -> Build:
    """The export tower of a registered backbone cut at ``cut``, head=pool_dense's layers, 5 classes."""
    def build() -> tuple[Any, Any, Any, str]:
        from omegaconf import OmegaConf

        from finetune.config import BackboneConfig, HeadConfig, LayerConfig
        from finetune.model.towers import build_export_tower

        backbone = OmegaConf.structured(BackboneConfig(name=name, image_size=image_size, cut=cut))
        head = OmegaConf.structured(HeadConfig(layers=[LayerConfig(type="global_avg_pool"),
                                                       LayerConfig(type="dense")]))
        tower = build_export_tower(backbone, head, 5)
        return tower.pixels, tower.logits, tower.probabilities, head.scope
    return build


def table(rows: list[dict], tolerance: float) -> str:
    lines = ["| family | image size | cut | converts | ONNX max abs diff (logits / probabilities) | within "
             f"{tolerance:g} | TF optimised graph max abs diff | opset | MB |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        optimized = f"{row['optimized_diff']:.1e}" if "optimized_diff" in row else ""
        if not row["converts"]:
            lines.append(f"| {row['family']} | {row['image_size']} | `{row['cut']}` | no: {row['why']} | | | "
                         f"{optimized} | | |")
            continue
        lines.append(f"| {row['family']} | {row['image_size']} | `{row['cut']}` | yes | {row['logits_diff']:.1e} / "
                     f"{row['probabilities_diff']:.1e} | {'yes' if row['within'] else 'no'} | {optimized} | "
                     f"{row['opset']} | {row['mb']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import finetune.compat  # noqa: F401  (first, as in every entry point)
    from finetune.model.backbones import get_backbone

    cuts = dict(entry.split("=", 1) for entry in args.cuts)
    rows = []
    for family in args.families:
        own = get_backbone(family).default_image_size
        size = own if family in NEEDS_DEFAULT_SIZE or not args.image_size else args.image_size
        cut = cuts.get(family, get_backbone(family).default_cut)
        with tempfile.TemporaryDirectory() as tmp:
            row = convert_and_compare(family_build(family, size, cut), size, Path(tmp), args.tolerance, reference=True)
        row.update(family=family, image_size=size, cut=cut)
        print(row, file=sys.stderr, flush=True)
        rows.append(row)
    import onnxruntime
    import tf2onnx

    text = (f"tf2onnx {tf2onnx.__version__}, onnxruntime {onnxruntime.__version__}, ONNX opset {rows[0].get('opset')}:"
            f"\n\n{table(rows, args.tolerance)}\n")
    if args.write:
        from finetune.files import write_between_markers

        write_between_markers(args.write, BEGIN, END, text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
