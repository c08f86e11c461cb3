"""``inspect``: the tensors of a checkpoint, meta graph, frozen graph or ``.npz``: name, shape, dtype, size."""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from finetune.errors import FinetuneError
from finetune.pure_ops import ALLOW_UNSAFE_OPS_HELP

HELP = "list the tensors of a checkpoint, .meta, frozen .pb or .npz (name, shape, dtype, parameter count)"
DESCRIPTION = f"""{HELP}.

PATH is a checkpoint prefix (or its .index, or a directory: its latest checkpoint), a meta graph (.meta:
its variables), a frozen graph (.pb/.pbtxt: the constants that were variables, under their variable
names, as restore.checkpoint reads them) or an .npz. --ops also lists the graph's nodes (a .meta, a .pb,
or a checkpoint with its .meta beside it), its function library's too.

A .pb or .meta first passes the op gate, as everywhere: a graph holding ops outside the list of pure
computation ops is refused unless --allow-unsafe-ops is given. With --ops nothing is refused: the file
is only parsed, never imported or run, and the listing marks each op the gate refuses with '!' (and a
.meta's own saver ops, which are never run, with '~')."""
_VARIABLE_OPS = ("VariableV2", "Variable", "VarHandleOp")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("inspect", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", metavar="PATH", help="checkpoint prefix or directory, .meta, .pb/.pbtxt or .npz")
    parser.add_argument("--ops", action="store_true",
                        help="also list the graph's nodes: name and op type, '!' marking those the op gate refuses")
    parser.add_argument("--allow-unsafe-ops", action="store_true", help=ALLOW_UNSAFE_OPS_HELP)
    return parser


def run(args: argparse.Namespace) -> int:
    from finetune import graphs
    from finetune.weights.readers import FROZEN_GRAPH_SUFFIXES, FrozenGraphSource, open_weights, resolve_checkpoint

    path, allow = args.path, args.allow_unsafe_ops
    graph_def, never_run = None, set()
    if path.endswith(".meta"):
        # --ops only parses and lists: the gate's verdict is printed with the nodes instead of refusing.
        graph_def, never_run = _meta_graph(path) if args.ops else (graphs.load_meta_graph_def(path, "PATH", allow), ())
        kind, shapes, dtypes = "meta graph", *_graph_variables(graph_def)
    elif Path(path).suffix in FROZEN_GRAPH_SUFFIXES:
        resolved = resolve_checkpoint(path, "PATH")
        parsed = graphs.read_graph_def(resolved) if args.ops else None
        source = FrozenGraphSource(resolved, "PATH", allow, graph_def=parsed)  # no frozen variables is fine here
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
            graph_def, never_run = _meta_graph(meta)
    print(_table(path, kind, shapes, dtypes))
    if args.ops and graph_def is not None:
        print(_ops(graph_def, never_run))
    return 0


def _meta_graph(path: str) -> tuple:
    """(the GraphDef of the .meta ``path``, its own saver nodes), parsed only: nothing imported, no gate."""
    from finetune import graphs, op_gate

    meta = graphs.read_meta_graph(path, "PATH")
    return meta.graph_def, op_gate.saver_nodes(meta.graph_def)


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


def _ops(graph_def, never_run=()) -> str:
    """Every node (the function library's as FUNCTION/node) with its op type; '!' marks what the op gate
    refuses, '~' a .meta's own saver ops (never run); then the gate's verdict."""
    from finetune import op_gate

    nodes = list(op_gate.graph_ops(graph_def))
    refused = op_gate.refused_ops(graph_def, never_run)
    flagged = {(op, name) for op, names in refused.items() for name in names}
    counts = Counter(op for op, _ in nodes)
    in_functions = len(nodes) - len(graph_def.node)
    where = f" and {in_functions} in {len(graph_def.library.function)} library functions" if in_functions else ""
    lines = [f"\n{len(graph_def.node)} nodes{where}: " + ", ".join(f"{op} {n}" for op, n in counts.most_common())]
    width = max((len(name) for _, name in nodes), default=4)
    for op, name in nodes:
        mark = "!" if (op, name) in flagged else "~" if name in never_run else " "
        lines.append(f"{mark} {name:<{width}}  {op}" + (f"  ({op_gate.refused_kind(op)})" if mark == "!" else ""))
    if refused:
        lines.append(f"\n! The op gate refuses {len(refused)} op type(s) of this graph: "
                     f"{op_gate.describe_refused(refused)}. Other commands refuse the file unless given "
                     "--allow-unsafe-ops (python -m finetune: allow_unsafe_ops=true); give it only for a file you "
                     "trust.")
    else:
        lines.append("\nEvery op is on the op gate's list of pure computation ops.")
    if never_run:
        lines.append(f"~ {len(never_run)} node(s) of the file's own saver: never imported or run (we restore "
                     "through a Saver of our own).")
    return "\n".join(lines)
