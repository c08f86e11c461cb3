"""``pb2ckpt``: a frozen graph's weights -> a TF checkpoint under the original variable names."""
from __future__ import annotations

import argparse

from finetune.errors import FinetuneError
from finetune.pure_ops import ALLOW_UNSAFE_OPS_HELP

HELP = "turn the weights frozen in a .pb back into a checkpoint with the original variable names"
DESCRIPTION = f"""{HELP}.

A frozen variable X is the Const that convert_variables_to_constants left in place of the variable:
read through an Identity 'X/read' (ref variables) or '.../ReadVariableOp' (resource variables). Its value
is written bit for bit, under the name X, and read back to check. The result works as restore.checkpoint
(as does the .pb itself)."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("pb2ckpt", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pb", metavar="PB", help="frozen graph (.pb or .pbtxt)")
    parser.add_argument("out", metavar="OUT_PREFIX", help="checkpoint prefix to write, e.g. out/model.ckpt")
    parser.add_argument("--scope", metavar="SCOPE",
                        help="keep only the variables under this scope (e.g. MobilenetV1): SCOPE itself or SCOPE/...")
    parser.add_argument("--allow-unsafe-ops", action="store_true", help=ALLOW_UNSAFE_OPS_HELP)
    return parser


def run(args: argparse.Namespace) -> int:
    from finetune.weights.readers import FROZEN_GRAPH_SUFFIXES, bit_identical, open_weights, write_checkpoint

    if not args.pb.endswith(FROZEN_GRAPH_SUFFIXES):
        raise FinetuneError(f"PB {args.pb!r} is not a frozen graph: give a .pb or .pbtxt file.")
    source = open_weights(args.pb, "PB", allow_unsafe=args.allow_unsafe_ops)
    names = sorted(source.shapes())
    if args.scope:
        scope = args.scope.rstrip("/")
        names = [name for name in names if name == scope or name.startswith(scope + "/")]
        if not names:
            scopes = sorted({name.split("/", 1)[0] for name in source.shapes()})
            raise FinetuneError(f"--scope {args.scope!r} keeps none of the {len(source.shapes())} frozen variables "
                                f"of {args.pb}; their top scopes: {', '.join(scopes)}.")
    tensors = source.read(names)
    prefix = write_checkpoint(tensors, args.out, fix="give an OUT_PREFIX on another disk")
    written = open_weights(prefix, "OUT_PREFIX").read(names)
    differ = [name for name in names if not bit_identical(written[name], tensors[name])]
    if differ:
        raise FinetuneError(f"{prefix} was written, but {len(differ)} tensor(s) read back differ, e.g. {differ[0]}.")
    parameters = sum(int(value.size) for value in tensors.values())
    print(f"Wrote {prefix}: {len(names)} variables, {parameters:,} parameters from {args.pb}"
          f"{f' (scope {args.scope})' if args.scope else ''}; read back bit-identical.")
    return 0
