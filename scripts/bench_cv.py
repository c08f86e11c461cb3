"""What a repeated cross-validation costs next to one run: the demo experiment as one plain run and as a
5-fold x 3-seed sweep, both over the feature cache, timed side by side in one process; prints Markdown.

    python scripts/bench_cv.py [--folds 5] [--seeds 3] [--write FILE] [experiment=mobilenet_head] [other overrides...]

Each timing is one ``python -m finetune`` command, as a user types it, with its own empty feature cache
(the demo assets are copied in first, so no row pays for making them):

* the first plain run computes the backbone's features of the images it uses and caches them ("first run");
* the same run again reads them back ("later run"); the difference is the cache fill (the median over the
  repeats of each pair's difference: the two run back to back, so a slower spell of a shared machine
  cancels out of it, where the difference of two fastest runs taken at different times does not);
* the sweep (``-m data.folds=K 'data.fold=range(K)' train.seed=1..S``) fills the cache in its first job and
  trains every other job on the cached features.

The target (issue 17) is the sweep within 3x a later run plus the cache fill. Each command runs ``--repeats``
times (each time with its own empty cache and folders) and the fastest time counts, as ``timeit`` does: a busy
moment of a shared machine then decides no row.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], cache: Path, folder: Path) -> float:
    """Seconds ``python -m finetune COMMAND`` takes with FINETUNE_CACHE=cache; exits when it fails."""
    env = {**os.environ, "FINETUNE_CACHE": str(cache)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "finetune", *command], cwd=folder, env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"`python -m finetune {' '.join(command)}` failed:\n{result.stderr[-3000:]}")
    return seconds


def fresh_cache(demo_assets: Path, folder: Path) -> Path:
    """An empty cache holding only a copy of the demo assets (so that no timing includes making them)."""
    from finetune.data.demo_images import demo_root

    cache = Path(tempfile.mkdtemp(dir=folder, prefix="cache-"))
    shutil.copytree(demo_assets, demo_root(cache))
    return cache


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command; the fastest counts")
    parser.add_argument("--write", metavar="FILE", type=Path, help="also put the table between FILE's bench-cv markers")
    args, overrides = parser.parse_known_args(argv)
    overrides = overrides or ["experiment=mobilenet_head"]

    import finetune.compat  # noqa: F401  (first: TF-Slim's shim)
    from finetune.config import compose_config
    from finetune.data.demo_images import demo_root, ensure_target_dataset

    user_cache = compose_config(overrides).paths.cache_dir
    ensure_target_dataset(user_cache)
    assets = demo_root(user_cache)

    seeds = ",".join(str(seed) for seed in range(1, args.seeds + 1))
    first, later, sweep = [], [], []
    with tempfile.TemporaryDirectory(prefix="finetune-bench-cv-") as scratch:
        for repeat in range(args.repeats):
            folder = Path(scratch) / str(repeat)
            folder.mkdir()
            cache = fresh_cache(assets, folder)
            first.append(timed([*overrides, f"hydra.run.dir={folder}/plain"], cache, folder))
            later.append(timed([*overrides, f"hydra.run.dir={folder}/plain-again"], cache, folder))
            sweep_command = ["-m", *overrides, f"data.folds={args.folds}", f"data.fold=range({args.folds})",
                             f"train.seed={seeds}", f"hydra.sweep.dir={folder}/sweep"]
            sweep.append(timed(sweep_command, fresh_cache(assets, folder), folder))
    fill = statistics.median(a - b for a, b in zip(first, later))
    first, later, sweep = min(first), min(later), min(sweep)
    budget = 3 * later + fill
    jobs = args.folds * args.seeds
    rows = [f"Overrides: {' '.join(overrides)}; {os.cpu_count()} CPU cores; the fastest of {args.repeats} run(s) of "
            "each command\n", "| command | jobs | seconds |",
            "|---|---|---|", f"| one run, empty feature cache | 1 | {first:.0f} |",
            f"| the same run, cache filled | 1 | {later:.0f} |",
            f"| {args.folds}-fold x {args.seeds}-seed sweep, empty feature cache | {jobs} | {sweep:.0f} |",
            f"\nThe sweep took {sweep / later:.1f}x a later run; the target is at most 3x a later run plus the cache "
            f"fill ({fill:.1f} s, the median of {args.repeats} back-to-back differences): {budget:.0f} s, "
            f"{'met' if sweep <= budget else 'missed'} ({sweep / budget:.2f} of it)."]
    text = "\n".join(rows) + "\n"
    print(text, end="")
    if args.write:
        from finetune.files import write_between_markers

        write_between_markers(args.write, "<!-- bench-cv:begin (scripts/bench_cv.py --write) -->",
                              "<!-- bench-cv:end -->", text)

if __name__ == "__main__":
    main(sys.argv[1:])
