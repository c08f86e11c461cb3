"""``bundle``: the results of sweeps in one folder and a ``.tar.gz`` for a thesis's appendix (see
:mod:`finetune.analysis.bundle`); ``--verify`` checks a bundle's checksums."""
from __future__ import annotations

import argparse

HELP = "one folder (and .tar.gz) with every job's configs, records, metrics, predictions, tables, figures, checksums"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bundle", help=HELP, description=HELP + ". Checkpoints and exports only with "
                                   "--checkpoints. `bundle --verify OUT` checks a bundle against its SHA256SUMS.")
    parser.add_argument("folders", metavar="DIR", nargs="*", help="sweep folders or run directories")
    parser.add_argument("out", metavar="OUT", nargs="?", help="the bundle folder to make (OUT.tar.gz beside it)")
    parser.add_argument("--checkpoints", action="store_true", help="also copy each job's checkpoints/ and export/")
    parser.add_argument("--baseline", metavar="GROUP", help="also compare the groups with this one (see summarize)")
    parser.add_argument("--no-figures", action="store_true", help="leave the figures out (they load TensorFlow)")
    parser.add_argument("--verify", metavar="BUNDLE", help="check BUNDLE's files against its SHA256SUMS")
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from finetune.analysis.bundle import make_bundle, verify
    from finetune.errors import FinetuneError
    from finetune.tools.summarize import summarize_folders

    if args.verify:
        problems = verify(Path(args.verify))
        if problems:
            raise FinetuneError(f"bundle {args.verify}: {len(problems)} file(s) do not match SHA256SUMS: "
                                + "; ".join(problems[:10]))
        print(f"{args.verify}: every file matches SHA256SUMS")
        return 0
    names = [*args.folders, *([args.out] if args.out else [])]
    if len(names) < 2:
        raise FinetuneError("bundle needs at least one sweep folder and the bundle folder to make: "
                            "python -m finetune.tools bundle SWEEP_DIR [SWEEP_DIR ...] OUT")
    folders = [Path(name) for name in names[:-1]]

    def write_tables(output: Path) -> None:
        summarize_folders(folders, baseline=args.baseline, output=output, figures=False)

    folder, archive = make_bundle(folders, Path(names[-1]), write_tables, args.checkpoints,
                                  figures=not args.no_figures)
    print(f"Wrote {folder} and {archive}")
    return 0
