"""``freeze``: a checkpoint -> one frozen GraphDef (``.pb``): a run's checkpoint through the graph rebuilt from
its run directory's config, any other TF1 checkpoint through its meta graph."""
from __future__ import annotations

import argparse
from pathlib import Path

from finetune.errors import FinetuneError
from finetune.pure_ops import ALLOW_UNSAFE_OPS_HELP
from finetune.tools import split_names

HELP = "freeze a checkpoint (a run's, or any TF1 checkpoint with a .meta) into a .pb"
DESCRIPTION = f"""{HELP}.

Variables become constants and only the nodes the outputs need are kept. A run directory, or a checkpoint
in its checkpoints/ folder, needs no .meta: the run's export graph (input:0 -> logits:0, probabilities:0)
is rebuilt from its config.yaml and the checkpoint's weights restored into it (a run directory: the
checkpoint its export was made from). Any other checkpoint needs its .meta, which passes the op gate first;
its own saver is never run (the values are restored by a Saver built here)."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("freeze", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="a run directory, a checkpoint prefix (e.g. run/checkpoints/model.ckpt-1000) or a "
                             "folder (its latest)")
    parser.add_argument("--meta", metavar="META", help="meta graph to import (default: CKPT.meta; a run's "
                                                       "checkpoint without one: the graph rebuilt from the run)")
    parser.add_argument("--outputs", action="append", metavar="NODE[,NODE]",
                        help="output node names; comma-separated and/or repeated (a run's default: "
                             "logits,probabilities)")
    parser.add_argument("--output", required=True, metavar="OUT.pb", help="where to write the frozen graph")
    parser.add_argument("--allow-unsafe-ops", action="store_true", help=ALLOW_UNSAFE_OPS_HELP)
    return parser


def run(args: argparse.Namespace) -> int:
    import os

    from finetune import graphs
    from finetune.export.exporter import OUTPUTS
    from finetune.export.run_freeze import exported_checkpoint, freeze_run, run_dir_of
    from finetune.freezing import freeze_checkpoint
    from finetune.weights.readers import resolve_checkpoint

    outputs = split_names(args.outputs)
    run_dir = run_dir_of(args.checkpoint) if args.meta is None else None
    if run_dir is not None and Path(args.checkpoint).expanduser() == run_dir:
        checkpoint = exported_checkpoint(run_dir)  # the run's own: the one its export was made from
    else:
        checkpoint = resolve_checkpoint(args.checkpoint, key="--checkpoint")  # a folder means its latest
    if run_dir is not None and not os.path.isfile(f"{checkpoint}.meta"):
        outputs = outputs or list(OUTPUTS)
        graph_def = freeze_run(run_dir, checkpoint, outputs, allow_unsafe=args.allow_unsafe_ops)
    else:
        if not outputs:
            raise FinetuneError(f"--outputs is needed for {args.checkpoint}, which is no run's checkpoint: name the "
                                "graph's output nodes, e.g. --outputs logits,probabilities.")
        graph_def = freeze_checkpoint(checkpoint, outputs, meta=args.meta, allow_unsafe=args.allow_unsafe_ops)
    size = graphs.save_graph_def(graph_def, args.output, allow_unsafe=args.allow_unsafe_ops)
    print(f"Wrote {args.output}: {len(graph_def.node)} nodes, {size / 1e6:.2f} MB from {checkpoint}; outputs "
          f"{', '.join(outputs)}")
    return 0
