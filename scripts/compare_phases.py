"""Head-only training against the two-phase recipe on the demo, over repeats; prints Markdown.

    python scripts/compare_phases.py [--seeds 5] [--keep DIR] [--write FILE]... [--figure PNG]
        [other overrides applied to every run...]

Runs, each over seeds 1..N (sweeps, as a user would run them): ``experiment=mobilenet_head`` (the head on the
frozen backbone), the same for as many steps as the two-phase recipe (so extra steps alone are not mistaken
for the second phase's effect), and ``experiment=mobilenet_two_phase`` (the head, then the head and the top
blocks at 1/100 of the rate, BatchNorm frozen); export off. Then ``tools summarize`` compares each with
head-only training for the two-phase recipe's steps, paired on the seeds, and says what the intervals allow
one to conclude.
"""
from __future__ import annotations

import sys

from repeats import parse_arguments, publish, report, run_sweep, seeds

NAME = "compare-phases"


def main(argv: list[str]) -> None:
    args, overrides, folder = parse_arguments(argv, __doc__.splitlines()[0], NAME)
    import finetune.compat  # noqa: F401  (first)
    from finetune.config import compose_config

    total_steps = compose_config(["experiment=mobilenet_two_phase", *overrides]).train.steps
    # Evaluations every 50 steps draw the learning curves; they change nothing in the training.
    common = [*overrides, f"train.seed={seeds(args.seeds)}", "export.enabled=false", "train.eval_every=50"]
    run_sweep(folder / "recipes", ["experiment=mobilenet_head,mobilenet_two_phase", *common])
    run_sweep(folder / "longer", ["experiment=mobilenet_head", f"train.steps={total_steps}", *common])
    text = (f"Overrides: {' '.join(overrides) or '(none)'}; {args.seeds} seeds\n\n"
            + report([folder / "recipes", folder / "longer"], f"train.steps={total_steps}", folder / "tables"))
    publish(text, NAME, args.write, folder / "tables", args.figure)


if __name__ == "__main__":
    main(sys.argv[1:])
