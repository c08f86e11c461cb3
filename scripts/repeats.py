"""Shared by compare_init.py and compare_phases.py: run a sweep over seeds the way a user would, summarize it
with ``tools summarize`` (groups, 95% intervals, paired tests against a baseline), and say in words what the
intervals allow one to conclude."""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
METRICS = ["val.accuracy", "val.loss", "test.accuracy"]


def parse_arguments(argv: Sequence[str], description: str, name: str) -> tuple[argparse.Namespace, list[str], Path]:
    """The options both scripts take, the overrides (the rest) and the folder for the sweeps and tables."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, default=5, help="repeats of each variant (train.seed=1..N)")
    parser.add_argument("--keep", type=Path, help="keep the sweeps, the tables and the figures in this folder")
    parser.add_argument("--write", metavar="FILE", type=Path, action="append", default=[],
                        help=f"also put the output between FILE's {name} markers (repeatable)")
    parser.add_argument("--figure", metavar="PNG", type=Path, help="also copy the validation-accuracy curves there")
    args, overrides = parser.parse_known_args(list(argv))
    return args, overrides, args.keep or Path(tempfile.mkdtemp(prefix=f"finetune-{name}-"))


def seeds(count: int) -> str:
    return ",".join(str(seed) for seed in range(1, count + 1))


def run_sweep(sweep_dir: Path, overrides: Sequence[str]) -> None:
    """``python -m finetune -m OVERRIDES hydra.sweep.dir=SWEEP_DIR``; exits when the sweep fails."""
    command = [sys.executable, "-m", "finetune", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    print("$ " + " ".join(command[1:]), file=sys.stderr, flush=True)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-3000:] + result.stderr[-3000:], file=sys.stderr)
        sys.exit(f"the sweep failed (exit {result.returncode})")


def conclusions(report_rows, baseline: str) -> list[str]:
    """One sentence per compared metric: the difference, its interval, the tests, and what they allow."""
    sentences = []
    for row in report_rows:
        c = row.comparison
        if c.low is None:
            sentences.append(f"{row.group} vs {baseline}, {row.metric}: one pair only, no interval.")
            continue
        # The interval is the paired t-test's own (it excludes 0 exactly when p < 0.05); with several groups
        # against one baseline the verdict takes Holm's corrected p, so that no comparison is claimed that the
        # family of them does not support.
        if not (c.low > 0 or c.high < 0):
            verdict = "the interval includes 0: these repeats cannot tell the two apart"
        elif row.holm_t_pvalue < 0.05:
            verdict = ("the interval excludes 0, also after Holm's correction: the data support a difference at "
                       "the 5% level")
        else:
            verdict = ("the interval excludes 0, but Holm's correction over the groups compared leaves p above "
                       "0.05: no difference can be claimed at the 5% level; more seeds would tell")
        sentences.append(f"{row.group} vs {baseline}, {row.metric}: {c.mean_difference:+.3f} "
                         f"[{c.low:+.3f}, {c.high:+.3f}] over {c.n} paired seeds (paired t p={c.t_pvalue:.3g}, "
                         f"Holm {row.holm_t_pvalue:.3g}; Wilcoxon p={c.wilcoxon_pvalue:.3g}); {verdict}.")
    return sentences


def report(folders: Sequence[Path], baseline: str, keep: Optional[Path] = None) -> str:
    """The groups table, the comparison with ``baseline`` and the conclusions, as Markdown; the figures of
    ``tools summarize --figures`` go to ``keep/figures``."""
    import finetune.compat  # noqa: F401  (first: TF-Slim's shim; summarize itself needs no TensorFlow)
    from finetune.analysis import groups as grouping
    from finetune.analysis.runs import load_jobs
    from finetune.tools.summarize import summarize_folders

    output = keep or Path(tempfile.mkdtemp(prefix="finetune-compare-"))
    summary = summarize_folders(list(folders), metrics=METRICS, baseline=baseline, output=output, figures=True)
    groups = grouping.group_jobs(load_jobs(list(folders)))
    base = grouping.find_group(groups, baseline)
    rows = [row for row in grouping.compare(groups, base, METRICS) if row.metric in ("val.accuracy", "test.accuracy")]
    return (summary.groups_md + "\n" + summary.comparison_md + "\n"
            + "\n".join(f"- {s}" for s in conclusions(rows, base.label)) + "\n")


def publish(text: str, name: str, write: Sequence[Path], keep: Path, figure: Optional[Path]) -> None:
    """Print ``text``; also put it between the ``NAME`` markers of each file in ``write``; with ``figure``, copy
    the validation-accuracy learning curves there (PNG)."""
    from finetune.files import write_between_markers

    print(text)
    for path in write:
        write_between_markers(path, f"<!-- {name}:begin (scripts/{name.replace('-', '_')}.py --write) -->",
                              f"<!-- {name}:end -->", text)
    if figure:
        shutil.copyfile(keep / "figures" / "curves_val.accuracy.png", figure)
