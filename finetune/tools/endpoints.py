"""``endpoints``: where a backbone can be cut: end-point names and tensor names, with shapes."""
from __future__ import annotations

import argparse

HELP = "list a backbone's cut points (end points and tensor names with shapes)"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "endpoints", help=HELP,
        description=HELP + ". Takes the same overrides as `python -m finetune`, e.g. "
                           "`endpoints backbone=mobilenet_v2 backbone.params.depth_multiplier=1.4`.")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (backbone=NAME, ...)")
    parser.add_argument("--all", action="store_true", help="every tensor of the backbone, not only its end points")
    return parser


def _rows(backbone_cfg, show_all: bool) -> list[tuple[str, str, list]]:
    from finetune.backbones import PREPROCESSORS, get_backbone, get_network_fn
    from finetune.backbones.imported import is_imported, load_source
    from finetune.compat import tf, tf1

    if is_imported(backbone_cfg.name):
        graph_def, _ = load_source(backbone_cfg.name, dict(backbone_cfg.params))
        with tf.Graph().as_default() as graph:
            tf1.import_graph_def(graph_def, name="")
        return [("", t.name, t.shape.as_list() if t.shape.rank is not None else None)
                for op in graph.get_operations() for t in op.outputs if op.type not in ("Const", "NoOp")]
    info = get_backbone(backbone_cfg.name)
    size = backbone_cfg.image_size
    with tf.Graph().as_default() as graph:
        pixels = tf1.placeholder(tf.float32, [None, size, size, 3], name="input")
        network_fn = get_network_fn(info.name, backbone_cfg.num_classes, False, **backbone_cfg.params)
        _, end_points = network_fn(PREPROCESSORS[info.preprocessing](pixels))
    by_tensor = {tensor.name: name for name, tensor in end_points.items()}
    if not show_all:
        return [(name, t.name, t.shape.as_list()) for name, t in end_points.items()]
    return [(by_tensor.get(t.name, ""), t.name, t.shape.as_list()) for op in graph.get_operations()
            if op.name.startswith(info.scope + "/") for t in op.outputs]


def run(args: argparse.Namespace) -> int:
    from finetune.config import compose_config

    backbone_cfg = compose_config(args.overrides).backbone
    rows = _rows(backbone_cfg, args.all)
    width = max([len(name) for name, _, _ in rows] + [len("end point")])
    tensor_width = max(len(tensor) for _, tensor, _ in rows)
    print(f"{backbone_cfg.name}, image size {backbone_cfg.image_size}, params {dict(backbone_cfg.params)}")
    print(f"  {'end point':<{width}}  {'tensor':<{tensor_width}}  shape")
    for name, tensor, shape in rows:
        marker = "*" if backbone_cfg.cut in (name, tensor) else " "
        print(f"{marker} {name:<{width}}  {tensor:<{tensor_width}}  {shape}")
    print(f"* = backbone.cut ({backbone_cfg.cut}). Cut with backbone.cut=END_POINT or backbone.cut=TENSOR:0.")
    return 0
