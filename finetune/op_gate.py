"""The op gate: which ops a graph from outside may hold before anything of it is imported or run.

A GraphDef is a program, and TensorFlow runs whatever op it finds in one (``WriteFile``, ``ReadFile``,
``PyFunc``...). Every graph file from outside is loaded through :func:`finetune.graphs.load_graph_def`
or :func:`finetune.graphs.load_meta_graph_def`, which call :func:`check_ops` before anything from the
file is imported: every op, including those in the function library, must be in
:data:`finetune.pure_ops.PURE_OPS`. A ``.meta``'s own saver ops are let through there because they are
never imported or run: :func:`finetune.freezing.freeze_meta_graph` imports only what the outputs need
and restores through a Saver it builds. :func:`finetune.graphs.save_graph_def` refuses to write a graph
the gate would refuse, so our exports never carry one.
"""
from __future__ import annotations

import logging
import re
from typing import Collection, Iterator

from finetune.compat import tf1
from finetune.errors import FinetuneError
from finetune.pure_ops import PURE_OPS

log = logging.getLogger(__name__)

# The file I/O ops of a Saver. In a .meta's graph they pass the gate as never run (see the module docstring).
SAVER_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "Save", "SaveSlices", "Restore", "RestoreSlice"})
_PURE = frozenset(PURE_OPS)
# What a refused op is, for the message: the first pattern its type matches.
_REFUSED_KINDS = (
    ("a Python callback", re.compile(r"PyFunc")),
    ("a queue, reader or dataset", re.compile(r"Queue|Reader|Dataset|Iterator|Barrier|Stage|Accumulator")),
    ("file I/O", re.compile(r"File|Save|Restore|Checkpoint|Matching|ImmutableConst|Remap|Vocab|Proto")),
    ("network or cross-process", re.compile(r"Rpc|Send|Recv|Collective|Nccl|Gcs|BigQuery|Bigtable|TPU|Tpu")),
    ("logging or summary I/O", re.compile(r"Summary|Print|Debug|Event|Profiler")),
)


def graph_ops(graph_def: tf1.GraphDef) -> Iterator[tuple[str, str]]:
    """(op type, node name) of every node, the graph's own and then each library function's (as ``FUNCTION/node``).

    Functions nested in functions are listed in the same library, so one pass reaches them all.
    """
    for node in graph_def.node:
        yield node.op, node.name
    for function in graph_def.library.function:
        for node in function.node_def:
            yield node.op, f"{function.signature.name}/{node.name}"


def refused_ops(graph_def: tf1.GraphDef, never_run: Collection[str] = ()) -> dict[str, list[str]]:
    """Op type -> node names, for every op outside :data:`PURE_OPS` (sorted by type, nodes in graph order).

    A call of a function of the graph's own library is fine: the function's nodes are checked themselves.
    ``never_run`` names nodes of the graph (not of functions) that are neither imported nor run.
    """
    functions = {function.signature.name for function in graph_def.library.function}
    refused: dict[str, list[str]] = {}
    for op, name in graph_ops(graph_def):
        if op not in _PURE and op not in functions and name not in never_run:
            refused.setdefault(op, []).append(name)
    return dict(sorted(refused.items()))


def refused_kind(op: str) -> str:
    """What a refused op type is, in words: a Python callback, file I/O, ..., or an op this TensorFlow lacks."""
    from tensorflow.python.framework import op_def_registry

    if op_def_registry.get(op) is None:
        return "a custom op this TensorFlow does not know"
    return next((kind for kind, pattern in _REFUSED_KINDS if pattern.search(op)), "not a pure computation op")


def describe_refused(refused: dict[str, list[str]]) -> str:
    """``WriteFile (file I/O; 1 node: steal/write); PyFunc (...)``: each op type, what it is, a few node names."""
    parts = []
    for op, names in refused.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"{op} ({refused_kind(op)}; {len(names)} node{'s' if len(names) > 1 else ''}: {shown})")
    return "; ".join(parts)


def check_ops(graph_def: tf1.GraphDef, source: str, allow_unsafe: bool = False,
              never_run: Collection[str] = ()) -> None:
    """FinetuneError naming each op of ``graph_def`` (the file ``source``) outside :data:`PURE_OPS`, with
    its node names; with ``allow_unsafe``, one warning instead. Call it before importing the graph.

    ``never_run``: node names the caller neither imports nor runs (a .meta's own saver ops).
    """
    refused = refused_ops(graph_def, never_run)
    if not refused:
        return
    listing = describe_refused(refused)
    if allow_unsafe:
        log.warning("allow_unsafe_ops is set: %s holds %d op type(s) outside the list of pure computation ops, let "
                    "through and run with your permissions: %s.", source, len(refused), listing)
        return
    raise FinetuneError(
        f"{source} holds {len(refused)} op type(s) outside the list of pure computation ops: {listing}. A graph "
        "file is a program, and these could read or write files, reach the network, start processes, call back "
        "into Python, run queues or readers or other stateful I/O, or are custom ops; nothing from the file was "
        "imported or run. If you trust the file, pass allow_unsafe_ops=true (python -m finetune) or "
        "--allow-unsafe-ops (python -m finetune.tools); see every op with "
        f"`python -m finetune.tools inspect {source} --ops`."
    )


def saver_nodes(graph_def: tf1.GraphDef) -> set[str]:
    """The nodes of a .meta's graph (not of its functions) whose op is a :data:`SAVER_OPS` op, for
    ``check_ops(never_run=...)``: nothing imports a .meta's graph to run it but :func:`freeze_meta_graph`,
    which imports only what the outputs need, checked again, and restores through a Saver of its own."""
    return {node.name for node in graph_def.node if node.op in SAVER_OPS}
