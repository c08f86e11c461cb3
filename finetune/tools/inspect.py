"""``inspect``: the tensors of a checkpoint, meta graph, frozen graph or ``.npz``: name, shape, dtype, size."""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from finetune.errors import FinetuneError

HELP = "list the tensors of a checkpoint, .meta, frozen .pb or .npz (name, shape, dtype, parameter count)"
DESCRIPTION = f"""{HELP}.

PATH is a checkpoint prefix (or its .index, or a directory: its latest checkpoint), a meta graph (.meta:
its variables), a frozen graph (.pb/.pbtxt: the constants that were variables, under their variable
names, as restore.checkpoint reads them) or an .npz. --ops also lists the graph's nodes (a .meta, a .pb,
or a checkpoint with its .meta beside it)."""
_VARIABLE_OPS = ("VariableV2", "Variable", "VarHandleOp")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("inspect", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", metavar="PATH", help="checkpoint prefix or directory, .meta, .pb/.pbtxt or .npz")
    parser.add_argument("--ops", action="store_true", help="also list the graph's nodes: name and op type")
    return parser


def run(args: argparse.Namespace) -> int:
    from finetune import graphs
    from finetune.weights.sources import FROZEN_GRAPH_SUFFIXES, FrozenGraphSource, open_weights, resolve_checkpoint

    path = args.path
    graph_def = None
    if path.endswith(".meta"):
        graph_def = graphs.load_meta_graph_def(path)
        kind, shapes, dtypes = "meta graph", *_graph_variables(graph_def)
    elif Path(path).suffix in FROZEN_GRAPH_SUFFIXES:
        source = FrozenGraphSource(resolve_checkpoint(path, "PATH"), "PATH")  # no frozen variables is fine here
        kind, shapes, dtypes, graph_def = "frozen graph", source.shapes(), source.dtypes(), source.graph_def
    else:
        source = open_weights(path, "PATH")
        kind, shapes, dtypes, path = source.kind, source.shapes(), source.dtypes(), source.path
        if args.ops:
            meta = f"{source.path}.meta"
            if source.kind != "checkpoint" or not Path(meta).is_file():
                raise FinetuneError(f"--ops lists graph nodes, and PATH {args.path!r} ({source.kind}) has no graph"
                                    f"{f' (no {meta} beside it)' if source.kind == 'checkpoint' else ''}. "
                                    "Give a .meta or a .pb.")
            graph_def = graphs.load_meta_graph_def(meta)
    print(_table(path, kind, shapes, dtypes))
    if args.ops and graph_def is not None:
        print(_ops(graph_def))
    return 0


def _graph_variables(graph_def) -> tuple[dict[str, list[int]], dict[str, str]]:
    """The variable nodes of a (non-frozen) graph: their declared shapes and dtypes."""
    from finetune.compat import tf

    shapes, dtypes = {}, {}
    for node in graph_def.node:
        if node.op in _VARIABLE_OPS:
            shapes[node.name] = [dim.size for dim in node.attr["shape"].shape.dim]
            dtypes[node.name] = tf.dtypes.as_dtype(node.attr["dtype"].type).name
    return shapes, dtypes


def _count(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= max(dim, 0)
    return total


def _table(path: str, kind: str, shapes: dict[str, list[int]], dtypes: dict[str, str]) -> str:
    names = sorted(shapes)
    total = sum(_count(shapes[name]) for name in names)
    rows = [("name", "shape", "dtype", "parameters")]
    rows += [(name, str(shapes[name]), dtypes.get(name, "?"), f"{_count(shapes[name]):,}") for name in names]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f"{path}: {kind}, {len(names)} tensors, {total:,} parameters"]
    lines += [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]:>12}" for row in rows]
    if not names and kind == "frozen graph":
        lines.append("(no frozen variables: no Const is read through an Identity 'X/read' or '.../ReadVariableOp')")
    return "\n".join(lines)


def _ops(graph_def) -> str:
    counts = Counter(node.op for node in graph_def.node)
    lines = [f"\n{len(graph_def.node)} nodes: " + ", ".join(f"{op} {n}" for op, n in counts.most_common())]
    width = max((len(node.name) for node in graph_def.node), default=4)
    lines += [f"{node.name:<{width}}  {node.op}" for node in graph_def.node]
    return "\n".join(lines)
