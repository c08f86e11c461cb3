"""Head-only training against the two-phase recipe on the demo, side by side; print a markdown table.

    python scripts/compare_phases.py [other overrides applied to both...]

Runs ``experiment=mobilenet_head`` (the head on the frozen backbone) and
``experiment=mobilenet_two_phase`` (the same, then the top blocks too at 1/100 of the rate, BatchNorm
frozen) with the same data and seed.
"""
from __future__ import annotations

import logging
import sys

from compare_init import print_table, run_variants


def main(overrides: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    rows = run_variants([(f"{name} ({what})", [f"experiment={name}", *overrides]) for name, what in (
        ("mobilenet_head", "head only"),
        ("mobilenet_two_phase", "head, then head + Conv2d_10-11 at 1/100 of the rate"),
    )])
    print(f"Overrides: {' '.join(overrides) or '(none)'}\n")
    print_table("experiment", rows)


if __name__ == "__main__":
    main(sys.argv[1:])
