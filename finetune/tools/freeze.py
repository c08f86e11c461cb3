"""``freeze``: a TF1 checkpoint and its meta graph -> one frozen GraphDef (``.pb``)."""
from __future__ import annotations

import argparse

from finetune.pure_ops import ALLOW_UNSAFE_OPS_HELP
from finetune.tools import split_names

HELP = "freeze a checkpoint (ours or any TF1 checkpoint with a .meta) into a .pb"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("freeze", help=HELP, description=HELP + ". Variables become constants and only "
                                   "the nodes the outputs need are kept. The .meta passes the op gate first; its "
                                   "own saver is never run (the values are restored by a Saver built here).")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="checkpoint prefix (e.g. run/checkpoints/model.ckpt-1000) or a folder (its latest)")
    parser.add_argument("--meta", metavar="META", help="meta graph to import (default: CKPT.meta)")
    parser.add_argument("--outputs", required=True, action="append", metavar="NODE[,NODE]",
                        help="output node names; comma-separated and/or repeated")
    parser.add_argument("--output", required=True, metavar="OUT.pb", help="where to write the frozen graph")
    parser.add_argument("--allow-unsafe-ops", action="store_true", help=ALLOW_UNSAFE_OPS_HELP)
    return parser


def run(args: argparse.Namespace) -> int:
    from finetune import graphs
    from finetune.freezing import freeze_checkpoint
    from finetune.weights.readers import resolve_checkpoint

    outputs = split_names(args.outputs)
    checkpoint = resolve_checkpoint(args.checkpoint, key="--checkpoint")  # a folder means its latest checkpoint
    graph_def = freeze_checkpoint(checkpoint, outputs, meta=args.meta, allow_unsafe=args.allow_unsafe_ops)
    size = graphs.save_graph_def(graph_def, args.output, allow_unsafe=args.allow_unsafe_ops)
    print(f"Wrote {args.output}: {len(graph_def.node)} nodes, {size / 1e6:.2f} MB; outputs {', '.join(outputs)}")
    return 0
